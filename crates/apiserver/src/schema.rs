//! Object schemas: the OpenAPI v3 components of every kind served, generated once from
//! `k8s-openapi`'s schemas (which carry Kubernetes' field descriptions, so `kubectl explain`
//! reads them), and the unknown-field check behind `fieldValidation`.
//!
//! Knows nothing of HTTP or storage: it maps a group-version-kind to its schema and walks
//! JSON values against it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use k8s_openapi::api::{
    apps, autoscaling, batch, coordination, core, discovery, policy, rbac, scheduling,
};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// Every component schema, by its Kubernetes name (`io.k8s.api.apps.v1.Deployment`), and the
/// name of each served kind's schema.
struct Schemas {
    components: Map<String, Value>,
    kinds: BTreeMap<(&'static str, &'static str, &'static str), String>,
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(build)
}

fn build() -> Schemas {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut kinds = BTreeMap::new();
    fn add<T: JsonSchema>(
        generator: &mut SchemaGenerator,
        kinds: &mut BTreeMap<(&'static str, &'static str, &'static str), String>,
        gvk: (&'static str, &'static str, &'static str),
    ) {
        generator.subschema_for::<T>();
        kinds.insert(gvk, T::schema_name().into_owned());
    }
    macro_rules! kinds {
        ($($group:literal $version:literal $kind:literal => $ty:ty),* $(,)?) => {
            $(add::<$ty>(&mut generator, &mut kinds, ($group, $version, $kind));)*
        };
    }
    kinds! {
        "" "v1" "Namespace" => core::v1::Namespace,
        "" "v1" "Pod" => core::v1::Pod,
        "" "v1" "Service" => core::v1::Service,
        "" "v1" "Endpoints" => core::v1::Endpoints,
        "" "v1" "Secret" => core::v1::Secret,
        "" "v1" "ConfigMap" => core::v1::ConfigMap,
        "" "v1" "Node" => core::v1::Node,
        "" "v1" "Event" => core::v1::Event,
        "" "v1" "ServiceAccount" => core::v1::ServiceAccount,
        "" "v1" "PersistentVolume" => core::v1::PersistentVolume,
        "" "v1" "PersistentVolumeClaim" => core::v1::PersistentVolumeClaim,
        "" "v1" "Binding" => core::v1::Binding,
        "apps" "v1" "Deployment" => apps::v1::Deployment,
        "apps" "v1" "ReplicaSet" => apps::v1::ReplicaSet,
        "apps" "v1" "DaemonSet" => apps::v1::DaemonSet,
        "apps" "v1" "StatefulSet" => apps::v1::StatefulSet,
        "apps" "v1" "ControllerRevision" => apps::v1::ControllerRevision,
        "batch" "v1" "Job" => batch::v1::Job,
        "batch" "v1" "CronJob" => batch::v1::CronJob,
        "policy" "v1" "PodDisruptionBudget" => policy::v1::PodDisruptionBudget,
        "policy" "v1" "Eviction" => policy::v1::Eviction,
        "autoscaling" "v1" "HorizontalPodAutoscaler" => autoscaling::v1::HorizontalPodAutoscaler,
        "autoscaling" "v1" "Scale" => autoscaling::v1::Scale,
        "autoscaling" "v2" "HorizontalPodAutoscaler" => autoscaling::v2::HorizontalPodAutoscaler,
        "coordination.k8s.io" "v1" "Lease" => coordination::v1::Lease,
        "scheduling.k8s.io" "v1" "PriorityClass" => scheduling::v1::PriorityClass,
        "discovery.k8s.io" "v1" "EndpointSlice" => discovery::v1::EndpointSlice,
        "rbac.authorization.k8s.io" "v1" "Role" => rbac::v1::Role,
        "rbac.authorization.k8s.io" "v1" "ClusterRole" => rbac::v1::ClusterRole,
        "rbac.authorization.k8s.io" "v1" "RoleBinding" => rbac::v1::RoleBinding,
        "rbac.authorization.k8s.io" "v1" "ClusterRoleBinding" => rbac::v1::ClusterRoleBinding,
        "authorization.k8s.io" "v1" "SelfSubjectAccessReview" =>
            k8s_openapi::api::authorization::v1::SelfSubjectAccessReview,
        "authentication.k8s.io" "v1" "TokenReview" =>
            k8s_openapi::api::authentication::v1::TokenReview,
        "authorization.k8s.io" "v1" "SubjectAccessReview" =>
            k8s_openapi::api::authorization::v1::SubjectAccessReview,
        "authorization.k8s.io" "v1" "LocalSubjectAccessReview" =>
            k8s_openapi::api::authorization::v1::LocalSubjectAccessReview,
        "authorization.k8s.io" "v1" "SelfSubjectRulesReview" =>
            k8s_openapi::api::authorization::v1::SelfSubjectRulesReview,
        "authentication.k8s.io" "v1" "SelfSubjectReview" =>
            k8s_openapi::api::authentication::v1::SelfSubjectReview,
        "events.k8s.io" "v1" "Event" => k8s_openapi::api::events::v1::Event,
        "certificates.k8s.io" "v1" "CertificateSigningRequest" =>
            k8s_openapi::api::certificates::v1::CertificateSigningRequest,
        "" "v1" "ResourceQuota" => core::v1::ResourceQuota,
        "" "v1" "LimitRange" => core::v1::LimitRange,
        "" "v1" "PodTemplate" => core::v1::PodTemplate,
        "" "v1" "ReplicationController" => core::v1::ReplicationController,
        "" "v1" "ComponentStatus" => core::v1::ComponentStatus,
        "apiregistration.k8s.io" "v1" "APIService" =>
            k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService,
        "admissionregistration.k8s.io" "v1" "MutatingWebhookConfiguration" =>
            k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
        "admissionregistration.k8s.io" "v1" "ValidatingWebhookConfiguration" =>
            k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
        "apiextensions.k8s.io" "v1" "CustomResourceDefinition" =>
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    }
    let mut components = generator.take_definitions(true);
    for ((group, version, kind), name) in &kinds {
        if let Some(schema) = components.get_mut(name).and_then(Value::as_object_mut) {
            // k8s-openapi marks metadata required; Kubernetes' published schemas do not.
            if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
                required.retain(|field| field != "metadata");
                if required.is_empty() {
                    schema.remove("required");
                }
            }
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": group, "version": version, "kind": kind}]),
            );
        }
    }
    Schemas { components, kinds }
}

/// The component schemas a group-version's OpenAPI document carries: its kinds' schemas
/// and every schema they refer to.
pub fn components(group: &str, version: &str) -> Map<String, Value> {
    let wanted: Vec<&str> = schemas()
        .kinds
        .iter()
        .filter(|((g, v, _), _)| *g == group && *v == version)
        .map(|(_, name)| name.as_str())
        .collect();
    components_named(&wanted)
}

/// The named component schemas and every schema they refer to.
pub fn components_named(names: &[&str]) -> Map<String, Value> {
    let all = schemas();
    let mut wanted: Vec<&str> = names.to_vec();
    let mut seen = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if !seen.insert(name.to_owned()) {
            continue;
        }
        if let Some(schema) = all.components.get(name) {
            collect_refs(schema, &mut |target| wanted.push(target));
        }
    }
    seen.into_iter()
        .filter_map(|name| all.components.get(&name).map(|s| (name, s.clone())))
        .collect()
}

fn collect_refs<'a>(schema: &'a Value, found: &mut dyn FnMut(&'a str)) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => {
                        if let Some(name) = target.strip_prefix("#/components/schemas/") {
                            found(name);
                        }
                    }
                    _ => collect_refs(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, found)),
        _ => {}
    }
}

/// The fields of `object` that its kind's schema does not know, as Kubernetes names them
/// (`spec.template.spec.containers[0].imagePullPolicyy`). With `prune`, they are removed,
/// as a typed decoder drops them. An unknown kind has no unknown fields.
pub fn unknown_fields(
    (group, version, kind): (&str, &str, &str),
    object: &mut Value,
    prune: bool,
) -> Vec<String> {
    let all = schemas();
    let Some(name) = all.kinds.get(&(group, version, kind)).or_else(|| {
        all.kinds
            .iter()
            .find(|((g, v, k), _)| *g == group && *v == version && *k == kind)
            .map(|(_, n)| n)
    }) else {
        return Vec::new();
    };
    let Some(schema) = all.components.get(name) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    walk(&all.components, schema, object, "", prune, &mut found);
    found
}

/// Follows `$ref` and single-element `allOf` wrappers to the schema that says something.
fn resolve<'a>(components: &'a Map<String, Value>, mut schema: &'a Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
            match target.strip_prefix("#/components/schemas/").and_then(|n| components.get(n)) {
                Some(next) => schema = next,
                None => return schema,
            }
        } else if let Some([only]) =
            schema.get("allOf").and_then(Value::as_array).map(Vec::as_slice)
        {
            schema = only;
        } else {
            return schema;
        }
    }
    schema
}

fn walk(
    components: &Map<String, Value>,
    schema: &Value,
    value: &mut Value,
    path: &str,
    prune: bool,
    found: &mut Vec<String>,
) {
    let schema = resolve(components, schema);
    if schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if properties.is_none() && additional.is_none() {
                return; // free-form (FieldsV1, RawExtension): anything goes
            }
            let mut unknown = Vec::new();
            for (key, child) in map.iter_mut() {
                let child_path =
                    if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match properties.and_then(|p| p.get(key)).or(additional) {
                    Some(sub) => walk(components, sub, child, &child_path, prune, found),
                    None => {
                        found.push(child_path);
                        unknown.push(key.clone());
                    }
                }
            }
            if prune {
                for key in unknown {
                    map.remove(&key);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(components, item_schema, item, &format!("{path}[{i}]"), prune, found);
                }
            }
        }
        _ => {}
    }
}

/// Parses JSON as `serde_json` does (a repeated key keeps its last value) and also names
/// every key that appeared twice in an object (`spec.replicas`), for `fieldValidation`.
pub fn parse_noting_duplicates(body: &[u8]) -> serde_json::Result<(Value, Vec<String>)> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;

    struct Noting<'a> {
        path: String,
        duplicates: &'a RefCell<Vec<String>>,
    }

    impl<'de> DeserializeSeed<'de> for Noting<'_> {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Noting<'_> {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            loop {
                let seed = Noting {
                    path: format!("{}[{}]", self.path, items.len()),
                    duplicates: self.duplicates,
                };
                match seq.next_element_seed(seed)? {
                    Some(item) => items.push(item),
                    None => return Ok(Value::Array(items)),
                }
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
            let mut map = Map::new();
            while let Some(key) = access.next_key::<String>()? {
                let path =
                    if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
                let value = access
                    .next_value_seed(Noting { path: path.clone(), duplicates: self.duplicates })?;
                if map.insert(key, value).is_some() {
                    self.duplicates.borrow_mut().push(path);
                }
            }
            Ok(Value::Object(map))
        }
    }

    let duplicates = RefCell::new(Vec::new());
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value =
        Noting { path: String::new(), duplicates: &duplicates }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok((value, duplicates.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_named_and_the_last_kept() {
        let (value, duplicates) = parse_noting_duplicates(
            br#"{"spec": {"replicas": 1, "replicas": 2, "template": {"containers": [{"name": "a", "name": "b"}]}}, "kind": "X"}"#,
        )
        .unwrap();
        assert_eq!(value["spec"]["replicas"], 2);
        assert_eq!(value["spec"]["template"]["containers"][0]["name"], "b");
        assert_eq!(duplicates, ["spec.replicas", "spec.template.containers[0].name"]);
        let (value, duplicates) =
            parse_noting_duplicates(br#"[1, 2.5, "x", null, true, {}]"#).unwrap();
        assert_eq!(value, json!([1, 2.5, "x", null, true, {}]));
        assert!(duplicates.is_empty());
        for bad in [&b"{"[..], b"{\"a\" 1}", b"[1,]", b"{} {}", b""] {
            assert!(parse_noting_duplicates(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kinds_carry_their_group_version_kind_and_references() {
        let apps = components("apps", "v1");
        let deployment = &apps["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        assert!(deployment["description"].as_str().is_some_and(|d| d.contains("Deployment")));
        // What the Deployment refers to comes along; other groups' kinds do not.
        assert!(apps.contains_key("io.k8s.api.core.v1.PodSpec"));
        assert!(apps.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"));
        assert!(!apps.contains_key("io.k8s.api.batch.v1.Job"));
        let core = components("", "v1");
        assert!(core.contains_key("io.k8s.api.core.v1.Pod"));
        assert!(components("nosuch", "v1").is_empty());
    }

    #[test]
    fn unknown_fields_are_named_by_path_and_pruned_on_request() {
        let mut deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"any": "key"}, "managedFields": [{"fieldsV1": {"f:x": {}}}]},
            "spec": {
                "replicas": 1, "replica": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "containers": [{"name": "c", "image": "i", "imagePullPolicyy": "Always",
                        "ports": [{"containerPort": 80, "hostport": 1}],
                        "resources": {"limits": {"memory": "1Gi"}}}]}}
            }
        });
        let gvk = ("apps", "v1", "Deployment");
        let found = unknown_fields(gvk, &mut deployment.clone(), false);
        assert_eq!(
            found,
            [
                "spec.replica",
                "spec.template.spec.containers[0].imagePullPolicyy",
                "spec.template.spec.containers[0].ports[0].hostport"
            ]
        );
        let pruned = unknown_fields(gvk, &mut deployment, true);
        assert_eq!(pruned.len(), 3);
        assert_eq!(unknown_fields(gvk, &mut deployment, false), Vec::<String>::new());
        assert_eq!(deployment["spec"]["replicas"], 1);
        assert!(deployment["spec"].get("replica").is_none());
        // Kinds without a schema here are not judged.
        assert!(unknown_fields(("x", "v1", "Y"), &mut json!({"a": 1}), false).is_empty());
    }
}
