//! Registry credentials in Docker's `config.json` (`{"auths": {"host": {"auth": base64}}}`),
//! so `docker login` and `berth login` share them. The file is `$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`. Credential helpers (`credsStore`) are not run.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::error::io;
use crate::reference::DOCKER_HUB;
use crate::{Error, Result};

/// Docker Hub's key in `auths`, kept for compatibility with `docker login`.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// The default credentials file.
pub fn default_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return PathBuf::from(dir).join("config.json");
    }
    let home =
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".docker/config.json")
}

fn key_for(registry: &str) -> String {
    if registry == DOCKER_HUB {
        DOCKER_HUB_KEY.to_owned()
    } else {
        registry.to_owned()
    }
}

fn read(path: &Path) -> Result<Map<String, Value>> {
    match std::fs::read(path) {
        Ok(data) => match serde_json::from_slice::<Value>(&data) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(Error::Credentials {
                path: path.to_path_buf(),
                reason: "not a JSON object".into(),
            }),
            Err(err) => Err(Error::Credentials {
                path: path.to_path_buf(),
                reason: format!("malformed JSON: {err}; fix or remove the file"),
            }),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(err) => Err(Error::Io { op: "read", path: path.to_path_buf(), source: err }),
    }
}

/// The stored credentials for `registry`, if any.
pub fn lookup(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let config = read(path)?;
    let Some(auths) = config.get("auths").and_then(Value::as_object) else { return Ok(None) };
    let candidates = [
        key_for(registry),
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
    ];
    for key in candidates {
        let Some(entry) = auths.get(&key) else { continue };
        if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
            let decoded =
                base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| {
                    Error::Credentials {
                        path: path.to_path_buf(),
                        reason: format!("the auth of {key} is not base64"),
                    }
                })?;
            let text = String::from_utf8(decoded).map_err(|_| Error::Credentials {
                path: path.to_path_buf(),
                reason: format!("the auth of {key} is not UTF-8"),
            })?;
            let (username, password) = text.split_once(':').ok_or_else(|| Error::Credentials {
                path: path.to_path_buf(),
                reason: format!("the auth of {key} is not user:password"),
            })?;
            return Ok(Some(Credentials {
                username: username.to_owned(),
                password: password.to_owned(),
            }));
        }
    }
    if config.contains_key("credsStore") || config.contains_key("credHelpers") {
        tracing::warn!(
            "{} names a credential helper; berth does not run helpers and uses only inline auths",
            path.display()
        );
    }
    Ok(None)
}

fn write(path: &Path, config: &Map<String, Value>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let data = serde_json::to_vec_pretty(&Value::Object(config.clone())).unwrap_or_default();
    berth_stdx::fs::write_atomic(path, &data, 0o600).map_err(io("replace", path))
}

/// Stores credentials for `registry`, keeping everything else in the file.
pub fn store(path: &Path, registry: &str, credentials: &Credentials) -> Result<()> {
    let mut config = read(path)?;
    let auths = config.entry("auths").or_insert_with(|| json!({}));
    if !auths.is_object() {
        *auths = json!({});
    }
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", credentials.username, credentials.password));
    if let Some(auths) = auths.as_object_mut() {
        auths.insert(key_for(registry), json!({ "auth": encoded }));
    }
    write(path, &config)
}

/// Forgets `registry`; false when nothing was stored.
pub fn remove(path: &Path, registry: &str) -> Result<bool> {
    let mut config = read(path)?;
    let removed = config
        .get_mut("auths")
        .and_then(Value::as_object_mut)
        .map(|auths| {
            [key_for(registry), registry.to_owned(), format!("https://{registry}")]
                .iter()
                .any(|k| auths.remove(k).is_some())
        })
        .unwrap_or(false);
    if removed {
        write(path, &config)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_lookup_remove_and_keep_other_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"other.io":{"auth":"dTpw"}},"psFormat":"x"}"#)
            .expect("seed");
        let credentials = Credentials { username: "alice".into(), password: "s3:cret".into() };
        store(&path, "127.0.0.1:5000", &credentials).expect("store");
        store(&path, "docker.io", &credentials).expect("store hub");
        assert_eq!(lookup(&path, "127.0.0.1:5000").expect("lookup"), Some(credentials.clone()));
        assert_eq!(lookup(&path, "docker.io").expect("lookup"), Some(credentials));
        assert_eq!(
            lookup(&path, "other.io").expect("lookup").map(|c| c.username),
            Some("u".to_owned())
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("psFormat") && text.contains(DOCKER_HUB_KEY), "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
        assert!(remove(&path, "127.0.0.1:5000").expect("remove"));
        assert!(!remove(&path, "127.0.0.1:5000").expect("again"));
        assert_eq!(lookup(&path, "127.0.0.1:5000").expect("lookup"), None);
    }

    #[test]
    fn a_malformed_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{oops").expect("seed");
        let err = lookup(&path, "x.io").expect_err("malformed");
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
