//! CertificateSigningRequests (`certificates.k8s.io/v1`): a request's PKCS#10 body read
//! (subject, public key, requested names) and its proof of possession checked; the
//! built-in signers issue from the cluster CA once a request is approved, as
//! kube-controller-manager's signing controller does:
//!
//! - `kubernetes.io/kube-apiserver-client`: client certificates for any subject;
//! - `kubernetes.io/kube-apiserver-client-kubelet`: a node's client certificate
//!   (`system:node:NAME` in `system:nodes`);
//! - `kubernetes.io/kubelet-serving`: a node's serving certificate (the same subject, DNS
//!   names and IP addresses only).
//!
//! `kubernetes.io/legacy-unknown` and other signers are left to whoever serves them.
//! Knows nothing of HTTP or storage: requests and objects are bytes and JSON.

use serde_json::{json, Value};

/// What a certificate request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// The key's algorithm and its bits (the SubjectPublicKeyInfo's BIT STRING).
    pub key: PublicKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub algorithm: KeyAlgorithm,
    pub bits: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa,
    Ed25519,
}

impl rcgen::PublicKeyData for PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        match self.algorithm {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa => &rcgen::PKCS_RSA_SHA256,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// One DER element: (tag, content, whole element, rest).
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn element(input: &[u8]) -> Option<Element<'_>> {
    let (tag, content, rest) = berth_api::identity::der_element(input)?;
    Some((tag, content, &input[..input.len() - rest.len()], rest))
}

const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const EXTENSION_REQUEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// The signature algorithms a request may be signed with, by OID (the hash that goes with
/// each key, as Go's x509 accepts them): PKCS#1 v1.5 and PSS with SHA-256/384/512 for RSA,
/// ECDSA with SHA-256/384 for P-256 and P-384, Ed25519.
fn verifier(
    algorithm: &[u8],
    key: KeyAlgorithm,
) -> Result<&'static dyn ring::signature::VerificationAlgorithm, String> {
    use ring::signature as sig;
    const RSA_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
    const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    let Some((0x06, oid, _, parameters)) = element(algorithm) else {
        return Err("the certificate request's signature algorithm cannot be parsed".into());
    };
    let contains =
        |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    let chosen: Option<&'static dyn sig::VerificationAlgorithm> = match (key, oid) {
        (KeyAlgorithm::Rsa, [prefix @ .., last]) if prefix == RSA_PREFIX => match last {
            0x0b => Some(&sig::RSA_PKCS1_2048_8192_SHA256),
            0x0c => Some(&sig::RSA_PKCS1_2048_8192_SHA384),
            0x0d => Some(&sig::RSA_PKCS1_2048_8192_SHA512),
            // RSASSA-PSS: the hash is named in the parameters (SHA-1, the default, is not
            // accepted).
            0x0a if contains(parameters, SHA256) => Some(&sig::RSA_PSS_2048_8192_SHA256),
            0x0a if contains(parameters, SHA384) => Some(&sig::RSA_PSS_2048_8192_SHA384),
            0x0a if contains(parameters, SHA512) => Some(&sig::RSA_PSS_2048_8192_SHA512),
            _ => None,
        },
        (KeyAlgorithm::EcdsaP256, [prefix @ .., last]) if prefix == ECDSA_PREFIX => match last {
            0x02 => Some(&sig::ECDSA_P256_SHA256_ASN1),
            0x03 => Some(&sig::ECDSA_P256_SHA384_ASN1),
            _ => None,
        },
        (KeyAlgorithm::EcdsaP384, [prefix @ .., last]) if prefix == ECDSA_PREFIX => match last {
            0x02 => Some(&sig::ECDSA_P384_SHA256_ASN1),
            0x03 => Some(&sig::ECDSA_P384_SHA384_ASN1),
            _ => None,
        },
        (KeyAlgorithm::Ed25519, ED25519) => Some(&sig::ED25519),
        _ => None,
    };
    chosen.ok_or_else(|| {
        "the certificate request is signed with an algorithm berth does not verify (use SHA-256, SHA-384 or SHA-512 with RSA (PKCS#1 v1.5 or PSS), ECDSA P-256/P-384, or Ed25519)".to_owned()
    })
}

/// Reads a PEM `CERTIFICATE REQUEST` and checks that it is signed by its own key.
pub fn parse(pem: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "the request is not PEM text".to_owned())?;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE REQUEST-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| "no PEM block of type \"CERTIFICATE REQUEST\"".to_owned())?;
    let bad = || "the certificate request cannot be parsed".to_owned();
    // CertificationRequest ::= SEQUENCE { info, signatureAlgorithm, signature BIT STRING }
    let (0x30, request, _, _) = element(&der).ok_or_else(bad)? else { return Err(bad()) };
    let (0x30, info, info_der, rest) = element(request).ok_or_else(bad)? else { return Err(bad()) };
    let (0x30, signed_with, _, rest) = element(rest).ok_or_else(bad)? else { return Err(bad()) };
    let (0x03, signature, _, _) = element(rest).ok_or_else(bad)? else { return Err(bad()) };
    // info ::= SEQUENCE { version, subject Name, subjectPKInfo, [0] attributes }
    let (0x02, _, _, rest) = element(info).ok_or_else(bad)? else { return Err(bad()) };
    let (0x30, subject, _, rest) = element(rest).ok_or_else(bad)? else { return Err(bad()) };
    let (0x30, spki, _, rest) = element(rest).ok_or_else(bad)? else { return Err(bad()) };
    let (0x30, algorithm, _, after) = element(spki).ok_or_else(bad)? else { return Err(bad()) };
    let (0x03, bits, _, _) = element(after).ok_or_else(bad)? else { return Err(bad()) };
    let (0x06, oid, _, parameters) = element(algorithm).ok_or_else(bad)? else { return Err(bad()) };
    let key_algorithm = match oid {
        EC_PUBLIC_KEY => match element(parameters) {
            Some((0x06, P256, _, _)) => KeyAlgorithm::EcdsaP256,
            Some((0x06, P384, _, _)) => KeyAlgorithm::EcdsaP384,
            _ => return Err("unsupported elliptic curve (use P-256 or P-384)".into()),
        },
        RSA => KeyAlgorithm::Rsa,
        ED25519 => KeyAlgorithm::Ed25519,
        _ => return Err("unsupported public key algorithm".into()),
    };
    let bits = bits.split_first().map(|(_, b)| b.to_vec()).ok_or_else(bad)?;
    let signature = signature.split_first().map(|(_, s)| s).ok_or_else(bad)?;
    let verifier = verifier(signed_with, key_algorithm)?;
    ring::signature::UnparsedPublicKey::new(verifier, &bits).verify(info_der, signature).map_err(
        |_| "the certificate request's signature does not verify with its key".to_owned(),
    )?;
    let mut out = Request {
        common_name: String::new(),
        organizations: Vec::new(),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        key: PublicKey { algorithm: key_algorithm, bits },
    };
    let mut names = subject;
    while let Some((0x31, mut set, _, rest)) = element(names) {
        names = rest;
        while let Some((0x30, pair, _, rest)) = element(set) {
            set = rest;
            let Some((0x06, oid, _, value)) = element(pair) else { continue };
            let Some((_, text, _, _)) = element(value) else { continue };
            let text = String::from_utf8_lossy(text).into_owned();
            match oid {
                [0x55, 0x04, 0x03] => out.common_name = text,
                [0x55, 0x04, 0x0a] => out.organizations.push(text),
                _ => {}
            }
        }
    }
    // attributes: [0] { SEQUENCE { OID extensionRequest, SET { SEQUENCE OF Extension } } }
    if let Some((0xa0, mut attributes, _, _)) = element(rest) {
        while let Some((0x30, attribute, _, rest)) = element(attributes) {
            attributes = rest;
            let Some((0x06, EXTENSION_REQUEST, _, values)) = element(attribute) else { continue };
            let Some((0x31, set, _, _)) = element(values) else { continue };
            let Some((0x30, mut extensions, _, _)) = element(set) else { continue };
            while let Some((0x30, extension, _, rest)) = element(extensions) {
                extensions = rest;
                let Some((0x06, SUBJECT_ALT_NAME, _, mut value)) = element(extension) else {
                    continue;
                };
                if let Some((0x01, _, _, after)) = element(value) {
                    value = after; // critical
                }
                let Some((0x04, octets, _, _)) = element(value) else { continue };
                let Some((0x30, mut general, _, _)) = element(octets) else { continue };
                while let Some((tag, name, _, rest)) = element(general) {
                    general = rest;
                    match (tag, name.len()) {
                        (0x82, _) => out.dns_names.push(String::from_utf8_lossy(name).into_owned()),
                        (0x87, 4) => out
                            .ip_addresses
                            .push(std::net::IpAddr::from([name[0], name[1], name[2], name[3]])),
                        (0x87, 16) => {
                            let mut octets = [0u8; 16];
                            octets.copy_from_slice(name);
                            out.ip_addresses.push(std::net::IpAddr::from(octets));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The built-in signers.
pub const SIGNERS: &[&str] = &[
    "kubernetes.io/kube-apiserver-client",
    "kubernetes.io/kube-apiserver-client-kubelet",
    "kubernetes.io/kubelet-serving",
];

/// Why a built-in signer will not sign this request (Kubernetes' rules for each).
pub fn refusal(signer: &str, request: &Request, usages: &[String]) -> Option<String> {
    let has = |usage: &str| usages.iter().any(|u| u == usage);
    let node = request.common_name.starts_with("system:node:")
        && request.organizations == ["system:nodes"];
    // Each signer issues only its own kind of certificate.
    let allowed: &[&str] = match signer {
        "kubernetes.io/kubelet-serving" => {
            &["digital signature", "key encipherment", "server auth"]
        }
        _ => &["digital signature", "key encipherment", "client auth"],
    };
    if let Some(odd) = usages.iter().find(|u| !allowed.contains(&u.as_str())) {
        return Some(format!("{signer} does not issue certificates for {odd:?}"));
    }
    if request.organizations.iter().any(|o| o == "system:masters") {
        return Some(format!("use of {signer} signer with system:masters group is not allowed"));
    }
    let names = !request.dns_names.is_empty() || !request.ip_addresses.is_empty();
    if signer != "kubernetes.io/kubelet-serving" && names {
        return Some(format!(
            "{signer} does not issue certificates with DNS names or IP addresses"
        ));
    }
    match signer {
        "kubernetes.io/kube-apiserver-client" => (!has("client auth"))
            .then(|| "usages must include \"client auth\"".to_owned()),
        "kubernetes.io/kube-apiserver-client-kubelet" => (!node || !has("client auth"))
            .then(|| "a kubelet client certificate names system:node:NAME in the group system:nodes and is for \"client auth\"".to_owned()),
        "kubernetes.io/kubelet-serving" => {
            if !node || !has("server auth") {
                Some("a kubelet serving certificate names system:node:NAME in the group system:nodes and is for \"server auth\"".into())
            } else if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
                Some("a kubelet serving certificate needs at least one DNS name or IP address".into())
            } else {
                None
            }
        }
        _ => Some(format!("{signer} is not a signer berth serves")),
    }
}

/// Signs an approved request with the CA: the certificate in PEM.
pub fn sign(
    request: &Request,
    usages: &[String],
    lifetime: std::time::Duration,
    ca_cert: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> Result<String, String> {
    use rcgen::{DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, request.common_name.as_str());
    for organization in &request.organizations {
        params.distinguished_name.push(DnType::OrganizationName, organization.as_str());
    }
    for name in &request.dns_names {
        let name = name.clone().try_into().map_err(|e| format!("DNS name {name:?}: {e}"))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    for address in &request.ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*address));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if usages.iter().any(|u| u == "key encipherment") {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = usages
        .iter()
        .filter_map(|u| match u.as_str() {
            "client auth" => Some(ExtendedKeyUsagePurpose::ClientAuth),
            "server auth" => Some(ExtendedKeyUsagePurpose::ServerAuth),
            _ => None,
        })
        .collect();
    // At most a year (Kubernetes' signers' default and cap), at least ten minutes.
    let lifetime = lifetime
        .clamp(std::time::Duration::from_secs(600), std::time::Duration::from_secs(365 * 86_400));
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(300)).into();
    params.not_after = (now + lifetime).into();
    params
        .signed_by(&request.key, ca_cert, ca_key)
        .map(|cert| cert.pem())
        .map_err(|e| format!("signing failed: {e}"))
}

/// `Approved`, `Denied`, `Failed` or `Pending`, and whether a certificate is issued, as
/// `kubectl get csr` shows them.
pub fn condition(csr: &Value) -> String {
    let mut states: Vec<&str> = csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] != "False")
        .filter_map(|c| c["type"].as_str())
        .collect();
    if states.is_empty() {
        states.push("Pending");
    }
    if csr["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty()) {
        states.push("Issued");
    }
    states.join(",")
}

/// Whether a request is approved and neither denied nor failed.
pub fn approved(csr: &Value) -> bool {
    let has = |kind: &str| {
        csr["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == kind && c["status"] != "False")
    };
    has("Approved") && !has("Denied") && !has("Failed")
}

/// Whether a request has a decision (Approved, Denied or Failed).
pub fn decided(csr: &Value) -> bool {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied" | "Failed")))
}

/// For a kubelet's client certificate request, the permission Kubernetes' approver asks
/// of its requester before approving it without a person: `selfnodeclient` when a node
/// asks for its own name, `nodeclient` for another requester (a bootstrap identity).
/// None for any other request, which waits for a person.
pub fn node_client_permission(csr: &Value, request: &Request) -> Option<&'static str> {
    if csr["spec"]["signerName"] != "kubernetes.io/kube-apiserver-client-kubelet" {
        return None;
    }
    let usages: Vec<&str> =
        csr["spec"]["usages"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let allowed = ["digital signature", "key encipherment", "client auth"];
    if !usages.contains(&"client auth") || usages.iter().any(|u| !allowed.contains(u)) {
        return None;
    }
    if request.organizations != ["system:nodes"]
        || !request.common_name.starts_with("system:node:")
        || !request.dns_names.is_empty()
        || !request.ip_addresses.is_empty()
    {
        return None;
    }
    Some(if csr["spec"]["username"] == request.common_name.as_str() {
        "selfnodeclient"
    } else {
        "nodeclient"
    })
}

/// Whether a request to `kubernetes.io/kubelet-serving` is a node asking for its own
/// serving certificate: the requester is `system:node:NAME` in `system:nodes`, the
/// subject is the same, the DNS names are at most its name, and the usages are a server's.
/// berth approves these without a person (as k3s signs its agents' serving certificates);
/// the IP addresses are the node's word, as its Node status is.
pub fn node_serving_self(csr: &Value, request: &Request) -> bool {
    let usages: Vec<&str> =
        csr["spec"]["usages"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let allowed = ["digital signature", "key encipherment", "server auth"];
    let node = request.common_name.strip_prefix("system:node:").unwrap_or("");
    let in_nodes =
        csr["spec"]["groups"].as_array().is_some_and(|g| g.iter().any(|g| g == "system:nodes"));
    csr["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
        && !node.is_empty()
        && csr["spec"]["username"] == request.common_name.as_str()
        && in_nodes
        && request.organizations == ["system:nodes"]
        && request.dns_names.iter().all(|d| d == node)
        && usages.contains(&"server auth")
        && usages.iter().all(|u| allowed.contains(u))
}

/// The condition the approver adds.
pub fn auto_approved(permission: &str) -> Value {
    let message = match permission {
        "selfnodeclient" => {
            "Auto approving self kubelet client certificate after SubjectAccessReview."
        }
        "selfnodeserver" => "Auto approving a node's own serving certificate.",
        _ => "Auto approving kubelet client certificate after SubjectAccessReview.",
    };
    json!({"type": "Approved", "status": "True", "reason": "AutoApproved", "message": message,
        "lastUpdateTime": crate::objects::now(), "lastTransitionTime": crate::objects::now()})
}

/// A Failed condition, for a request a built-in signer refuses.
pub fn failed(reason: &str, message: &str) -> Value {
    json!({"type": "Failed", "status": "True", "reason": reason, "message": message,
        "lastUpdateTime": crate::objects::now(), "lastTransitionTime": crate::objects::now()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_read_checked_and_signed() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["node-1.example".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "system:node:node-1");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
        params.subject_alt_names.push(rcgen::SanType::IpAddress("10.0.0.7".parse().unwrap()));
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let request = parse(pem.as_bytes()).unwrap();
        assert_eq!(request.common_name, "system:node:node-1");
        assert_eq!(request.organizations, ["system:nodes"]);
        assert_eq!(request.dns_names, ["node-1.example"]);
        assert_eq!(request.ip_addresses, ["10.0.0.7".parse::<std::net::IpAddr>().unwrap()]);
        let usages = vec!["digital signature".to_owned(), "server auth".to_owned()];
        assert_eq!(refusal("kubernetes.io/kubelet-serving", &request, &usages), None);
        assert!(refusal("kubernetes.io/kube-apiserver-client", &request, &usages).is_some());
        let mut masters = request.clone();
        masters.organizations = vec!["system:masters".into()];
        masters.dns_names.clear();
        masters.ip_addresses.clear();
        let client = vec!["client auth".to_owned()];
        assert!(refusal("kubernetes.io/kube-apiserver-client", &masters, &client)
            .unwrap()
            .contains("system:masters"));
        let mut plain = masters.clone();
        plain.organizations = vec!["dev".into()];
        assert_eq!(refusal("kubernetes.io/kube-apiserver-client", &plain, &client), None);
        let both = vec!["client auth".to_owned(), "server auth".to_owned()];
        assert!(
            refusal("kubernetes.io/kube-apiserver-client", &plain, &both).is_some(),
            "no server auth from a client signer"
        );
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let cert = sign(&request, &usages, std::time::Duration::from_secs(3600), &ca_cert, &ca_key)
            .unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        // A request whose signature does not match its key is refused.
        let mut tampered = pem.clone().into_bytes();
        let at = tampered.len() / 2;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        assert!(parse(&tampered).is_err());
        assert_eq!(condition(&json!({"status": {}})), "Pending");
        assert_eq!(
            condition(
                &json!({"status": {"conditions": [{"type": "Approved", "status": "True"}], "certificate": "x"}})
            ),
            "Approved,Issued"
        );
    }

    /// Requests as openssl makes them with other hashes and RSA-PSS verify; one whose
    /// algorithm is not its key's is refused.
    #[test]
    fn rsa_requests_signed_with_sha384_sha512_and_pss_verify() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, extra: &[&str]| -> Vec<u8> {
            let out = dir.path().join(format!("{name}.csr"));
            let made = std::process::Command::new("openssl")
                .args(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=rsa"])
                .arg("-keyout")
                .arg(dir.path().join(format!("{name}.key")))
                .arg("-out")
                .arg(&out)
                .args(extra)
                .output()
                .expect("openssl is installed (the test script installs it)");
            assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
            std::fs::read(out).unwrap()
        };
        for (name, extra) in [
            ("sha384", &["-sha384"][..]),
            ("sha512", &["-sha512"][..]),
            (
                "pss",
                &["-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"][..],
            ),
        ] {
            let request = parse(&make(name, extra)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(request.common_name, "rsa");
        }
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let pem = params.serialize_request(&ed).unwrap().pem().unwrap();
        assert!(parse(pem.as_bytes()).is_ok(), "Ed25519");
        assert!(verifier(&[0x06, 0x03, 0x2b, 0x65, 0x70], KeyAlgorithm::Rsa).is_err());
    }
}
