//! The server's PKI in its data directory: a CA and a serving certificate signed by it,
//! made on first start (rcgen) and reused afterwards, plus the admin bearer token. Client
//! certificates signed by the CA authenticate users as Kubernetes reads them: the common
//! name is the user, each organization a group.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let message = format!("cannot {what} {}", path.display());
    move |e| Error::Setup(format!("{message}: {e}"))
}

pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    berth_stdx::fs::write_atomic(path, data, 0o600).map_err(io("write", path))
}

/// The CA and serving certificate, created when missing. `hosts` become the serving
/// certificate's subject alternative names (names and IP addresses), beside the names
/// every in-cluster client uses (`kubernetes.default.svc...`, the API's Service address).
/// The names a certificate was made for are kept beside it (`server.names`); a start that
/// wants a name it lacks (a new `--tls-san`, a node address) signs a new serving
/// certificate with the same CA, as k3s does, so nothing that trusts the CA notices.
pub fn ensure(dir: &Path, hosts: &[String]) -> Result<Pki, Error> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let (ca_path, cert_path, key_path) =
        (dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key"));
    let names_path = dir.join("server.names");
    let failed = |e: rcgen::Error| Error::Setup(format!("cannot make certificates: {e}"));
    let mut names: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        FIRST_SERVICE_ADDRESS,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for host in hosts {
        if !names.contains(host) && !host.is_empty() && host != "0.0.0.0" && host != "::" {
            names.push(host.clone());
        }
    }
    let ca_key_path = dir.join("ca.key");
    if ca_path.exists() != ca_key_path.exists() {
        // Never a new CA over the old one's certificate: every kubeconfig, agent and pod
        // trusts it.
        return Err(Error::Setup(format!(
            "{} exists without {} (or the other way round): restore the missing one from a backup, or remove both to make a new CA (every kubeconfig and joined agent must then be made again)",
            ca_path.display(),
            ca_key_path.display()
        )));
    }
    if !ca_path.exists() {
        let ca_key = KeyPair::generate().map_err(failed)?;
        let ca_cert = ca_params().self_signed(&ca_key).map_err(failed)?;
        write_private(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
        std::fs::write(&ca_path, ca_cert.pem()).map_err(io("write", &ca_path))?;
        let _ = std::fs::remove_file(&cert_path);
    }
    let held: Vec<String> = std::fs::read_to_string(&names_path)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    let covered = cert_path.exists() && key_path.exists() && names.iter().all(|n| held.contains(n));
    if !covered {
        // Names the old certificate had are kept: clients that used them still match.
        for name in held {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let (ca_cert, ca_key) = load_ca(dir)?;
        let key = KeyPair::generate().map_err(failed)?;
        let mut params = CertificateParams::new(names.clone()).map_err(failed)?;
        params.distinguished_name.push(DnType::CommonName, "berth-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(failed)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem()).map_err(io("write", &cert_path))?;
        std::fs::write(&names_path, names.join("\n") + "\n").map_err(io("write", &names_path))?;
    }
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(io("read", &ca_path))?;
    Ok(Pki { ca_pem, cert_path, key_path })
}

/// The `kubernetes` Service's address: the first of the service range.
pub const FIRST_SERVICE_ADDRESS: &str = "10.43.0.1";

/// What the CA is made from. Signing again later rebuilds the issuer from these and the
/// kept key: the same name and key identifier, so what it signs chains to `ca.crt`.
fn ca_params() -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "berth-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca
}

/// The CA of node agents' serving certificates (`kubelet-ca.{crt,key}` in `dir`, made on
/// first use): a CA of its own, trusted only by the API server for its connections to
/// agents, so that a certificate a node obtains for itself can never pass as the API
/// server's or a webhook's (which chain to `ca.crt`).
pub fn load_kubelet_ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair, String), Error> {
    let failed = |e: rcgen::Error| Error::Setup(format!("cannot load the kubelet CA: {e}"));
    let params = || {
        let mut ca = ca_params();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name.push(DnType::CommonName, "berth-kubelet-serving-ca");
        ca
    };
    let (key_path, cert_path) = (dir.join("kubelet-ca.key"), dir.join("kubelet-ca.crt"));
    if !(key_path.exists() && cert_path.exists()) {
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params().self_signed(&key).map_err(failed)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem()).map_err(io("write", &cert_path))?;
    }
    let key_pem = std::fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
    let key = KeyPair::from_pem(&key_pem).map_err(failed)?;
    let cert = params().self_signed(&key).map_err(failed)?;
    let pem = std::fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
    Ok((cert, key, pem))
}

/// The CA's certificate and key from the TLS directory, for signing.
pub fn load_ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair), Error> {
    let failed = |e: rcgen::Error| Error::Setup(format!("cannot load the CA: {e}"));
    let ca_key_path = dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io("read", &ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(failed)?;
    let ca_cert = ca_params().self_signed(&ca_key).map_err(failed)?;
    Ok((ca_cert, ca_key))
}

pub fn issue_client_certificate(
    dir: &Path,
    user: &str,
    group: Option<&str>,
) -> Result<(String, String), Error> {
    let failed = |e: rcgen::Error| Error::Setup(format!("cannot make a client certificate: {e}"));
    let (ca_cert, ca_key) = load_ca(dir)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, user);
    if let Some(group) = group {
        params.distinguished_name.push(DnType::OrganizationName, group);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(300)).into();
    params.not_after = (now + std::time::Duration::from_secs(365 * 86400)).into();
    let key = KeyPair::generate().map_err(failed)?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(failed)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The user and groups a verified client certificate names: its subject's common name and
/// organizations. `None` when it has no common name.
pub fn client_identity(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    berth_api::identity::certificate_subject(cert.as_ref())
}

/// A serving certificate and key (PEM) signed by the kubelet CA in `dir`, for a node
/// agent's kubelet API: `names` (host names and addresses) are its subject alternative
/// names.
pub fn issue_serving_certificate(
    dir: &Path,
    common_name: &str,
    names: &[String],
) -> Result<(String, String), Error> {
    let failed = |e: rcgen::Error| Error::Setup(format!("cannot make a serving certificate: {e}"));
    let (ca_cert, ca_key, _) = load_kubelet_ca(dir)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(failed)?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(300)).into();
    params.not_after = (now + std::time::Duration::from_secs(365 * 86400)).into();
    let key = KeyPair::generate().map_err(failed)?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(failed)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// How the API server reaches node agents: it trusts the kubelet CA in `dir` and presents a client
/// certificate naming `kube-apiserver-kubelet-client` (group `system:masters`), made once
/// and kept beside the CA.
pub fn kubelet_client_config(dir: &Path, ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    let (cert_path, key_path) = (dir.join("kubelet-client.crt"), dir.join("kubelet-client.key"));
    if !(cert_path.exists() && key_path.exists()) {
        let (cert, key) = issue_client_certificate(
            dir,
            berth_api::identity::KUBELET_CLIENT,
            Some("system:masters"),
        )?;
        write_private(&key_path, key.as_bytes())?;
        std::fs::write(&cert_path, cert).map_err(io("write", &cert_path))?;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| Error::Setup(format!("cannot read {}: {e}", cert_path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Setup(format!("bad certificate in {}: {e}", cert_path.display())))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| Error::Setup(format!("cannot read {}: {e}", key_path.display())))?;
    // Agents' serving certificates chain to the kubelet CA, not to the cluster's.
    let _ = ca_pem;
    let (_, _, kubelet_ca) = load_kubelet_ca(dir)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(kubelet_ca.as_bytes()) {
        let ca = ca.map_err(|e| Error::Setup(format!("bad CA certificate: {e}")))?;
        roots.add(ca).map_err(|e| Error::Setup(format!("bad CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Setup(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| Error::Setup(format!("TLS: {e}")))?;
    Ok(Arc::new(config))
}

/// The rustls configuration serving the certificate (HTTP/2 and HTTP/1.1 by ALPN).
pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, Error> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert_path)
        .map_err(|e| Error::Setup(format!("cannot read {}: {e}", pki.cert_path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            Error::Setup(format!("bad certificate in {}: {e}", pki.cert_path.display()))
        })?;
    let key = PrivateKeyDer::from_pem_file(&pki.key_path)
        .map_err(|e| Error::Setup(format!("cannot read {}: {e}", pki.key_path.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Client certificates are asked for but not required: bearer tokens work too.
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| Error::Setup(format!("bad CA certificate: {e}")))?;
        roots.add(ca).map_err(|e| Error::Setup(format!("bad CA certificate: {e}")))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| Error::Setup(format!("TLS client verification: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Setup(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| Error::Setup(format!("TLS: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The admin bearer token: given, or kept in `token` in the data directory.
pub fn token(dir: &Path, given: Option<&str>) -> Result<String, Error> {
    if let Some(token) = given {
        return Ok(token.to_owned());
    }
    let path = dir.join("token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if !existing.trim().is_empty() {
            return Ok(existing.trim().to_owned());
        }
    }
    let token = berth_stdx::random::hex(32)
        .map_err(|e| Error::Setup(format!("cannot read random bytes from the OS: {e}")))?;
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_the_user_and_group() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), &[]).unwrap();
        let (cert, _key) = issue_client_certificate(dir.path(), "alice", Some("devs")).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(client_identity(&der), Some(("alice".into(), vec!["devs".into()])));
        let (cert, _) = issue_client_certificate(dir.path(), "bob", None).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(client_identity(&der), Some(("bob".into(), vec![])));
    }

    #[test]
    fn malformed_certificates_name_nobody() {
        for bytes in [&[][..], &[0x30], &[0x30, 0x85, 1, 2, 3, 4, 5], &[0x30, 0x02, 0x30, 0x00]] {
            assert_eq!(client_identity(&CertificateDer::from(bytes.to_vec())), None, "{bytes:?}");
        }
    }
}
