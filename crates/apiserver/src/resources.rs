//! What the API server makes of the kinds table (`berth_api::kinds`): the discovery
//! documents clients read (legacy `/api`, `/apis`, per group-version lists, and the
//! aggregated v2 form kubectl 1.32 asks for first), the OpenAPI v3 documents, and where
//! objects live in storage.

use serde_json::{json, Value};

pub use berth_api::kinds::{all, by_kind, find, Resource, Subresource, RESOURCES, VERBS};

/// Where objects of a resource live in the store.
pub trait StorageKeys {
    fn key(&self, namespace: Option<&str>, name: &str) -> String;
    fn prefix(&self, namespace: Option<&str>) -> String;
}

impl StorageKeys for Resource {
    /// Where an object lives in storage. Every version of a group shares one key space
    /// (as Kubernetes stores one version and converts).
    fn key(&self, namespace: Option<&str>, name: &str) -> String {
        let group = storage_group(self);
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{group}/{}/{ns}/{name}", self.name),
            _ => format!("/registry/{group}/{}/{name}", self.name),
        }
    }

    /// The prefix a list or watch covers (a namespace, or all of them).
    fn prefix(&self, namespace: Option<&str>) -> String {
        let group = storage_group(self);
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{group}/{}/{ns}/", self.name),
            _ => format!("/registry/{group}/{}/", self.name),
        }
    }
}

/// The group a resource's objects are stored under: `core` for the core group, and for
/// `events.k8s.io` events too (the same objects as core/v1 Events, as Kubernetes stores
/// them).
fn storage_group(resource: &Resource) -> &'static str {
    let group = crate::convert::stored_elsewhere(resource.group, resource.kind)
        .map_or(resource.group, |(group, _)| group);
    if group.is_empty() {
        "core"
    } else {
        group
    }
}

fn legacy_entries(resource: &Resource) -> Vec<Value> {
    let mut entries = vec![json!({
        "name": resource.name,
        "singularName": resource.singular,
        "namespaced": resource.namespaced,
        "kind": resource.kind,
        "verbs": resource.verbs,
        "shortNames": resource.short_names,
        "categories": resource.categories,
    })];
    for sub in resource.subresources {
        let (group, version, kind) = sub.kind;
        let mut entry = json!({
            "name": format!("{}/{}", resource.name, sub.name),
            "singularName": "",
            "namespaced": resource.namespaced,
            "kind": if kind.is_empty() { resource.kind } else { kind },
            "verbs": sub.verbs,
        });
        if !group.is_empty() {
            entry["group"] = json!(group);
            entry["version"] = json!(version);
        }
        entries.push(entry);
    }
    entries
}

fn aggregated_entry(resource: &Resource) -> Value {
    let subresources: Vec<Value> = resource
        .subresources
        .iter()
        .map(|sub| {
            let (group, version, kind) = sub.kind;
            let (group, version, kind) = if kind.is_empty() {
                (resource.group, resource.version, resource.kind)
            } else {
                (group, version, kind)
            };
            json!({
                "subresource": sub.name,
                "responseKind": {"group": group, "version": version, "kind": kind},
                "verbs": sub.verbs,
            })
        })
        .collect();
    let mut entry = json!({
        "resource": resource.name,
        "responseKind": {"group": resource.group, "version": resource.version, "kind": resource.kind},
        "scope": if resource.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": resource.singular,
        "verbs": resource.verbs,
    });
    if !resource.short_names.is_empty() {
        entry["shortNames"] = json!(resource.short_names);
    }
    if !resource.categories.is_empty() {
        entry["categories"] = json!(resource.categories);
    }
    if !subresources.is_empty() {
        entry["subresources"] = json!(subresources);
    }
    entry
}

/// Groups in the order discovery lists them, each with its versions, preferred first.
fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in all().into_iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

/// An APIService object for a group-version served by this server (`v1.apps`, `v1.` for
/// the core group), as kube-apiserver registers its own: served locally, always
/// available. `managed` is the automanaged label's value (`onstart` for built-in
/// groups, `true` for custom resources' groups).
pub fn api_service(group: &str, version: &str, managed: &str) -> Value {
    json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": format!("{version}.{group}"), "labels": {"kube-aggregator.kubernetes.io/automanaged": managed}},
        "spec": {"group": group, "version": version, "groupPriorityMinimum": if group.is_empty() { 18000 } else { 1000 }, "versionPriority": 15},
        "status": {"conditions": [{"type": "Available", "status": "True", "reason": "Local",
            "message": "Local APIServices are always available", "lastTransitionTime": crate::objects::now()}]},
    })
}

/// The built-in group-versions, as APIService objects.
pub fn builtin_api_services() -> Vec<Value> {
    let mut seen = std::collections::BTreeSet::new();
    RESOURCES
        .iter()
        .filter(|r| seen.insert((r.group, r.version)))
        .map(|r| api_service(r.group, r.version, "onstart"))
        .collect()
}

/// `GET /api`.
pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(group, versions)| {
            let list: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({"name": group, "versions": list, "preferredVersion": list[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1` or `GET /apis/GROUP/VERSION`; `None` for an unknown group-version.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let entries: Vec<Value> = all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(legacy_entries)
        .collect();
    if entries.is_empty() {
        return None;
    }
    let group_version =
        if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": entries}),
    )
}

/// The aggregated discovery document (`apidiscovery.k8s.io/v2`): for `/api` with
/// `core == true`, for `/apis` otherwise.
pub fn aggregated(core: bool) -> Value {
    let group_entry = |group: &str, versions: &[&str]| {
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| {
                let resources: Vec<Value> = all()
                    .into_iter()
                    .filter(|r| r.group == group && r.version == *v)
                    .map(aggregated_entry)
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
    };
    let items: Vec<Value> = if core {
        vec![group_entry("", &["v1"])]
    } else {
        groups().iter().map(|(g, vs)| group_entry(g, vs)).collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `GET /openapi/v3`: where each group-version's document is.
pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut versions: Vec<String> = all().iter().map(|r| r.group_version()).collect();
    versions.sort();
    versions.dedup();
    for gv in versions {
        let path = if gv.contains('/') { format!("apis/{gv}") } else { format!("api/{gv}") };
        paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}")}));
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/api/v1` (or `apis/GROUP/VERSION`): the operations of a group-version,
/// each declaring the `fieldValidation` parameter, so that kubectl lets the server
/// validate (`--validate=strict`), and the schemas of its kinds (`kubectl explain`).
pub fn openapi_document(group: &str, version: &str) -> Option<Value> {
    let selected: Vec<&Resource> =
        all().into_iter().filter(|r| r.group == group && r.version == version).collect();
    if selected.is_empty() {
        return None;
    }
    let base = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let parameter = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let write_params =
        json!([parameter("dryRun"), parameter("fieldManager"), parameter("fieldValidation")]);
    let mut paths = serde_json::Map::new();
    let components = crate::crd::openapi_components(group, version)
        .unwrap_or_else(|| crate::schema::components(group, version));
    for r in selected {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let operation = |id: String, action: &str| {
            json!({"operationId": id, "parameters": write_params, "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk})
        };
        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.name)
        } else {
            format!("{base}/{}", r.name)
        };
        paths.insert(
            collection.clone(),
            json!({"get": {"operationId": format!("list{}", r.kind), "responses": {"200": {"description": "OK"}}}, "post": operation(format!("create{}", r.kind), "post")}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": {"operationId": format!("read{}", r.kind), "responses": {"200": {"description": "OK"}}},
                "put": operation(format!("replace{}", r.kind), "put"),
                "patch": operation(format!("patch{}", r.kind), "patch"),
                "delete": {"operationId": format!("delete{}", r.kind), "responses": {"200": {"description": "OK"}}},
            }),
        );
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths, "components": {"schemas": components}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_keys() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(pods.key(Some("default"), "web"), "/registry/core/pods/default/web");
        assert_eq!(pods.prefix(None), "/registry/core/pods/");
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(ns.key(Some("ignored"), "kube-system"), "/registry/core/namespaces/kube-system");
        assert_eq!(by_kind("apps/v1", "Deployment").unwrap().name, "deployments");
        assert!(by_kind("apps/v1beta1", "Deployment").is_none());
        // Both autoscaling versions share one key space.
        let v1 = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let v2 = find("autoscaling", "v2", "horizontalpodautoscalers").unwrap();
        assert_eq!(v1.key(Some("a"), "b"), v2.key(Some("a"), "b"));
    }

    #[test]
    fn discovery_documents() {
        let groups = api_group_list();
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "apps",
                "batch",
                "policy",
                "autoscaling",
                "coordination.k8s.io",
                "scheduling.k8s.io",
                "discovery.k8s.io",
                "rbac.authorization.k8s.io",
                "apiregistration.k8s.io",
                "certificates.k8s.io",
                "events.k8s.io",
                "apiextensions.k8s.io",
                "admissionregistration.k8s.io",
                "authentication.k8s.io",
                "authorization.k8s.io",
                "metrics.k8s.io"
            ]
        );
        let autoscaling = &groups["groups"][3];
        assert_eq!(autoscaling["preferredVersion"]["groupVersion"], "autoscaling/v2");
        let core = resource_list("", "v1").unwrap();
        let pods =
            core["resources"].as_array().unwrap().iter().find(|r| r["name"] == "pods").unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert!(core["resources"].as_array().unwrap().iter().any(|r| r["name"] == "pods/log"));
        let apps = resource_list("apps", "v1").unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(
            (scale["group"].as_str(), scale["kind"].as_str()),
            (Some("autoscaling"), Some("Scale"))
        );
        assert!(resource_list("apps", "v1beta1").is_none());
        let aggregated = aggregated(false);
        assert_eq!(aggregated["kind"], "APIGroupDiscoveryList");
        let deploy = &aggregated["items"][0]["versions"][0]["resources"][0];
        assert_eq!(deploy["resource"], "deployments");
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["subresources"][1]["responseKind"]["kind"], "Scale");
        let index = openapi_index();
        assert_eq!(index["paths"]["apis/apps/v1"]["serverRelativeURL"], "/openapi/v3/apis/apps/v1");
        let doc = openapi_document("", "v1").unwrap();
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "ConfigMap");
        let core = super::aggregated(true);
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        let kinds = RESOURCES.iter().map(|r| r.kind).collect::<std::collections::BTreeSet<_>>();
        for kind in [
            "Namespace",
            "Pod",
            "Service",
            "Endpoints",
            "Secret",
            "ConfigMap",
            "Node",
            "Event",
            "ServiceAccount",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "Deployment",
            "ReplicaSet",
            "DaemonSet",
            "StatefulSet",
            "ControllerRevision",
            "Job",
            "CronJob",
            "HorizontalPodAutoscaler",
            "Lease",
            "EndpointSlice",
            "Role",
            "ClusterRole",
            "RoleBinding",
            "ClusterRoleBinding",
        ] {
            assert!(kinds.contains(kind), "{kind} is served");
        }
    }
}
