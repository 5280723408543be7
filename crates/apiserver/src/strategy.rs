//! What is special about a kind, in one place per kind, as Kubernetes' registry
//! strategies (`pkg/registry/<kind>/strategy.go`) keep it: name rules, what creation sets,
//! what an update may not drop, whether status is written through the main resource, the
//! deletion policy when none is asked for, and what holds a deletion. The verbs ask
//! [`of`] instead of comparing kind names; the per-kind defaults and validation they call
//! live in `objects`.

use serde_json::{json, Value};

use crate::objects;
use crate::resources::Resource;

/// How names of a kind are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most kinds).
    Subdomain,
    /// A DNS-1123 label (namespaces, services: they become DNS names).
    Label,
    /// A path segment (RBAC kinds: `system:kube-controller-manager`).
    PathSegment,
}

pub trait Strategy: Sync {
    fn names(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// What creation sets beyond the defaults every write gets (status, generated
    /// fields).
    fn prepare_create(&self, _object: &mut Value) {}

    /// What an update that leaves a field out must not lose.
    fn prepare_update(&self, _old: &Value, _new: &mut Value) {}

    /// What a write to `/status` may not change beyond the status' own rules.
    fn prepare_status_update(&self, _old: &Value, _new: &mut Value) {}

    /// Whether writes to the main resource may change status (otherwise only `/status`
    /// does).
    fn status_in_main_resource(&self) -> bool {
        false
    }

    /// The `propagationPolicy` of a deletion that asks for none.
    fn default_propagation(&self) -> &'static str {
        "Background"
    }

    /// An entry of `spec.finalizers` that holds a deletion until its controller removes
    /// it (through the `finalize` subresource); what the object becomes while held.
    fn spec_finalizer(&self) -> Option<&'static str> {
        None
    }

    /// What an object held back from deletion becomes (a namespace: Terminating).
    fn mark_deleting(&self, _object: &mut Value) {}

    /// Whether creation takes addresses from shared pools (Service cluster IPs, ports).
    fn allocates_addresses(&self) -> bool {
        false
    }

    /// Whether creation resolves `priorityClassName` to `priority` (pods).
    fn admits_priority(&self) -> bool {
        false
    }

    /// Whether a deletion that removes the object at once answers with the object
    /// (Kubernetes' `ReturnDeletedObject`) rather than a `Status` of success.
    fn returns_deleted_object(&self) -> bool {
        false
    }
}

/// Whether Kubernetes keeps `metadata.generation` for a kind: the kinds with a spec that
/// controllers observe (workloads, custom resources, definitions, webhook and policy
/// objects), not Pods, Services, Nodes, Namespaces or data kinds.
pub fn has_generation(resource: &Resource) -> bool {
    matches!(
        resource.group,
        "apps"
            | "batch"
            | "autoscaling"
            | "policy"
            | "networking.k8s.io"
            | "apiextensions.k8s.io"
            | "admissionregistration.k8s.io"
    ) && resource.kind != "ControllerRevision"
        || crate::crd::lookup(resource).is_some()
}

struct Default;
impl Strategy for Default {}

struct Namespace;
impl Strategy for Namespace {
    fn names(&self) -> NameRule {
        NameRule::Label
    }
    fn prepare_create(&self, object: &mut Value) {
        object["spec"] = json!({"finalizers": [NAMESPACE_FINALIZER]});
        object["status"] = json!({"phase": "Active"});
    }
    fn status_in_main_resource(&self) -> bool {
        true
    }
    fn spec_finalizer(&self) -> Option<&'static str> {
        Some(NAMESPACE_FINALIZER)
    }
    fn mark_deleting(&self, object: &mut Value) {
        object["status"]["phase"] = json!("Terminating");
        let mut finalizers = object["spec"]["finalizers"].as_array().cloned().unwrap_or_default();
        if !finalizers.iter().any(|f| f == NAMESPACE_FINALIZER) {
            finalizers.push(json!(NAMESPACE_FINALIZER));
        }
        object["spec"]["finalizers"] = json!(finalizers);
    }
}

/// The namespace controller's entry in a namespace's `spec.finalizers`.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

struct Service;
impl Strategy for Service {
    fn names(&self) -> NameRule {
        NameRule::Label
    }
    fn prepare_create(&self, object: &mut Value) {
        // A new Service has an empty load-balancer status, as Kubernetes writes it.
        object["status"] = json!({"loadBalancer": {}});
    }
    fn returns_deleted_object(&self) -> bool {
        true
    }
    fn prepare_update(&self, old: &Value, new: &mut Value) {
        // A Service keeps its address when an update leaves it out.
        if new["spec"].is_object() && new["spec"]["clusterIP"].is_null() {
            new["spec"]["clusterIP"] = old["spec"]["clusterIP"].clone();
            new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
        }
    }
    fn allocates_addresses(&self) -> bool {
        true
    }
}

struct Pod;
impl Strategy for Pod {
    fn admits_priority(&self) -> bool {
        true
    }
    fn returns_deleted_object(&self) -> bool {
        true
    }
    fn prepare_create(&self, object: &mut Value) {
        // What a client sends as status is not the pod's status: it has not run.
        let qos = objects::qos_class(&object["spec"]);
        object["status"] = json!({"phase": "Pending", "qosClass": qos});
    }
    fn prepare_status_update(&self, old: &Value, new: &mut Value) {
        // A pod that has ended (Succeeded, or Failed as an eviction leaves it) does not
        // run again: a late status write of its node keeps the terminal phase, as
        // Kubernetes refuses the transition.
        let terminal = |phase: &Value| matches!(phase.as_str(), Some("Succeeded" | "Failed"));
        if terminal(&old["status"]["phase"]) && new["status"]["phase"] != old["status"]["phase"] {
            for field in ["phase", "reason", "message"] {
                new["status"][field] = old["status"][field].clone();
            }
        }
    }
}

struct Job;
impl Strategy for Job {
    fn prepare_create(&self, object: &mut Value) {
        objects::job_selector(object);
    }
    fn default_propagation(&self) -> &'static str {
        // Kubernetes orphans a Job's pods unless asked otherwise (kubectl asks).
        "Orphan"
    }
}

struct CertificateRequest;
impl Strategy for CertificateRequest {
    fn prepare_update(&self, old: &Value, new: &mut Value) {
        // A request, and who made it, never change.
        new["spec"] = old["spec"].clone();
    }
    fn prepare_status_update(&self, old: &Value, new: &mut Value) {
        // Approval and denial are the `approval` subresource's (its own authorization);
        // a status writer keeps the decisions as they were.
        let decision = |c: &&Value| matches!(c["type"].as_str(), Some("Approved" | "Denied"));
        let mut conditions: Vec<Value> = new["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| !decision(c))
            .cloned()
            .collect();
        conditions.extend(
            old["status"]["conditions"].as_array().into_iter().flatten().filter(decision).cloned(),
        );
        new["status"]["conditions"] = json!(conditions);
        new["spec"] = old["spec"].clone();
    }
}

struct ServiceAccount;
impl Strategy for ServiceAccount {
    fn returns_deleted_object(&self) -> bool {
        true
    }
}

struct Rbac;
impl Strategy for Rbac {
    fn names(&self) -> NameRule {
        NameRule::PathSegment
    }
}

struct Definition;
impl Strategy for Definition {
    fn prepare_create(&self, object: &mut Value) {
        crate::crd::prepare_create(object);
    }
    fn prepare_update(&self, old: &Value, new: &mut Value) {
        crate::crd::prepare_update(old, new);
    }
    fn mark_deleting(&self, object: &mut Value) {
        crate::crd::mark_deleting(object);
    }
}

/// The strategy of a resource's kind.
pub fn of(resource: &Resource) -> &'static dyn Strategy {
    match (resource.group, resource.kind) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => &Definition,
        ("", "Namespace") => &Namespace,
        ("", "Service") => &Service,
        ("", "Pod") => &Pod,
        ("", "ServiceAccount") => &ServiceAccount,
        ("certificates.k8s.io", "CertificateSigningRequest") => &CertificateRequest,
        ("batch", "Job") => &Job,
        // RBAC names (`system:node`) and APIService names (`v1.` for the core group) are
        // path segments.
        ("rbac.authorization.k8s.io", _) | ("apiregistration.k8s.io", _) => &Rbac,
        _ => &Default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn kinds_get_their_strategies() {
        let ns = of(find("", "v1", "namespaces").unwrap_or_else(|| panic!("namespaces")));
        assert_eq!(ns.names(), NameRule::Label);
        let mut namespace = json!({"metadata": {"name": "a"}, "spec": {}});
        ns.mark_deleting(&mut namespace);
        assert_eq!(namespace["status"]["phase"], "Terminating");
        assert_eq!(namespace["spec"]["finalizers"], json!(["kubernetes"]));
        let job = of(find("batch", "v1", "jobs").unwrap_or_else(|| panic!("jobs")));
        assert_eq!(job.default_propagation(), "Orphan");
        let roles = of(find("rbac.authorization.k8s.io", "v1", "clusterroles")
            .unwrap_or_else(|| panic!("roles")));
        assert_eq!(roles.names(), NameRule::PathSegment);
        let service = of(find("", "v1", "services").unwrap_or_else(|| panic!("services")));
        let mut updated = json!({"spec": {"ports": []}});
        service.prepare_update(
            &json!({"spec": {"clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"]}}),
            &mut updated,
        );
        assert_eq!(updated["spec"]["clusterIP"], "10.43.0.9");
        let configmaps = of(find("", "v1", "configmaps").unwrap_or_else(|| panic!("configmaps")));
        assert_eq!(configmaps.default_propagation(), "Background");
        assert!(!configmaps.allocates_addresses());
    }
}
