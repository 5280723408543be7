//! Who is asking: a user name and groups, as authentication establishes them (a bearer
//! token, a client certificate, a service-account token) or as an in-process caller
//! declares itself. A transport that has authenticated its caller puts an [`Authenticated`]
//! in the request's extensions, which cannot come from the network.

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn admin() -> User {
        User {
            name: "admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// A request extension: the transport (a verified client certificate, or an in-process
/// caller) has established this identity. A bearer token in the request still wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated(pub User);

impl User {
    /// A user with `groups` and `system:authenticated`.
    pub fn new(name: impl Into<String>, groups: &[&str]) -> User {
        let mut groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".to_owned());
        }
        User { name: name.into(), groups }
    }

    /// The identity berth's in-process controllers (garbage collector, namespace and
    /// service-account controllers, compaction) act under, as kube-controller-manager's.
    pub fn controller_manager() -> User {
        User::new("system:kube-controller-manager", &[])
    }
}

impl User {
    /// The identity the in-process scheduler acts under, as kube-scheduler's.
    pub fn scheduler() -> User {
        User::new("system:kube-scheduler", &[])
    }

    /// The service proxy's identity, as kube-proxy's (`system:kube-proxy`).
    pub fn kube_proxy() -> User {
        User::new("system:kube-proxy", &[])
    }

    /// What simulated nodes act as: in `system:nodes` (RBAC's node role), but not one
    /// node's name, so the Node authorizer (which confines a kubelet to its own node)
    /// leaves them to RBAC: they play the kubelet of many nodes.
    pub fn simulated_nodes() -> User {
        User::new("berth:simulated-nodes", &["system:nodes"])
    }

    /// A node's identity (`system:node:NAME`, group `system:nodes`), as a kubelet's.
    pub fn node(name: &str) -> User {
        User::new(format!("system:node:{name}"), &["system:nodes"])
    }
}

/// The user name kube-apiserver presents to kubelets (and berth's API server to its node
/// agents): its client certificate's common name.
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// The subject of an X.509 certificate (DER) as Kubernetes reads a client certificate:
/// the common name is the user, each organization a group. `None` when the certificate
/// cannot be read or has no common name. The certificate's signature is not checked here:
/// callers read only certificates their TLS layer has verified.
pub fn certificate_subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let (0x30, certificate, _) = der_element(der)? else { return None };
    let (0x30, mut tbs, _) = der_element(certificate)? else { return None };
    // tbsCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
    //                               issuer, validity, subject, ... }
    let (tag, _, rest) = der_element(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
        let (_, _, rest) = der_element(tbs)?; // serial
        tbs = rest;
    } else {
        tbs = rest; // that was the serial
    }
    let (_, _, rest) = der_element(tbs)?; // signature algorithm
    let (_, _, rest) = der_element(rest)?; // issuer
    let (_, _, rest) = der_element(rest)?; // validity
    let (0x30, subject, _) = der_element(rest)? else { return None };
    let mut name = None;
    let mut groups = Vec::new();
    for (oid, value) in name_attributes(subject)? {
        match oid {
            [0x55, 0x04, 0x03] => name = Some(value),
            [0x55, 0x04, 0x0a] => groups.push(value),
            _ => {}
        }
    }
    Some((name.filter(|n| !n.is_empty())?, groups))
}

/// One DER element: (tag, content, rest). Definite lengths up to four bytes.
pub fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

/// The (OID, text) pairs of a Name's content: SET OF SEQUENCE { OID, string }.
fn name_attributes(mut name: &[u8]) -> Option<Vec<(&[u8], String)>> {
    let mut out = Vec::new();
    while !name.is_empty() {
        let (0x31, mut set, rest) = der_element(name)? else { return None };
        name = rest;
        while !set.is_empty() {
            let (0x30, pair, rest) = der_element(set)? else { return None };
            set = rest;
            let (0x06, oid, value) = der_element(pair)? else { return None };
            let (tag, text, _) = der_element(value)?;
            // UTF8String, PrintableString, T61String, IA5String.
            if matches!(tag, 0x0c | 0x13 | 0x14 | 0x16) {
                out.push((oid, String::from_utf8_lossy(text).into_owned()));
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_names_are_refused_without_panicking() {
        for bytes in [
            &[][..],
            &[0x31],
            &[0x31, 0x85, 1, 2, 3, 4, 5],
            &[0x31, 0x02, 0x30, 0x05],
            &[0x30, 0x00],
        ] {
            let parsed = name_attributes(bytes);
            assert!(parsed.is_none() || parsed.is_some_and(|p| p.is_empty()), "{bytes:?}");
            assert_eq!(certificate_subject(bytes), None);
        }
        let good = [0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'h', b'i'];
        assert_eq!(name_attributes(&good), Some(vec![(&[0x55, 0x04, 0x03][..], "hi".to_owned())]));
    }
}
