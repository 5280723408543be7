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

    /// A node's identity (`system:node:NAME`, group `system:nodes`), as a kubelet's.
    pub fn node(name: &str) -> User {
        User::new(format!("system:node:{name}"), &["system:nodes"])
    }
}
