//! A client of the OCI distribution API: manifests and blobs, pulled and pushed, with
//! Docker's authentication (basic, or the bearer-token exchange) and retries.
//!
//! Registries on loopback are spoken to over plain HTTP, as Docker does; others over HTTPS
//! unless listed as insecure.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use ureq::http::Response;
use ureq::Body;

use crate::credentials::Credentials;
use crate::digest::Digest;
use crate::manifest::media;
use crate::reference::DOCKER_HUB;
use crate::{Error, Result};

/// Debian's bundle of the system's certificate authorities (`ca-certificates`).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How many times an idempotent request is tried before giving up.
const ATTEMPTS: u32 = 4;
/// Manifests and token answers are small; a registry sending more is refused.
const MAX_DOCUMENT: u64 = 16 << 20;

#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Registries to reach over plain HTTP although they are not on loopback.
    pub insecure: Vec<String>,
    pub credentials: Option<Credentials>,
}

/// Whether `registry` (`host[:port]`) is on this machine.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(host, _)| host),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[derive(Debug)]
enum Auth {
    None,
    Basic,
    Bearer { realm: String, service: Option<String> },
}

#[derive(Debug)]
pub struct RegistryClient {
    agent: ureq::Agent,
    registry: String,
    base: String,
    credentials: Option<Credentials>,
    auth: Mutex<Auth>,
    tokens: Mutex<HashMap<String, String>>,
    /// How often a request that found no server is tried: once for a mirror, which has
    /// the next endpoint behind it.
    connect_attempts: u32,
}

/// One response, with the status checked by the caller.
pub type HttpResponse = Response<Body>;

fn header(response: &HttpResponse, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// `key="value", key2=value2` pairs of a `WWW-Authenticate` challenge.
fn challenge_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().to_ascii_lowercase();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = remainder;
    }
    params
}

fn parse_challenge(text: &str) -> Option<Auth> {
    let (scheme, params) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Auth::Basic),
        "bearer" => {
            let params = challenge_params(params);
            Some(Auth::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
            })
        }
        _ => None,
    }
}

/// The message of a registry's error body (`{"errors":[{"code":..,"message":..}]}`).
fn error_message(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::from_utf8_lossy(body)
            .chars()
            .take(200)
            .collect::<String>()
            .trim()
            .to_owned();
    };
    value["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["code"].as_str().unwrap_or("ERROR"),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

fn retryable(status: u16) -> bool {
    status == 429 || status == 408 || (500..600).contains(&status)
}

impl RegistryClient {
    pub fn new(registry: &str, options: &ClientOptions) -> RegistryClient {
        let host = if registry == DOCKER_HUB { "registry-1.docker.io" } else { registry };
        let plain = is_loopback(registry) || options.insecure.iter().any(|r| r == registry);
        let base = format!("{}://{host}", if plain { "http" } else { "https" });
        RegistryClient::with_agent(registry, base, options, ureq::tls::TlsConfig::default())
    }

    /// A client of one endpoint of a registry (a mirror, or the registry itself), with the
    /// TLS settings `registries.yaml` gives its host.
    pub fn at(
        endpoint: &crate::mirrors::Endpoint,
        options: &ClientOptions,
        tls: Option<&crate::mirrors::HostTls>,
    ) -> Result<RegistryClient> {
        let mut config = ureq::tls::TlsConfig::builder();
        if let Some(tls) = tls {
            let fail = |what: &str, path: &std::path::Path, err: String| Error::Registry {
                registry: endpoint.host.clone(),
                message: format!("registries.yaml: {what} {}: {err}", path.display()),
            };
            if let Some(path) = &tls.ca_file {
                let pem = std::fs::read(path).map_err(|e| fail("ca_file", path, e.to_string()))?;
                let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
                        _ => None,
                    })
                    .collect();
                if certs.is_empty() {
                    return Err(fail("ca_file", path, "no PEM certificate in it".into()));
                }
                // Added to the system's authorities, as containerd adds it (a mirror's
                // blobs may redirect to a public CDN).
                let mut roots = certs;
                if let Ok(system) = std::fs::read(SYSTEM_CAS) {
                    roots.extend(ureq::tls::parse_pem(&system).filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
                        _ => None,
                    }));
                }
                config = config.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => {
                    return Err(Error::Registry {
                        registry: endpoint.host.clone(),
                        message: "registries.yaml: cert_file needs its key_file beside it".into(),
                    })
                }
                (None, Some(_)) => {
                    return Err(Error::Registry {
                        registry: endpoint.host.clone(),
                        message: "registries.yaml: key_file needs its cert_file beside it".into(),
                    })
                }
                _ => {}
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                let chain_pem =
                    std::fs::read(cert).map_err(|e| fail("cert_file", cert, e.to_string()))?;
                let key_pem =
                    std::fs::read(key).map_err(|e| fail("key_file", key, e.to_string()))?;
                let chain: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&chain_pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
                        _ => None,
                    })
                    .collect();
                let key = ureq::tls::PrivateKey::from_pem(&key_pem)
                    .map_err(|e| fail("key_file", key, e.to_string()))?
                    .to_owned();
                config =
                    config.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
            }
            config = config.disable_verification(tls.insecure_skip_verify);
        }
        let mut client = RegistryClient::with_agent(
            &endpoint.host,
            endpoint.base.clone(),
            options,
            config.build(),
        );
        if !endpoint.upstream {
            // A mirror that does not answer is passed over at once for the next endpoint.
            client.connect_attempts = 1;
        }
        Ok(client)
    }

    fn with_agent(
        registry: &str,
        base: String,
        options: &ClientOptions,
        tls: ureq::tls::TlsConfig,
    ) -> RegistryClient {
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            // A stalled download is an error (and then resumed), a slow one is not.
            .timeout_per_read(Some(Duration::from_secs(120)))
            .user_agent(format!("berth/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        RegistryClient {
            agent,
            registry: registry.to_owned(),
            base,
            credentials: options.credentials.clone(),
            auth: Mutex::new(Auth::None),
            tokens: Mutex::new(HashMap::new()),
            connect_attempts: ATTEMPTS,
        }
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    fn transport_error(&self, err: ureq::Error) -> Error {
        let hint = match &err {
            ureq::Error::ConnectionFailed | ureq::Error::Io(_)
                if !self.base.starts_with("https") =>
            {
                ""
            }
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) => {
                " (if this registry speaks plain HTTP, list it as insecure)"
            }
            _ => "",
        };
        Error::Registry { registry: self.registry.clone(), message: format!("{err}{hint}") }
    }

    fn authorization(&self, scopes: &[String]) -> Option<String> {
        let auth = self.auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*auth {
            Auth::None => None,
            Auth::Basic => self.basic(),
            Auth::Bearer { .. } => self
                .tokens
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&scopes.join(" "))
                .map(|token| format!("Bearer {token}")),
        }
    }

    fn basic(&self) -> Option<String> {
        self.credentials.as_ref().map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.username, c.password))
            )
        })
    }

    /// Answers a 401: learns the scheme and, for bearer, fetches a token for `scopes`.
    fn authenticate(&self, challenge: Option<String>, scopes: &[String]) -> Result<()> {
        let unauthorized = |hint: &str| Error::Unauthorized {
            registry: self.registry.clone(),
            hint: hint.to_owned(),
        };
        let login_hint = format!("; log in with `berth login {}`", self.registry);
        let Some(parsed) = challenge.as_deref().and_then(parse_challenge) else {
            return Err(unauthorized(&login_hint));
        };
        match parsed {
            Auth::Basic => {
                if self.credentials.is_none() {
                    return Err(unauthorized(&login_hint));
                }
                *self.auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Auth::Basic;
                Ok(())
            }
            Auth::Bearer { realm, service } => {
                let mut request = self.agent.get(&realm);
                if let Some(service) = &service {
                    request = request.query("service", service);
                }
                for scope in scopes {
                    request = request.query("scope", scope);
                }
                if let Some(basic) = self.basic() {
                    request = request.header("Authorization", &basic);
                }
                let mut response = request.call().map_err(|e| self.transport_error(e))?;
                let status = response.status().as_u16();
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(MAX_DOCUMENT)
                    .read_to_vec()
                    .unwrap_or_default();
                if status == 401 || status == 403 {
                    let hint = if self.credentials.is_some() {
                        ": the token service refused the credentials"
                    } else {
                        &login_hint
                    };
                    return Err(unauthorized(hint));
                }
                if status != 200 {
                    return Err(Error::RegistryStatus {
                        registry: self.registry.clone(),
                        status,
                        what: format!("from token service {realm}"),
                        hint: String::new(),
                    });
                }
                let value: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|_| Error::Registry {
                        registry: self.registry.clone(),
                        message: "the token service answered something that is not JSON".into(),
                    })?;
                let token = value["token"].as_str().or(value["access_token"].as_str()).ok_or_else(
                    || Error::Registry {
                        registry: self.registry.clone(),
                        message: "the token service answered without a token".into(),
                    },
                )?;
                self.tokens
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(scopes.join(" "), token.to_owned());
                *self.auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Auth::Bearer { realm, service };
                Ok(())
            }
            Auth::None => Err(unauthorized(&login_hint)),
        }
    }

    /// Sends a request built by `make` (given the Authorization header), answering one
    /// authentication challenge, and retrying transport errors and 5xx when `idempotent`.
    pub fn send(
        &self,
        scopes: &[String],
        idempotent: bool,
        make: impl Fn(&ureq::Agent, Option<&str>) -> std::result::Result<HttpResponse, ureq::Error>,
    ) -> Result<HttpResponse> {
        let mut attempt = 0;
        let mut authenticated = false;
        loop {
            attempt += 1;
            let authorization = self.authorization(scopes);
            let outcome = make(&self.agent, authorization.as_deref());
            match outcome {
                Ok(response) if response.status().as_u16() == 401 && !authenticated => {
                    authenticated = true;
                    attempt -= 1;
                    self.authenticate(header(&response, "www-authenticate"), scopes)?;
                }
                Ok(response)
                    if idempotent
                        && retryable(response.status().as_u16())
                        && attempt < ATTEMPTS =>
                {
                    tracing::debug!(registry = %self.registry, status = response.status().as_u16(), attempt, "retrying");
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
                Ok(response) => return Ok(response),
                Err(err) if idempotent && attempt < self.connect_attempts => {
                    tracing::debug!(registry = %self.registry, attempt, "retrying after {err}");
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
                Err(err) => return Err(self.transport_error(err)),
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{path}", self.base)
    }

    fn failure(&self, mut response: HttpResponse, what: String) -> Error {
        let status = response.status().as_u16();
        let body =
            response.body_mut().with_config().limit(64 << 10).read_to_vec().unwrap_or_default();
        let message = error_message(&body);
        let hint = match status {
            401 => format!("; log in with `berth login {}`", self.registry),
            403 => "; the credentials do not allow this".to_owned(),
            _ if !message.is_empty() => String::new(),
            _ => String::new(),
        };
        let what = if message.is_empty() { what } else { format!("{what} ({message})") };
        Error::RegistryStatus { registry: self.registry.clone(), status, what, hint }
    }

    fn pull_scope(repository: &str) -> Vec<String> {
        vec![format!("repository:{repository}:pull")]
    }

    fn push_scope(repository: &str) -> Vec<String> {
        vec![format!("repository:{repository}:pull,push")]
    }

    /// Checks credentials against the API root (`berth login`).
    pub fn ping(&self) -> Result<()> {
        let url = self.url("");
        let response = self.send(&[], true, |agent, auth| {
            let mut request = agent.get(&url);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            request.call()
        })?;
        match response.status().as_u16() {
            200 => Ok(()),
            401 | 403 => Err(Error::Unauthorized {
                registry: self.registry.clone(),
                hint: ": wrong username or password".into(),
            }),
            _ => Err(self.failure(response, "for /v2/".into())),
        }
    }

    /// Fetches a manifest or index by tag or digest: its bytes, its media type and its digest.
    pub fn manifest(
        &self,
        repository: &str,
        object: &str,
    ) -> Result<(Vec<u8>, Option<String>, Digest)> {
        let url = self.url(&format!("{repository}/manifests/{object}"));
        let scopes = Self::pull_scope(repository);
        let mut response = self.send(&scopes, true, |agent, auth| {
            let mut request = agent.get(&url).header("Accept", media::ACCEPT);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            request.call()
        })?;
        match response.status().as_u16() {
            200 => {}
            404 => {
                let separator = if object.contains(':') { '@' } else { ':' };
                let name = format!("{}/{repository}{separator}{object}", self.registry);
                return Err(Error::ImageNotFound {
                    name,
                    hint: ": the registry has no such repository or tag",
                });
            }
            _ => {
                let what = format!("fetching manifest {repository}:{object}");
                return Err(self.failure(response, what));
            }
        }
        let media_type = header(&response, "content-type");
        let body =
            response.body_mut().with_config().limit(MAX_DOCUMENT).read_to_vec().map_err(|err| {
                Error::Registry {
                    registry: self.registry.clone(),
                    message: format!("reading manifest {object}: {err}"),
                }
            })?;
        let digest = match object.parse::<Digest>() {
            Ok(expected) => {
                let mut hasher = crate::digest::Hasher::new(expected.algorithm());
                hasher.update(&body);
                let actual = hasher.finish();
                if actual != expected {
                    return Err(Error::DigestMismatch {
                        expected,
                        actual,
                        size: body.len() as u64,
                    });
                }
                expected
            }
            Err(_) => Digest::of(&body),
        };
        Ok((body, media_type, digest))
    }

    /// A blob's content from byte `offset` on. Returns the stream and whether the registry
    /// honoured the offset (if not, the stream starts at byte 0).
    pub fn blob(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Box<dyn Read + Send>, bool)> {
        let url = self.url(&format!("{repository}/blobs/{digest}"));
        let scopes = Self::pull_scope(repository);
        let response = self.send(&scopes, true, |agent, auth| {
            let mut request = agent.get(&url);
            if offset > 0 {
                request = request.header("Range", &format!("bytes={offset}-"));
            }
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            request.call()
        })?;
        match response.status().as_u16() {
            200 => Ok((Box::new(response.into_body().into_reader()), offset == 0)),
            206 => Ok((Box::new(response.into_body().into_reader()), true)),
            416 if offset > 0 => {
                self.blob(repository, digest, 0).map(|(reader, _)| (reader, false))
            }
            404 => Err(Error::BlobNotFound { digest: digest.clone() }),
            _ => Err(self.failure(response, format!("fetching blob {digest}"))),
        }
    }

    pub fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let url = self.url(&format!("{repository}/blobs/{digest}"));
        let scopes = Self::push_scope(repository);
        let response = self.send(&scopes, true, |agent, auth| {
            let mut request = agent.head(&url);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            request.call()
        })?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.failure(response, format!("checking blob {digest}"))),
        }
    }

    /// Asks the registry to link `digest` from repository `from` without an upload; false
    /// when it would rather have the upload.
    pub fn mount(&self, repository: &str, digest: &Digest, from: &str) -> Result<bool> {
        let url = self.url(&format!("{repository}/blobs/uploads/"));
        let scopes =
            vec![format!("repository:{repository}:pull,push"), format!("repository:{from}:pull")];
        let digest_text = digest.to_string();
        let response = self.send(&scopes, false, |agent, auth| {
            let mut request = agent.post(&url).query("mount", &digest_text).query("from", from);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            request.send_empty()
        })?;
        match response.status().as_u16() {
            201 => Ok(true),
            202 => {
                // An upload session was opened instead; it expires on its own.
                Ok(false)
            }
            _ => Err(self.failure(response, format!("mounting blob {digest} from {from}"))),
        }
    }

    /// Uploads a blob in one request (POST for a session, then PUT with the content).
    pub fn upload(
        &self,
        repository: &str,
        digest: &Digest,
        path: &std::path::Path,
        size: u64,
    ) -> Result<()> {
        let scopes = Self::push_scope(repository);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.upload_once(repository, digest, path, size, &scopes) {
                Err(Error::Registry { .. }) if attempt < ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(200 << attempt))
                }
                Err(Error::RegistryStatus { status, .. })
                    if retryable(status) && attempt < ATTEMPTS =>
                {
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
                other => return other,
            }
        }
    }

    fn upload_once(
        &self,
        repository: &str,
        digest: &Digest,
        path: &std::path::Path,
        size: u64,
        scopes: &[String],
    ) -> Result<()> {
        let url = self.url(&format!("{repository}/blobs/uploads/"));
        let response = self.send(scopes, false, |agent, auth| {
            let mut request = agent.post(&url);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            request.send_empty()
        })?;
        if response.status().as_u16() != 202 {
            return Err(self.failure(response, format!("starting the upload of {digest}")));
        }
        let location = header(&response, "location").ok_or_else(|| Error::Registry {
            registry: self.registry.clone(),
            message: "the upload session has no Location".into(),
        })?;
        let location = if location.starts_with("http://") || location.starts_with("https://") {
            location
        } else {
            format!("{}{}", self.base, location)
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{separator}digest={digest}");
        let response = self.send(scopes, false, |agent, auth| {
            let file = std::fs::File::open(path).map_err(ureq::Error::Io)?;
            let mut request = agent
                .put(&put_url)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", &size.to_string());
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            request.send(&file)
        })?;
        match response.status().as_u16() {
            201 | 204 => Ok(()),
            _ => Err(self.failure(response, format!("uploading blob {digest}"))),
        }
    }

    /// Puts a manifest under `object` (a tag or its digest); returns the registry's digest.
    pub fn put_manifest(
        &self,
        repository: &str,
        object: &str,
        media_type: &str,
        data: &[u8],
    ) -> Result<Digest> {
        let url = self.url(&format!("{repository}/manifests/{object}"));
        let scopes = Self::push_scope(repository);
        let response = self.send(&scopes, true, |agent, auth| {
            let mut request = agent.put(&url).header("Content-Type", media_type);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            request.send(data)
        })?;
        match response.status().as_u16() {
            200..=202 => {
                let ours = Digest::of(data);
                if let Some(theirs) = header(&response, "docker-content-digest")
                    .and_then(|d| d.parse::<Digest>().ok())
                {
                    if theirs != ours {
                        return Err(Error::Registry {
                            registry: self.registry.clone(),
                            message: format!("stored the manifest as {theirs}, but it is {ours}"),
                        });
                    }
                }
                Ok(ours)
            }
            _ => Err(self.failure(response, format!("putting manifest {repository}:{object}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognized() {
        for local in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000"] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in ["docker.io", "10.0.0.1:5000", "ghcr.io", "example.com:443"] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }

    #[test]
    fn challenges_are_parsed() {
        let challenge = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#;
        match parse_challenge(challenge) {
            Some(Auth::Bearer { realm, service }) => {
                assert_eq!(realm, "https://auth.docker.io/token");
                assert_eq!(service.as_deref(), Some("registry.docker.io"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Auth::Basic)));
        assert!(parse_challenge("Negotiate").is_none());
        let params = challenge_params(r#"realm="a\"b", service=plain, scope="x,y""#);
        assert_eq!(params["realm"], "a\"b");
        assert_eq!(params["service"], "plain");
        assert_eq!(params["scope"], "x,y");
    }

    #[test]
    fn registry_errors_are_summarized() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(error_message(body), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(error_message(b"plain text"), "plain text");
    }
}
