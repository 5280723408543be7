//! The server's PKI in its data directory: a CA and a serving certificate signed by it,
//! made on first start (rcgen) and reused afterwards, plus the admin bearer token.

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

fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("write", path))?;
    file.write_all(data).map_err(io("write", path))
}

/// The CA and serving certificate, created when missing. `hosts` become the serving
/// certificate's subject alternative names (names and IP addresses).
pub fn ensure(dir: &Path, hosts: &[String]) -> Result<Pki, Error> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let (ca_path, cert_path, key_path) =
        (dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key"));
    if !(ca_path.exists() && cert_path.exists() && key_path.exists()) {
        let failed = |e: rcgen::Error| Error::Setup(format!("cannot make certificates: {e}"));
        let ca_key = KeyPair::generate().map_err(failed)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "berth-ca");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;
        let key = KeyPair::generate().map_err(failed)?;
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
        ];
        for host in hosts {
            if !names.contains(host) && host != "0.0.0.0" {
                names.push(host.clone());
            }
        }
        let mut params = CertificateParams::new(names).map_err(failed)?;
        params.distinguished_name.push(DnType::CommonName, "berth-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(failed)?;
        write_private(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem()).map_err(io("write", &cert_path))?;
        std::fs::write(&ca_path, ca_cert.pem()).map_err(io("write", &ca_path))?;
    }
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(io("read", &ca_path))?;
    Ok(Pki { ca_pem, cert_path, key_path })
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
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Setup(format!("TLS: {e}")))?
        .with_no_client_auth()
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
    let token = crate::objects::random_hex(32);
    write_private(&path, token.as_bytes())?;
    Ok(token)
}
