//! Registry mirrors and per-host settings, read from a file in k3s's `registries.yaml`
//! shape, so an air-gapped node can send `docker.io/...` or `registry.k8s.io/...` pulls to
//! a local mirror without renaming images:
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["http://10.0.0.5:5000", "https://mirror.example:5443"]
//!   registry.k8s.io:
//!     endpoint: ["https://mirror.example:5443"]
//!     rewrite: {"^(.*)$": "k8s/$1"}
//!   "*":
//!     endpoint: ["https://catch-all.example"]
//! configs:
//!   "mirror.example:5443":
//!     auth: {username: puller, password: secret}   # or auth: BASE64(user:pass)
//!     tls: {ca_file: /etc/ssl/mirror-ca.pem, cert_file: ..., key_file: ..., insecure_skip_verify: false}
//! ```
//!
//! A registry's mirrors are tried in order, then the registry itself (as k3s and
//! containerd do); `rewrite` rules change the repository on the mirrors only. The image
//! keeps the name it was asked by, whichever endpoint served its bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::credentials::Credentials;
use crate::{Error, Result};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    #[serde(default)]
    pub configs: BTreeMap<String, HostConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    #[serde(default)]
    pub endpoint: Vec<String>,
    /// Regular expression → replacement (`$1`...) applied to the repository on a mirror.
    #[serde(default)]
    pub rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default)]
    pub auth: Option<HostAuth>,
    #[serde(default)]
    pub tls: Option<HostTls>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostAuth {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// `base64(username:password)`, as in a Docker config.
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub identitytoken: Option<String>,
}

impl std::fmt::Debug for HostAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAuth").field("username", &self.username).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostTls {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One place to pull a repository from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`: what errors, credentials and `configs` name it by.
    pub host: String,
    /// `http://host[:port][/prefix]`, to which `/v2/...` is added.
    pub base: String,
    /// The repository there (rewritten on a mirror).
    pub repository: String,
    /// Whether this is the registry the image names (not a mirror).
    pub upstream: bool,
}

impl Registries {
    /// Reads and checks the file; a missing file is no configuration.
    pub fn load(path: &Path) -> Result<Registries> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Registries::default())
            }
            Err(err) => {
                return Err(Error::Registry {
                    registry: path.display().to_string(),
                    message: format!("cannot read the registries configuration: {err}"),
                })
            }
        };
        Registries::parse(&text)
            .map_err(|message| Error::Registry { registry: path.display().to_string(), message })
    }

    pub fn parse(text: &str) -> std::result::Result<Registries, String> {
        if text.trim().is_empty() {
            return Ok(Registries::default());
        }
        let parsed: Registries = serde_norway::from_str(text)
            .map_err(|e| format!("not a registries.yaml (mirrors:, configs:): {e}"))?;
        for (registry, mirror) in &parsed.mirrors {
            for endpoint in &mirror.endpoint {
                split_endpoint(endpoint).map_err(|e| format!("mirrors.{registry}: {e}"))?;
            }
            for pattern in mirror.rewrite.keys() {
                regex::Regex::new(pattern).map_err(|e| {
                    format!(
                        "mirrors.{registry}.rewrite: {pattern:?} is not a regular expression: {e}"
                    )
                })?;
            }
        }
        Ok(parsed)
    }

    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty() && self.configs.is_empty()
    }

    /// Where to pull `repository` of `registry` from, in order: its mirrors (or the `*`
    /// entry's), then the registry itself. `plain` says how the registry itself is reached.
    pub fn endpoints(&self, registry: &str, repository: &str, plain: bool) -> Vec<Endpoint> {
        let upstream_host = if registry == crate::reference::DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        let upstream = Endpoint {
            host: registry.to_owned(),
            base: format!("{}://{upstream_host}", if plain { "http" } else { "https" }),
            repository: repository.to_owned(),
            upstream: true,
        };
        let Some(mirror) = self.mirrors.get(registry).or_else(|| self.mirrors.get("*")) else {
            return vec![upstream];
        };
        let mut out = Vec::new();
        let mut listed_itself = false;
        for endpoint in &mirror.endpoint {
            let Ok((scheme, host, prefix)) = split_endpoint(endpoint) else { continue };
            if host == registry || host == upstream_host {
                // The registry itself, where the list puts it and as it says to reach it
                // (k3s's way to reach a registry over plain HTTP), once.
                if !listed_itself {
                    listed_itself = true;
                    out.push(Endpoint {
                        base: format!("{scheme}://{host}{prefix}"),
                        ..upstream.clone()
                    });
                }
                continue;
            }
            out.push(Endpoint {
                base: format!("{scheme}://{host}{prefix}"),
                host,
                repository: rewrite(&mirror.rewrite, repository),
                upstream: false,
            });
        }
        if !listed_itself {
            out.push(upstream);
        }
        out
    }

    /// The credentials `configs` gives a host.
    pub fn credentials(&self, host: &str) -> Option<Credentials> {
        let auth = self.configs.get(host)?.auth.as_ref()?;
        if let (Some(username), Some(password)) = (&auth.username, &auth.password) {
            return Some(Credentials { username: username.clone(), password: password.clone() });
        }
        if let Some(token) = &auth.identitytoken {
            return Some(Credentials { username: "<token>".into(), password: token.clone() });
        }
        let encoded = auth.auth.as_ref()?;
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (username, password) = text.split_once(':')?;
        Some(Credentials { username: username.to_owned(), password: password.to_owned() })
    }

    pub fn tls(&self, host: &str) -> Option<&HostTls> {
        self.configs.get(host)?.tls.as_ref()
    }
}

/// `http://host:port/prefix/v2` → (`http`, `host:port`, `/prefix`). A bare host is HTTPS.
fn split_endpoint(endpoint: &str) -> std::result::Result<(String, String, String), String> {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some((other, _)) => {
            return Err(format!("endpoint {endpoint:?}: use http:// or https://, not {other}://"))
        }
        None => ("https", endpoint),
    };
    let (host, path) = match rest.split_once('/') {
        Some((host, path)) => (host, format!("/{path}")),
        None => (rest, String::new()),
    };
    if host.is_empty() || host.contains(['@', ' ']) {
        return Err(format!("endpoint {endpoint:?} names no host"));
    }
    let prefix = path.trim_end_matches('/').trim_end_matches("/v2").trim_end_matches('/');
    Ok((scheme.to_owned(), host.to_owned(), prefix.to_owned()))
}

/// The first rewrite rule that matches changes the repository.
fn rewrite(rules: &BTreeMap<String, String>, repository: &str) -> String {
    for (pattern, replacement) in rules {
        if let Ok(re) = regex::Regex::new(pattern) {
            if re.is_match(repository) {
                return re.replace(repository, replacement.as_str()).into_owned();
            }
        }
    }
    repository.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "http://127.0.0.1:5000"
      - "https://mirror.example:5443/v2"
      - "https://registry-1.docker.io"
  registry.k8s.io:
    endpoint: ["https://mirror.example:5443"]
    rewrite:
      "^(.*)$": "k8s/$1"
  "*":
    endpoint: ["catch-all.example"]
configs:
  "mirror.example:5443":
    auth: {username: puller, password: secret}
    tls: {ca_file: /etc/ca.pem, insecure_skip_verify: true}
  "other.example":
    auth: {auth: "dXNlcjpwYXNz"}
"#;

    #[test]
    fn mirrors_come_first_and_the_registry_last() {
        let registries = Registries::parse(FILE).unwrap();
        let endpoints = registries.endpoints("docker.io", "library/busybox", false);
        let bases: Vec<&str> = endpoints.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(
            bases,
            [
                "http://127.0.0.1:5000",
                "https://mirror.example:5443",
                "https://registry-1.docker.io"
            ]
        );
        assert!(endpoints[2].upstream && !endpoints[0].upstream);
        // A registry listed as its own endpoint is reached as the list says, once.
        let own = Registries::parse(
            "mirrors:\n  \"myreg:5000\":\n    endpoint: [\"http://myreg:5000\"]\n",
        )
        .unwrap()
        .endpoints("myreg:5000", "app", false);
        assert_eq!(own.len(), 1);
        assert_eq!((own[0].base.as_str(), own[0].upstream), ("http://myreg:5000", true));
        let k8s = registries.endpoints("registry.k8s.io", "pause", false);
        assert_eq!(k8s[0].repository, "k8s/pause");
        assert_eq!(k8s[1].repository, "pause", "rewrites are for mirrors only");
        let any = registries.endpoints("ghcr.io", "org/app", false);
        assert_eq!(any[0].base, "https://catch-all.example");
        assert_eq!(any.len(), 2);
    }

    #[test]
    fn configs_give_credentials_and_tls() {
        let registries = Registries::parse(FILE).unwrap();
        let creds = registries.credentials("mirror.example:5443").unwrap();
        assert_eq!((creds.username.as_str(), creds.password.as_str()), ("puller", "secret"));
        let creds = registries.credentials("other.example").unwrap();
        assert_eq!((creds.username.as_str(), creds.password.as_str()), ("user", "pass"));
        assert!(registries.tls("mirror.example:5443").unwrap().insecure_skip_verify);
        assert!(registries.credentials("nowhere").is_none());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(Registries::parse("mirrors: [1, 2]").unwrap_err().contains("registries.yaml"));
        assert!(Registries::parse("mirorrs: {}").is_err(), "unknown keys are refused");
        let bad_scheme = "mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n";
        assert!(Registries::parse(bad_scheme).unwrap_err().contains("http://"));
        let bad_rewrite = "mirrors:\n  docker.io:\n    rewrite: {\"(\": x}\n";
        assert!(Registries::parse(bad_rewrite).unwrap_err().contains("regular expression"));
        assert!(Registries::parse("").unwrap().is_empty());
    }
}
