//! Identities and RBAC. Bearer tokens name users: the admin token (group
//! `system:masters`, which may do everything) and the lines of `<data-dir>/tokens.csv`
//! (`token,user,uid,"group1,group2"`, kube-apiserver's token file format). Everyone else is
//! authorized by the Roles, ClusterRoles and their bindings stored in the API.

use serde_json::Value;

pub use berth_api::identity::User;

/// Parses a token file: `token,user,uid[,"g1,g2"]` per line.
pub fn parse_tokens(text: &str) -> Vec<(String, User)> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = Vec::new();
        let mut current = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut current)),
                c => current.push(c),
            }
        }
        fields.push(current);
        if fields.len() < 2 || fields[0].is_empty() {
            continue;
        }
        let mut groups: Vec<String> = fields
            .get(3)
            .map(|g| g.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        groups.push("system:authenticated".into());
        out.push((fields[0].clone(), User { name: fields[1].clone(), groups }));
    }
    out
}

/// What a request does, in RBAC's words: on a resource, or (with `path`) on a URL that
/// names none (`/metrics`, `/healthz`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// A non-resource URL path; empty for resource requests.
    pub path: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The one object a list or watch asks for (`fieldSelector=metadata.name=N`), which
    /// the Node authorizer judges as it judges a get of N.
    pub selected_name: String,
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let any = |list: Vec<&str>, want: &str| list.iter().any(|x| *x == "*" || *x == want);
    if !a.path.is_empty() {
        // nonResourceURLs: exact paths, or prefixes ending in `*`.
        let url = |pattern: &&str| match pattern.strip_suffix('*') {
            Some(prefix) => a.path.starts_with(prefix),
            None => *pattern == a.path,
        };
        return any(strings(&rule["verbs"]), &a.verb)
            && strings(&rule["nonResourceURLs"]).iter().any(url);
    }
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let names = strings(&rule["resourceNames"]);
    any(strings(&rule["verbs"]), &a.verb)
        && any(strings(&rule["apiGroups"]), &a.group)
        && (any(strings(&rule["resources"]), &resource)
            || (!a.subresource.is_empty() && strings(&rule["resources"]).contains(&"*/*")))
        && (names.is_empty() || names.contains(&a.name.as_str()))
}

/// Roles and bindings arranged for answering one request without reading them all:
/// bindings by the subjects they name, rules by role.
#[derive(Debug, Default)]
pub struct Index {
    /// `User:NAME`, `Group:NAME`, `ServiceAccount:NS:NAME` → the bindings naming it.
    by_subject: std::collections::HashMap<String, Vec<Grant>>,
    cluster_roles: std::collections::HashMap<String, Vec<Value>>,
    /// (namespace, name) → rules.
    roles: std::collections::HashMap<(String, String), Vec<Value>>,
}

/// What one binding grants: a role, and the namespace it applies in ("" for cluster-wide).
#[derive(Debug, Clone)]
struct Grant {
    namespace: String,
    role_kind: String,
    role_name: String,
}

impl Index {
    pub fn new(
        cluster_roles: &[Value],
        roles: &[Value],
        cluster_bindings: &[Value],
        bindings: &[Value],
    ) -> Index {
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        let rules = |r: &Value| r["rules"].as_array().cloned().unwrap_or_default();
        let mut index = Index::default();
        for role in cluster_roles {
            index.cluster_roles.insert(text(&role["metadata"]["name"]), rules(role));
        }
        for role in roles {
            let key = (text(&role["metadata"]["namespace"]), text(&role["metadata"]["name"]));
            index.roles.insert(key, rules(role));
        }
        let cluster = cluster_bindings.iter().map(|b| (b, String::new()));
        let namespaced = bindings.iter().map(|b| (b, text(&b["metadata"]["namespace"])));
        for (binding, namespace) in cluster.chain(namespaced) {
            let grant = Grant {
                namespace: namespace.clone(),
                role_kind: text(&binding["roleRef"]["kind"]),
                role_name: text(&binding["roleRef"]["name"]),
            };
            for subject in binding["subjects"].as_array().into_iter().flatten() {
                let name = text(&subject["name"]);
                let key = match subject["kind"].as_str().unwrap_or("") {
                    "User" => format!("User:{name}"),
                    "Group" => format!("Group:{name}"),
                    "ServiceAccount" => {
                        let ns = subject["namespace"].as_str().unwrap_or(&namespace);
                        format!("User:system:serviceaccount:{ns}:{name}")
                    }
                    _ => continue,
                };
                index.by_subject.entry(key).or_default().push(grant.clone());
            }
        }
        index
    }

    /// Whether `user` may do `a`: only the bindings naming the user or one of its groups
    /// are read.
    pub fn allowed(&self, user: &User, a: &Attributes) -> bool {
        if user.is_master() {
            return true;
        }
        let keys = std::iter::once(format!("User:{}", user.name))
            .chain(user.groups.iter().map(|g| format!("Group:{g}")));
        keys.filter_map(|key| self.by_subject.get(&key)).flatten().any(|grant| {
            // A RoleBinding applies in its namespace only; a ClusterRoleBinding everywhere.
            if !grant.namespace.is_empty() && grant.namespace != a.namespace {
                return false;
            }
            let rules = if grant.role_kind == "ClusterRole" {
                self.cluster_roles.get(&grant.role_name)
            } else {
                self.roles.get(&(grant.namespace.clone(), grant.role_name.clone()))
            };
            rules.into_iter().flatten().any(|rule| rule_allows(rule, a))
        })
    }
}

impl Index {
    /// Every rule that applies to `user` in `namespace` (cluster-wide grants included), as
    /// SelfSubjectRulesReview lists them; the masters group holds every right.
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<Value> {
        if user.is_master() {
            return vec![
                serde_json::json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
                serde_json::json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ];
        }
        let keys = std::iter::once(format!("User:{}", user.name))
            .chain(user.groups.iter().map(|g| format!("Group:{g}")));
        let mut rules: Vec<Value> = Vec::new();
        for grant in keys.filter_map(|key| self.by_subject.get(&key)).flatten() {
            if !grant.namespace.is_empty() && grant.namespace != namespace {
                continue;
            }
            let found = if grant.role_kind == "ClusterRole" {
                self.cluster_roles.get(&grant.role_name)
            } else {
                self.roles.get(&(grant.namespace.clone(), grant.role_name.clone()))
            };
            for rule in found.into_iter().flatten() {
                if !rules.contains(rule) {
                    rules.push(rule.clone());
                }
            }
        }
        rules
    }
}

/// Whether `user` may do `a`, given the stored roles and bindings.
pub fn allowed(
    user: &User,
    a: &Attributes,
    cluster_roles: &[Value],
    roles: &[Value],
    cluster_bindings: &[Value],
    bindings: &[Value],
) -> bool {
    Index::new(cluster_roles, roles, cluster_bindings, bindings).allowed(user, a)
}

/// Kubernetes' wording of a refusal.
pub fn forbidden_message(user: &User, a: &Attributes) -> String {
    if !a.path.is_empty() {
        return format!("forbidden: User \"{}\" cannot {} path \"{}\"", user.name, a.verb, a.path);
    }
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let subject =
        if a.name.is_empty() { resource.clone() } else { format!("{resource} \"{}\"", a.name) };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        user.name, a.verb, a.group
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(verb: &str, resource: &str, namespace: &str) -> Attributes {
        Attributes {
            path: String::new(),
            verb: verb.into(),
            group: String::new(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: namespace.into(),
            name: String::new(),
            selected_name: String::new(),
        }
    }

    #[test]
    fn roles_and_bindings_decide() {
        let tokens = parse_tokens("# users\nt1,jane,1\nt2,bob,2,\"devs,ops\"\n");
        assert_eq!(tokens.len(), 2);
        let (jane, bob) = (tokens[0].1.clone(), tokens[1].1.clone());
        assert!(bob.groups.contains(&"ops".to_owned()));
        let roles = [
            json!({"metadata": {"name": "reader", "namespace": "team"}, "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}]}),
        ];
        let bindings = [
            json!({"metadata": {"name": "b", "namespace": "team"}, "roleRef": {"kind": "Role", "name": "reader"}, "subjects": [{"kind": "User", "name": "jane"}]}),
        ];
        let cluster_roles = [
            json!({"metadata": {"name": "ns-viewer"}, "rules": [{"apiGroups": ["*"], "resources": ["namespaces"], "verbs": ["*"]}]}),
        ];
        let cluster_bindings = [
            json!({"metadata": {"name": "cb"}, "roleRef": {"kind": "ClusterRole", "name": "ns-viewer"}, "subjects": [{"kind": "Group", "name": "devs"}]}),
        ];
        let check = |user: &User, a: &Attributes| {
            allowed(user, a, &cluster_roles, &roles, &cluster_bindings, &bindings)
        };
        assert!(check(&jane, &attrs("list", "pods", "team")));
        assert!(!check(&jane, &attrs("list", "pods", "default")));
        assert!(!check(&jane, &attrs("delete", "pods", "team")));
        let mut log = attrs("get", "pods", "team");
        log.subresource = "log".into();
        assert!(check(&jane, &log));
        assert!(check(&bob, &attrs("delete", "namespaces", "")));
        assert!(!check(&bob, &attrs("list", "pods", "team")));
        assert!(check(&User::admin(), &attrs("delete", "anything", "x")));
        assert_eq!(
            forbidden_message(&jane, &attrs("list", "pods", "default")),
            "pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
    }
}

#[cfg(test)]
mod non_resource_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let user = User { name: "prom".into(), groups: vec!["system:authenticated".into()] };
        let roles = [json!({"metadata": {"name": "scraper"}, "rules": [
            {"nonResourceURLs": ["/metrics", "/debug/*"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}
        ]})];
        let bindings = [
            json!({"metadata": {"name": "s"}, "roleRef": {"kind": "ClusterRole", "name": "scraper"},
            "subjects": [{"kind": "User", "name": "prom"}]}),
        ];
        let can = |verb: &str, path: &str| {
            let a = Attributes { verb: verb.into(), path: path.into(), ..Default::default() };
            allowed(&user, &a, &roles, &[], &bindings, &[])
        };
        assert!(can("get", "/metrics"));
        assert!(can("get", "/debug/pprof"));
        assert!(!can("post", "/metrics"));
        assert!(!can("get", "/metricsz"));
        assert!(!can("get", "/healthz"));
        let a = Attributes { verb: "get".into(), path: "/metrics".into(), ..Default::default() };
        assert_eq!(
            forbidden_message(&user, &a),
            "forbidden: User \"prom\" cannot get path \"/metrics\""
        );
    }
}
