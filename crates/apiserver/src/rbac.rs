//! Identities and RBAC. Bearer tokens name users: the admin token (group
//! `system:masters`, which may do everything) and the lines of `<data-dir>/tokens.csv`
//! (`token,user,uid,"group1,group2"`, kube-apiserver's token file format). Everyone else is
//! authorized by the Roles, ClusterRoles and their bindings stored in the API.

use serde_json::Value;

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

fn subject_matches(subject: &Value, user: &User, binding_namespace: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str().unwrap_or("") {
        "User" => user.name == name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let ns = subject["namespace"].as_str().unwrap_or(binding_namespace);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
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
    if user.is_master() {
        return true;
    }
    let role_rules = |kind: &str, name: &str, namespace: &str| -> Vec<Value> {
        let source = if kind == "ClusterRole" { cluster_roles } else { roles };
        source
            .iter()
            .filter(|r| {
                r["metadata"]["name"] == name
                    && (kind == "ClusterRole" || r["metadata"]["namespace"] == namespace)
            })
            .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let grants = |binding: &Value, namespace: &str| {
        binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| subject_matches(s, user, namespace))
            && role_rules(
                binding["roleRef"]["kind"].as_str().unwrap_or(""),
                binding["roleRef"]["name"].as_str().unwrap_or(""),
                namespace,
            )
            .iter()
            .any(|rule| rule_allows(rule, a))
    };
    cluster_bindings.iter().any(|b| grants(b, ""))
        || (!a.namespace.is_empty()
            && bindings
                .iter()
                .filter(|b| b["metadata"]["namespace"] == a.namespace.as_str())
                .any(|b| grants(b, &a.namespace)))
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
