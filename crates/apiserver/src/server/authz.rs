//! Authorization: RBAC answered from an in-memory index of the Roles, ClusterRoles and
//! their bindings, kept current by a watch on the store (a list, then every change after
//! its revision; a relist when the watch falls behind compaction), so a request reads only
//! the bindings that name its user or groups, however many bindings exist.
//!
//! The watch lags a write by a moment: a request the index denies is checked again
//! against the store itself before it is refused, so a binding just created is never
//! missed (denials pay for a read; allowed requests do not).

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::mirror::Mirror;
use super::*;
use crate::rbac::{Attributes, Index, User};

/// Where the four RBAC kinds live in the store.
const RBAC_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

pub(super) struct RbacCache {
    mirror: Arc<Mirror>,
    index: Arc<RwLock<Arc<Index>>>,
}

fn index_of(objects: &BTreeMap<String, Value>) -> Index {
    let of = |kind: &str| -> Vec<Value> {
        let prefix = format!("{RBAC_PREFIX}{kind}/");
        objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    };
    Index::new(&of("clusterroles"), &of("roles"), &of("clusterrolebindings"), &of("rolebindings"))
}

impl RbacCache {
    /// Lists the RBAC objects, then keeps them current in a task `tasks` tracks, until
    /// `shutdown`.
    pub(super) async fn start(
        store: Arc<dyn Store>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<RbacCache>, Error> {
        let index: Arc<RwLock<Arc<Index>>> = Arc::default();
        let writer = index.clone();
        let on_change = Box::new(move |objects: &BTreeMap<String, Value>| {
            if let Ok(mut index) = writer.write() {
                *index = Arc::new(index_of(objects));
            }
        });
        let mirror =
            Mirror::start(store, RBAC_PREFIX, "RBAC objects", on_change, tasks, shutdown).await?;
        Ok(Arc::new(RbacCache { mirror, index }))
    }

    async fn relist(&self) -> Result<i64, ApiError> {
        self.mirror.relist().await
    }

    pub(super) fn index(&self) -> Arc<Index> {
        self.index.read().map(|index| index.clone()).unwrap_or_default()
    }
}

impl State {
    /// The rules that apply to `user` in `namespace` (SelfSubjectRulesReview).
    pub(super) fn rbac_rules(&self, user: &User, namespace: &str) -> Vec<Value> {
        self.rbac.index().rules_for(user, namespace)
    }

    /// RBAC: the admin may do everything; others what their bindings grant.
    pub(super) async fn authorize(&self, user: &User, attributes: &Attributes) -> bool {
        if let Some(decision) = self.node_authorizer(user, attributes).await {
            return decision;
        }
        if user.is_master() || self.rbac.index().allowed(user, attributes) {
            return true;
        }
        // Not in the index: perhaps not yet. Read the store before refusing.
        if let Err(err) = self.rbac.relist().await {
            tracing::warn!("cannot read RBAC objects to confirm a denial: {}", err.message);
            return false;
        }
        self.rbac.index().allowed(user, attributes)
    }
}

impl State {
    /// Kubernetes' Node authorizer and NodeRestriction, for kubelets
    /// (`system:node:NAME` in `system:nodes`): a node reads only the Secrets, ConfigMaps
    /// and PersistentVolumeClaims that pods bound to it use (by name: a get, or a list or
    /// watch of that one object) and writes none; it changes only its own Node and Lease,
    /// and only the status of (and the final deletion of) pods bound to it. `None`: not a
    /// node, or not a request this decides (RBAC's `system:node` role does).
    async fn node_authorizer(&self, user: &User, attributes: &Attributes) -> Option<bool> {
        let node = user.name.strip_prefix("system:node:")?;
        if !user.groups.iter().any(|g| g == "system:nodes") || !attributes.path.is_empty() {
            return None;
        }
        let verb = attributes.verb.as_str();
        let read = matches!(verb, "get" | "list" | "watch");
        match (attributes.group.as_str(), attributes.resource.as_str()) {
            ("", kind @ ("secrets" | "configmaps" | "persistentvolumeclaims")) => {
                let name = match verb {
                    "get" => attributes.name.as_str(),
                    "list" | "watch" => attributes.selected_name.as_str(),
                    _ => "",
                };
                if name.is_empty() {
                    return Some(false);
                }
                Some(self.used_on(node, kind, &attributes.namespace, name).await)
            }
            ("", "nodes") if !read && verb != "create" => Some(attributes.name == node),
            ("coordination.k8s.io", "leases") if !read && verb != "create" => {
                Some(attributes.namespace == "kube-node-lease" && attributes.name == node)
            }
            ("", "pods") if attributes.subresource == "status" || verb == "delete" => {
                if read {
                    return None;
                }
                Some(
                    self.pod_node(&attributes.namespace, &attributes.name).await.as_deref()
                        == Some(node),
                )
            }
            ("", "pods")
                if matches!(verb, "create" | "update" | "patch")
                    && attributes.subresource.is_empty() =>
            {
                Some(false)
            }
            _ => None,
        }
    }

    /// The node a pod is bound to.
    async fn pod_node(&self, namespace: &str, name: &str) -> Option<String> {
        let pods = resources::find("", "v1", "pods")?;
        let kv = self.store.get(&pods.key(Some(namespace), name)).await.ok()??;
        let pod = decode(&kv).ok()?;
        pod["spec"]["nodeName"].as_str().map(str::to_owned)
    }

    /// Whether a pod bound to `node` in `namespace` uses the object (`kind`: secrets,
    /// configmaps or persistentvolumeclaims) named `name`.
    async fn used_on(&self, node: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(pods) = resources::find("", "v1", "pods") else { return false };
        let Ok(page) = self.store.list(&pods.prefix(Some(namespace)), None, 0, 0).await else {
            return false;
        };
        page.items.iter().filter_map(|kv| decode(kv).ok()).any(|pod| {
            pod["spec"]["nodeName"] == node && references(&pod, kind).iter().any(|n| n == name)
        })
    }
}

/// The objects of one kind (secrets, configmaps, persistentvolumeclaims) a pod uses:
/// volumes (projected ones included), env and envFrom of every container, image pull
/// secrets.
pub(super) fn references(pod: &Value, kind: &str) -> Vec<String> {
    let mut names = Vec::new();
    let spec = &pod["spec"];
    let mut push = |v: &Value| {
        if let Some(name) = v.as_str().filter(|n| !n.is_empty()) {
            names.push(name.to_owned());
        }
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    for volume in list(&spec["volumes"]) {
        match kind {
            "secrets" => push(&volume["secret"]["secretName"]),
            "configmaps" => push(&volume["configMap"]["name"]),
            _ => push(&volume["persistentVolumeClaim"]["claimName"]),
        }
        for source in list(&volume["projected"]["sources"]) {
            match kind {
                "secrets" => push(&source["secret"]["name"]),
                "configmaps" => push(&source["configMap"]["name"]),
                _ => {}
            }
        }
    }
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|field| list(&spec[*field]))
        .collect::<Vec<_>>();
    for container in &containers {
        for env in list(&container["env"]) {
            match kind {
                "secrets" => push(&env["valueFrom"]["secretKeyRef"]["name"]),
                "configmaps" => push(&env["valueFrom"]["configMapKeyRef"]["name"]),
                _ => {}
            }
        }
        for from in list(&container["envFrom"]) {
            match kind {
                "secrets" => push(&from["secretRef"]["name"]),
                "configmaps" => push(&from["configMapRef"]["name"]),
                _ => {}
            }
        }
    }
    if kind == "secrets" {
        for secret in list(&spec["imagePullSecrets"]) {
            push(&secret["name"]);
        }
    }
    names
}

/// What Kubernetes' RBAC storage refuses: granting (in a Role or ClusterRole) or binding
/// (through a RoleBinding or ClusterRoleBinding) permissions the writer does not hold,
/// unless RBAC gives the writer `escalate` on the role or `bind` on the bound role; an
/// aggregation rule needs `escalate` (it grants what other roles hold).
impl Api {
    pub(super) async fn check_escalation(&self, object: &Value) -> Result<(), ApiError> {
        const RBAC: &str = "rbac.authorization.k8s.io";
        let resource = self.resource();
        if resource.group != RBAC || self.user.is_master() {
            return Ok(());
        }
        let namespace = self.target.namespace.clone().unwrap_or_default();
        let name = objects::name_of(object).to_owned();
        let user = &self.user;
        let may = |verb: &str, plural: &str, target: &str| Attributes {
            verb: verb.into(),
            group: RBAC.into(),
            resource: plural.into(),
            namespace: namespace.clone(),
            name: target.into(),
            ..Default::default()
        };
        let refuse = |what: String| {
            ApiError::about(
                resource,
                &name,
                403,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{what}",
                    berth_api::status::resource_name(resource),
                    user.name,
                    user.groups
                ),
            )
        };
        let (rules, scope) = match resource.kind {
            "Role" | "ClusterRole" => {
                if self.state.authorize(user, &may("escalate", resource.name, &name)).await {
                    return Ok(());
                }
                if object.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                    return Err(refuse(
                        "an aggregationRule (escalate is needed to use one)".into(),
                    ));
                }
                let scope = if resource.kind == "Role" { namespace.clone() } else { String::new() };
                (object["rules"].as_array().cloned().unwrap_or_default(), scope)
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let role_kind = object["roleRef"]["kind"].as_str().unwrap_or("");
                let role_name = object["roleRef"]["name"].as_str().unwrap_or("");
                let plural = if role_kind == "Role" { "roles" } else { "clusterroles" };
                if self.state.authorize(user, &may("bind", plural, role_name)).await {
                    return Ok(());
                }
                let role_resource = resources::find(RBAC, "v1", plural)
                    .ok_or_else(|| ApiError::new(500, "InternalError", "no RBAC roles"))?;
                let role_namespace = (role_kind == "Role").then_some(namespace.as_str());
                let role =
                    match self.state.store.get(&role_resource.key(role_namespace, role_name)).await
                    {
                        Ok(Some(kv)) => decode(&kv)?,
                        // A binding to a role that does not exist grants nothing yet.
                        Ok(None) => return Ok(()),
                        Err(err) => return Err(storage_error(role_resource, role_name, err)),
                    };
                let scope =
                    if resource.kind == "RoleBinding" { namespace.clone() } else { String::new() };
                (role["rules"].as_array().cloned().unwrap_or_default(), scope)
            }
            _ => return Ok(()),
        };
        for rule in &rules {
            if let Some(missing) = self.first_not_held(rule, &scope).await {
                return Err(refuse(missing));
            }
        }
        Ok(())
    }

    /// The first permission of `rule` the caller does not hold in `namespace` ("" for
    /// cluster-wide), or `None` when it holds them all.
    async fn first_not_held(&self, rule: &Value, namespace: &str) -> Option<String> {
        let list = |field: &str| -> Vec<String> {
            rule[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        let verbs = list("verbs");
        let urls = list("nonResourceURLs");
        for verb in &verbs {
            for url in &urls {
                let attributes =
                    Attributes { verb: verb.clone(), path: url.clone(), ..Default::default() };
                if !self.state.authorize(&self.user, &attributes).await {
                    return Some(format!("{{NonResourceURLs:[{url:?}], Verbs:[{verb:?}]}}"));
                }
            }
        }
        let names = list("resourceNames");
        let names = if names.is_empty() { vec![String::new()] } else { names };
        for group in list("apiGroups") {
            for resource in list("resources") {
                let (plural, sub) = resource.split_once('/').unwrap_or((resource.as_str(), ""));
                for verb in &verbs {
                    for name in &names {
                        let attributes = Attributes {
                            verb: verb.clone(),
                            group: group.clone(),
                            resource: plural.to_owned(),
                            subresource: sub.to_owned(),
                            namespace: namespace.to_owned(),
                            name: name.clone(),
                            ..Default::default()
                        };
                        if !self.state.authorize(&self.user, &attributes).await {
                            return Some(format!("{{APIGroups:[{group:?}], Resources:[{resource:?}], Verbs:[{verb:?}]}}"));
                        }
                    }
                }
            }
        }
        None
    }
}
