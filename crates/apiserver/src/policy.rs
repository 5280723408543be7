//! The bootstrap RBAC policy Kubernetes creates at start: `cluster-admin`; `admin`, `edit`
//! and `view`, which aggregate by label the `system:aggregate-to-*` roles (and any role a
//! user labels so, custom resources' included); the roles every authenticated user holds
//! (`system:discovery`, `system:basic-user`, `system:public-info-viewer`); the roles of
//! the control plane's parts and of nodes; and their bindings. Reconciled at every start
//! as kube-apiserver does: missing objects are made, missing rules and subjects added
//! to existing ones, unless an object says `rbac.authorization.kubernetes.io/autoupdate:
//! "false"`. Knows nothing of storage: it is data and a merge.

use serde_json::{json, Value};

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(paths: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": verbs})
}

fn metadata(name: &str, labels: Value) -> Value {
    let mut all = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
        all.extend(extra.clone());
    }
    json!({"name": name, "labels": all, "annotations": {AUTOUPDATE: "true"}})
}

fn role(name: &str, labels: Value, rules: Vec<Value>) -> (&'static str, Value) {
    ("clusterroles", json!({"metadata": metadata(name, labels), "rules": rules}))
}

fn aggregated(name: &str, labels: Value, selects: &str) -> (&'static str, Value) {
    (
        "clusterroles",
        json!({"metadata": metadata(name, labels), "rules": [],
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {selects: "true"}}]}}),
    )
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> (&'static str, Value) {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, name)| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}))
        .collect();
    (
        "clusterrolebindings",
        json!({"metadata": metadata(name, json!({})),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": subjects}),
    )
}

/// Every bootstrap ClusterRole and ClusterRoleBinding: (plural, object).
pub fn bootstrap() -> Vec<(&'static str, Value)> {
    let to =
        |which: &str| json!({format!("rbac.authorization.k8s.io/aggregate-to-{which}"): "true"});
    let view = vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
                "namespaces",
            ],
            READ,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(
            &["autoscaling"],
            &["horizontalpodautoscalers", "horizontalpodautoscalers/status"],
            READ,
        ),
        rule(&["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
        rule(&["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
        rule(&["events.k8s.io"], &["events"], READ),
    ];
    let edit = vec![
        rule(
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
            READ,
        ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(&[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"], WRITE),
        rule(&[""], &["pods/ephemeralcontainers"], &["patch", "update"]),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
        rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
    ];
    let admin = vec![
        rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
        rule(
            &["rbac.authorization.k8s.io"],
            &["rolebindings", "roles"],
            &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        ),
    ];
    let health = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    let mut discovery: Vec<&str> =
        vec!["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*"];
    discovery.extend(health);
    let everyone = [("Group", "system:authenticated")];
    vec![
        role("cluster-admin", json!({}), vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        binding("cluster-admin", "cluster-admin", &[("Group", "system:masters")]),
        aggregated("admin", json!({}), "rbac.authorization.k8s.io/aggregate-to-admin"),
        aggregated("edit", to("admin"), "rbac.authorization.k8s.io/aggregate-to-edit"),
        aggregated("view", to("edit"), "rbac.authorization.k8s.io/aggregate-to-view"),
        role("system:aggregate-to-admin", to("admin"), admin),
        role("system:aggregate-to-edit", to("edit"), edit),
        role("system:aggregate-to-view", to("view"), view),
        role("system:discovery", json!({}), vec![urls(&discovery, &["get"])]),
        binding("system:discovery", "system:discovery", &everyone),
        role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
            ],
        ),
        binding("system:basic-user", "system:basic-user", &everyone),
        role("system:public-info-viewer", json!({}), vec![urls(&health, &["get"])]),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[("Group", "system:authenticated"), ("Group", "system:unauthenticated")],
        ),
        role(
            "system:service-account-issuer-discovery",
            json!({}),
            vec![urls(&["/.well-known/openid-configuration", "/openid/v1/jwks"], &["get"])],
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &[("Group", "system:serviceaccounts")],
        ),
        role(
            "system:monitoring",
            json!({}),
            vec![urls(
                &[
                    "/metrics",
                    "/metrics/slis",
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/livez/*",
                    "/readyz/*",
                    "/healthz/*",
                ],
                &["get"],
            )],
        ),
        binding("system:monitoring", "system:monitoring", &[("Group", "system:monitoring")]),
        role(
            "system:auth-delegator",
            json!({}),
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
            ],
        ),
        role(
            "system:node-bootstrapper",
            json!({}),
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
                &["create", "get", "list", "watch"],
            )],
        ),
        // Who may have a kubelet client certificate approved without a person: a node
        // renewing its own (bound to every node, as kubeadm binds it) and a joining
        // agent's bootstrap identity (the group system:bootstrappers).
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            json!({}),
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
                &["create"],
            )],
        ),
        binding(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[("Group", "system:nodes")],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            json!({}),
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
                &["create"],
            )],
        ),
        // A joining agent's bootstrap identity may ask for its certificate (kubeadm binds
        // the same role to its bootstrap tokens' group).
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            &[("Group", "system:bootstrappers")],
        ),
        binding(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[("Group", "system:bootstrappers")],
        ),
        // What the in-process controllers act as (the garbage collector deletes and
        // updates any kind).
        role("system:kube-controller-manager", json!({}), vec![rule(&["*"], &["*"], &["*"])]),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        role(
            "system:kube-scheduler",
            json!({}),
            vec![
                rule(&[""], &["pods", "nodes", "namespaces"], READ),
                // Preemption deletes pods.
                rule(&[""], &["pods"], &["delete"]),
                rule(&[""], &["pods/binding", "pods/status"], &["create", "update", "patch"]),
                rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
            ],
        ),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        // What a node (the kubelet, or a simulated node) may do: its Node, its Lease, its
        // pods' status, their final deletion, events.
        role(
            "system:node",
            json!({}),
            vec![
                rule(
                    &[""],
                    &["nodes", "nodes/status"],
                    &["get", "list", "watch", "create", "update", "patch"],
                ),
                rule(
                    &[""],
                    &["pods", "pods/status"],
                    &["get", "list", "watch", "update", "patch", "delete"],
                ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["get", "list", "watch", "create", "update", "patch"],
                ),
                rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
                rule(&[""], &["configmaps", "secrets", "services", "endpoints"], READ),
                // A joined agent's service proxy runs as its node.
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                // Tokens for its pods' projected service-account volumes.
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(&[""], &["serviceaccounts"], &["get"]),
                // Renewing its own certificates, as Kubernetes' system:node role allows.
                rule(
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                    &["create", "get", "list", "watch"],
                ),
            ],
        ),
        binding("system:nodes", "system:node", &[("Group", "system:nodes")]),
        // What kube-proxy reads, as Kubernetes' system:node-proxier grants it; berth's
        // built-in load balancer (as k3s's ServiceLB) also writes the ingress address.
        role(
            "system:node-proxier",
            json!({}),
            vec![
                rule(&[""], &["services", "endpoints", "nodes"], READ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
                rule(&[""], &["services/status"], &["patch", "update"]),
            ],
        ),
        binding("system:node-proxier", "system:node-proxier", &[("User", "system:kube-proxy")]),
    ]
}

/// What a stored bootstrap object becomes at start: `None` when it needs nothing (or
/// says not to be updated); otherwise the object with the wanted labels, rules, aggregation
/// rule and subjects added. A binding whose role reference changed is replaced whole.
pub fn reconcile(current: &Value, wanted: &Value) -> Option<Value> {
    if current["metadata"]["annotations"][AUTOUPDATE] == "false" {
        return None;
    }
    let mut merged = current.clone();
    if let Some(labels) = wanted["metadata"]["labels"].as_object() {
        for (key, value) in labels {
            merged["metadata"]["labels"][key] = value.clone();
        }
    }
    merged["metadata"]["annotations"][AUTOUPDATE] = json!("true");
    if wanted.get("roleRef").is_some() {
        if current["roleRef"] != wanted["roleRef"] {
            merged["roleRef"] = wanted["roleRef"].clone();
            merged["subjects"] = wanted["subjects"].clone();
        }
        add_missing(&mut merged, "subjects", &wanted["subjects"]);
    } else if wanted.get("aggregationRule").is_some() {
        // The aggregation controller owns the rules.
        if current["aggregationRule"] != wanted["aggregationRule"] {
            merged["aggregationRule"] = wanted["aggregationRule"].clone();
        }
    } else {
        add_missing(&mut merged, "rules", &wanted["rules"]);
    }
    (merged != *current).then_some(merged)
}

fn add_missing(object: &mut Value, field: &str, wanted: &Value) {
    let mut list = object[field].as_array().cloned().unwrap_or_default();
    for item in wanted.as_array().into_iter().flatten() {
        if !list.contains(item) {
            list.push(item.clone());
        }
    }
    object[field] = json!(list);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_kubernetes_roles_and_binds_what_it_defines() {
        let policy = bootstrap();
        let names = |plural: &str| -> Vec<String> {
            policy
                .iter()
                .filter(|(p, _)| *p == plural)
                .map(|(_, o)| o["metadata"]["name"].as_str().unwrap_or("").to_owned())
                .collect()
        };
        let roles = names("clusterroles");
        for role in [
            "cluster-admin",
            "admin",
            "edit",
            "view",
            "system:discovery",
            "system:basic-user",
            "system:public-info-viewer",
        ] {
            assert!(roles.iter().any(|r| r == role), "{role}");
        }
        for (_, binding) in policy.iter().filter(|(p, _)| *p == "clusterrolebindings") {
            let role = binding["roleRef"]["name"].as_str().unwrap_or("");
            assert!(roles.iter().any(|r| r == role), "{role} is defined");
        }
    }

    #[test]
    fn reconciling_adds_and_respects_autoupdate() {
        let wanted = json!({"metadata": {"labels": {"a": "b"}}, "rules": [{"verbs": ["get"]}, {"verbs": ["list"]}]});
        let current =
            json!({"metadata": {"name": "r"}, "rules": [{"verbs": ["get"]}, {"verbs": ["own"]}]});
        let merged = reconcile(&current, &wanted).unwrap();
        assert_eq!(
            merged["rules"],
            json!([{"verbs": ["get"]}, {"verbs": ["own"]}, {"verbs": ["list"]}])
        );
        assert_eq!(merged["metadata"]["labels"]["a"], "b");
        assert!(reconcile(&merged, &wanted).is_none(), "a second start changes nothing");
        let frozen = json!({"metadata": {"annotations": {AUTOUPDATE: "false"}}, "rules": []});
        assert!(reconcile(&frozen, &wanted).is_none());
        let binding = json!({"roleRef": {"name": "x"}, "subjects": [{"name": "a"}]});
        let current =
            json!({"metadata": {}, "roleRef": {"name": "x"}, "subjects": [{"name": "b"}]});
        assert_eq!(
            reconcile(&current, &binding).unwrap()["subjects"],
            json!([{"name": "b"}, {"name": "a"}])
        );
    }
}
