//! Joining a cluster from another process or machine (`berth agent --server URL --token
//! TOKEN`), as k3s agents and `kubeadm join` do it:
//!
//! 1. The token is `K10<sha256 of the CA's PEM>::<id>.<secret>` (the server writes it to
//!    `DATA_DIR/node-token`). The CA is fetched from `URL/cacerts` over TLS that is not yet
//!    verified, and trusted only if its hash is the token's.
//! 2. With the bootstrap token (`system:bootstrap:<id>`, group `system:bootstrappers`) the
//!    agent asks for its client certificate: a CertificateSigningRequest to
//!    `kubernetes.io/kube-apiserver-client-kubelet` for `system:node:NAME` in
//!    `system:nodes`, which the server approves (`nodeclient`) and signs.
//! 3. As the node, it asks `kubernetes.io/kubelet-serving` for the certificate of its own
//!    kubelet API (its name and address), which the server approves for a node asking for
//!    itself.
//!
//! Everything lands in the agent's directory (owner-only): `ca.crt`, `client.{crt,key}`,
//! `serving.{crt,key}` and `kubeconfig`; a restarted agent reuses them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, PostParams};

/// What joining leaves: the node's kubeconfig and its kubelet API's TLS material.
#[derive(Debug, Clone)]
pub struct Joined {
    pub kubeconfig: PathBuf,
    pub serving: crate::server::Tls,
}

/// The parts of a node token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The SHA-256 of the CA's PEM, hex.
    pub ca_hash: String,
    /// `ID.SECRET`, a Kubernetes bootstrap token.
    pub bootstrap: String,
}

/// Reads `K10<hash>::<id>.<secret>` (k3s's shape; `::server:` before the secret, as k3s
/// writes it, is accepted too).
pub fn parse_token(text: &str) -> Result<Token, String> {
    let bad = || {
        "the token is not a berth node token (K10<sha256 of the CA>::<id>.<secret>, from the server's DATA_DIR/node-token)".to_owned()
    };
    let rest = text.trim().strip_prefix("K10").ok_or_else(bad)?;
    let (hash, secret) = rest.split_once("::").ok_or_else(bad)?;
    let secret = secret.strip_prefix("server:").unwrap_or(secret);
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let token_like = secret.split_once('.').is_some_and(|(id, s)| {
        id.len() == 6
            && s.len() == 16
            && (id.bytes().chain(s.bytes())).all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    if hash.len() != 64 || !hex(hash) || !token_like {
        return Err(bad());
    }
    Ok(Token { ca_hash: hash.to_ascii_lowercase(), bootstrap: secret.to_owned() })
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    berth_stdx::fs::write_atomic(path, data, 0o600)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn kubeconfig(server: &str, ca: &Path, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority: {}\n    server: {server}\n  name: berth\ncontexts:\n- context:\n    cluster: berth\n    user: node\n  name: berth\ncurrent-context: berth\nusers:\n- name: node\n  user:\n{user}",
        ca.display()
    )
}

/// Joins (or rejoins, with what an earlier start left): the node's credentials.
pub async fn join(
    server: &str,
    token: &str,
    dir: &Path,
    node_name: &str,
    node_ip: &str,
) -> Result<Joined, String> {
    let token = parse_token(token)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca_path = dir.join("ca.crt");
    let ca_pem = fetch_ca(server).await?;
    let digest = ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes());
    let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if hash != token.ca_hash {
        return Err(format!(
            "the server at {server} has a CA whose sha256 is {hash}, not the token's {}: a wrong server or a wrong token (read it again from the server's DATA_DIR/node-token)",
            token.ca_hash
        ));
    }
    write_private(&ca_path, ca_pem.as_bytes())?;
    let (client_crt, client_key) = (dir.join("client.crt"), dir.join("client.key"));
    if !(client_crt.exists() && client_key.exists()) {
        let bootstrap = dir.join("bootstrap.kubeconfig");
        write_private(
            &bootstrap,
            kubeconfig(server, &ca_path, &format!("    token: {}\n", token.bootstrap)).as_bytes(),
        )?;
        let client = berth_client_from(&bootstrap).await?;
        let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
        let cert = certificate(
            &client,
            &key,
            &format!("system:node:{node_name}"),
            &[],
            "kubernetes.io/kube-apiserver-client-kubelet",
            &["digital signature", "client auth"],
        )
        .await?;
        write_private(&client_key, key.serialize_pem().as_bytes())?;
        write_private(&client_crt, cert.as_bytes())?;
        // It holds the bootstrap token: say so if it stays.
        if let Err(err) = std::fs::remove_file(&bootstrap) {
            tracing::warn!(
                "cannot remove {} (it holds the bootstrap token): {err}; remove it by hand",
                bootstrap.display()
            );
        }
    }
    let kubeconfig_path = dir.join("kubeconfig");
    write_private(
        &kubeconfig_path,
        kubeconfig(
            server,
            &ca_path,
            &format!(
                "    client-certificate: {}\n    client-key: {}\n",
                client_crt.display(),
                client_key.display()
            ),
        )
        .as_bytes(),
    )?;
    let (serving_crt, serving_key) = (dir.join("serving.crt"), dir.join("serving.key"));
    if !(serving_crt.exists() && serving_key.exists()) {
        let client = berth_client_from(&kubeconfig_path).await?;
        let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
        let names = [node_name.to_owned(), node_ip.to_owned()];
        let cert = certificate(
            &client,
            &key,
            &format!("system:node:{node_name}"),
            &names,
            "kubernetes.io/kubelet-serving",
            &["digital signature", "server auth"],
        )
        .await?;
        write_private(&serving_key, key.serialize_pem().as_bytes())?;
        write_private(&serving_crt, cert.as_bytes())?;
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    Ok(Joined {
        kubeconfig: kubeconfig_path,
        serving: crate::server::Tls {
            cert_pem: read(&serving_crt)?,
            key_pem: read(&serving_key)?,
            ca_pem,
        },
    })
}

async fn berth_client_from(path: &Path) -> Result<kube::Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    kube::Client::try_from(config).map_err(|e| format!("{}: {e}", path.display()))
}

/// Asks a signer for a certificate for `key` and waits for it (PEM): approved and issued,
/// or the reason it was denied or failed.
async fn certificate(
    client: &kube::Client,
    key: &rcgen::KeyPair,
    common_name: &str,
    names: &[String],
    signer: &str,
    usages: &[&str],
) -> Result<String, String> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    for name in names {
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => params.subject_alt_names.push(rcgen::SanType::IpAddress(ip)),
            Err(_) => params.subject_alt_names.push(rcgen::SanType::DnsName(
                name.clone().try_into().map_err(|e| format!("the name {name:?}: {e}"))?,
            )),
        }
    }
    let pem = params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(|e| format!("cannot make the certificate request: {e}"))?;
    let requests: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut object = CertificateSigningRequest {
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(pem.into_bytes()),
            signer_name: signer.to_owned(),
            usages: Some(usages.iter().map(|u| (*u).to_owned()).collect()),
            ..Default::default()
        },
        ..Default::default()
    };
    object.metadata.generate_name = Some("node-csr-".into());
    let made = requests
        .create(&PostParams::default(), &object)
        .await
        .map_err(|e| format!("cannot ask {signer} for a certificate: {e}"))?;
    let name = made.metadata.name.clone().unwrap_or_default();
    tracing::info!("asked {signer} for a certificate: {name}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let current = requests
            .get(&name)
            .await
            .map_err(|e| format!("cannot read the certificate request {name}: {e}"))?;
        let status = current.status.unwrap_or_default();
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            return String::from_utf8(cert.0)
                .map_err(|_| format!("the certificate of {name} is not PEM"));
        }
        for condition in status.conditions.iter().flatten() {
            if matches!(condition.type_.as_str(), "Denied" | "Failed") && condition.status == "True"
            {
                return Err(format!(
                    "the certificate request {name} was {}: {}",
                    condition.type_.to_lowercase(),
                    condition.message.clone().unwrap_or_default()
                ));
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "the certificate request {name} was not approved within 5 minutes (approve it: kubectl certificate approve {name})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Accepts any server certificate: only for fetching the CA (which is then checked
/// against the token's hash) and for HTTPS probes (which the kubelet does not verify).
#[derive(Debug)]
pub(crate) struct Unverified(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `GET URL/cacerts`: the server's CA, as it says it.
async fn fetch_ca(server: &str) -> Result<String, String> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = server.parse().map_err(|e| format!("the server URL {server:?}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("the server URL {server:?} must be https://HOST:PORT"));
    }
    let host = uri.host().unwrap_or("").trim_matches(|c| c == '[' || c == ']').to_owned();
    let port = uri.port_u16().unwrap_or(6443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_no_client_auth();
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("cannot reach {server}: no answer within 10s"))?
    .map_err(|e| format!("cannot reach {server}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("bad server name {host:?}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS with {server}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::get("/cacerts")
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let answer =
        sender.send_request(request).await.map_err(|e| format!("GET {server}/cacerts: {e}"))?;
    let status = answer.status();
    let body = http_body_util::Limited::new(answer.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| format!("GET {server}/cacerts: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("GET {server}/cacerts answered {status}: is it a berth server?"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| format!("{server}/cacerts is not PEM"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_or_refused_with_the_reason() {
        let hash = "ab".repeat(32);
        let token = parse_token(&format!("K10{hash}::abcdef.0123456789abcdef\n")).unwrap();
        assert_eq!(token.ca_hash, hash);
        assert_eq!(token.bootstrap, "abcdef.0123456789abcdef");
        let k3s = parse_token(&format!("K10{hash}::server:abcdef.0123456789abcdef")).unwrap();
        assert_eq!(k3s, token);
        for bad in [
            "abcdef.0123456789abcdef",
            "K10abc::abcdef.0123456789abcdef",
            &format!("K10{hash}::secret"),
        ] {
            assert!(parse_token(bad).unwrap_err().contains("node-token"), "{bad}");
        }
    }
}
