//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): what a definition makes served
//! (one resource per served version, in `berth_api::kinds`' table), and what the API does
//! with the objects of a custom resource, as kube-apiserver's apiextensions part does:
//! the structural schema prunes unknown fields, fills defaults and validates, with
//! Kubernetes' messages; printer columns make the `Table` kubectl prints; the schema
//! becomes the group-version's OpenAPI component (`kubectl explain`); versions convert
//! with `strategy: None` (only `apiVersion` changes) or through a webhook (the server's
//! `conversion`).
//!
//! Knows nothing of HTTP or storage: definitions come in as JSON, objects are JSON.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::{json, Map, Value};

use berth_api::kinds::{self, CustomResource, Resource};

/// The finalizer a definition carries until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// One served version of a custom resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    /// The definition's name (`crontabs.stable.example.com`).
    pub definition: String,
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    /// The version objects are stored in.
    pub storage: String,
    /// `openAPIV3Schema`, or `{type: object, x-kubernetes-preserve-unknown-fields: true}`
    /// where none is given.
    pub schema: Value,
    pub columns: Vec<Column>,
    pub status: bool,
    pub scale: Option<Scale>,
    /// `deprecationWarning` (or Kubernetes' default text) for a deprecated version.
    pub deprecation: Option<String>,
    /// The definition is being deleted: no new objects.
    pub terminating: bool,
    /// `spec.conversion.webhook` when `spec.conversion.strategy` is `Webhook`: versions
    /// other than the stored one convert through it.
    pub conversion_webhook: Option<Value>,
}

/// An `additionalPrinterColumns` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub kind: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// The `scale` subresource's paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Scale {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

static VERSIONS: RwLock<Versions> = RwLock::new(BTreeMap::new());

type Versions = BTreeMap<(String, String, String), Arc<Version>>;

/// The served versions (a panic elsewhere while the lock was held leaves the table as
/// it was, still served).
fn versions() -> std::sync::RwLockReadGuard<'static, Versions> {
    VERSIONS.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The custom resource behind a resource of the table, if it is one.
pub fn lookup(resource: &Resource) -> Option<Arc<Version>> {
    if kinds::is_builtin(resource) {
        return None;
    }
    lookup_parts(resource.group, resource.version, resource.name)
}

fn lookup_parts(group: &str, version: &str, plural: &str) -> Option<Arc<Version>> {
    versions().get(&(group.to_owned(), version.to_owned(), plural.to_owned())).cloned()
}

/// The custom resource of a group and kind, in any served version.
fn by_group_kind(group: &str, kind: &str) -> Option<Arc<Version>> {
    versions().values().find(|v| v.group == group && v.kind == kind).cloned()
}

/// The version a custom kind is stored in (`None` for a kind that is not custom).
pub fn storage_version(group: &str, kind: &str) -> Option<&'static str> {
    let found = by_group_kind(group, kind)?;
    kinds::find(group, &found.storage, &found.plural).map(|r| r.version)
}

/// Serves what these definitions define (and stops serving what they no longer do).
pub fn install(definitions: &[Value]) {
    let mut table = Vec::new();
    let mut versions = BTreeMap::new();
    for definition in definitions {
        for (resource, version) in served(definition) {
            versions.insert(
                (version.group.clone(), version.version.clone(), version.plural.clone()),
                Arc::new(version),
            );
            table.push(resource);
        }
    }
    *VERSIONS.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = versions;
    kinds::set_custom(&table);
}

/// The resources a definition serves, one per served version. A definition whose names
/// are not accepted serves nothing.
pub fn served(definition: &Value) -> Vec<(CustomResource, Version)> {
    let spec = &definition["spec"];
    let accepted = definition["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "NamesAccepted" && c["status"] == "True");
    if !accepted {
        return Vec::new();
    }
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let texts = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    };
    let names = &spec["names"];
    let group = text(&spec["group"]);
    let plural = text(&names["plural"]);
    let kind = text(&names["kind"]);
    let singular = match text(&names["singular"]) {
        s if s.is_empty() => kind.to_lowercase(),
        s => s,
    };
    let storage = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == true)
        .map(|v| text(&v["name"]))
        .unwrap_or_default();
    let terminating = definition["metadata"].get("deletionTimestamp").is_some();
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"] == true)
        .map(|v| {
            let version = text(&v["name"]);
            let subresources = &v["subresources"];
            let scale = subresources["scale"].as_object().map(|s| Scale {
                spec_replicas: s.get("specReplicasPath").map(text).unwrap_or_default(),
                status_replicas: s.get("statusReplicasPath").map(text).unwrap_or_default(),
                label_selector: s.get("labelSelectorPath").map(text).filter(|p| !p.is_empty()),
            });
            let columns = v["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| Column {
                    name: text(&c["name"]),
                    kind: text(&c["type"]),
                    format: text(&c["format"]),
                    description: text(&c["description"]),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    json_path: text(&c["jsonPath"]),
                })
                .collect();
            let schema = match &v["schema"]["openAPIV3Schema"] {
                Value::Object(_) => v["schema"]["openAPIV3Schema"].clone(),
                _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            };
            let deprecation =
                (v["deprecated"] == true).then(|| match v["deprecationWarning"].as_str() {
                    Some(warning) => warning.to_owned(),
                    None => format!("{group}/{version} {kind} is deprecated"),
                });
            let resource = CustomResource {
                group: group.clone(),
                version: version.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                kind: kind.clone(),
                namespaced: spec["scope"] != "Cluster",
                short_names: texts(&names["shortNames"]),
                categories: texts(&names["categories"]),
                status: subresources["status"].is_object(),
                scale: scale.is_some(),
            };
            let version = Version {
                definition: text(&definition["metadata"]["name"]),
                group: group.clone(),
                version,
                plural: plural.clone(),
                kind: kind.clone(),
                storage: storage.clone(),
                schema,
                columns,
                status: subresources["status"].is_object(),
                scale,
                deprecation,
                terminating,
                conversion_webhook: (spec["conversion"]["strategy"] == "Webhook")
                    .then(|| spec["conversion"]["webhook"].clone()),
            };
            (resource, version)
        })
        .collect()
}

/// Checks a definition as Kubernetes' validation does; (field, message) of the first
/// problem. `served` names the resources served now (built-in and custom) that a new
/// definition must not take over.
pub fn validate_definition(definition: &Value) -> Result<(), (String, String)> {
    let spec = &definition["spec"];
    let name = definition["metadata"]["name"].as_str().unwrap_or("");
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec["names"]["plural"].as_str().unwrap_or("");
    let kind = spec["names"]["kind"].as_str().unwrap_or("");
    let problem = |field: &str, message: String| Err((field.to_owned(), message));
    if group.is_empty() {
        return problem("spec.group", "Required value".into());
    }
    if !group.contains('.') {
        return problem(
            "spec.group",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        );
    }
    if plural.is_empty() {
        return problem("spec.names.plural", "Required value".into());
    }
    if plural != plural.to_lowercase() || crate::objects::validate_name(plural, true).is_err() {
        return problem(
            "spec.names.plural",
            format!("Invalid value: {plural:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"),
        );
    }
    if kind.is_empty() {
        return problem("spec.names.kind", "Required value".into());
    }
    if name != format!("{plural}.{group}") {
        return problem(
            "metadata.name",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        );
    }
    match spec["scope"].as_str() {
        Some("Namespaced" | "Cluster") => {}
        Some(other) => {
            return problem(
                "spec.scope",
                format!(
                    "Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""
                ),
            )
        }
        None => return problem("spec.scope", "Required value".into()),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        return problem(
            "spec.versions",
            "Invalid value: null: must have exactly one version marked as storage version".into(),
        );
    }
    let storage = versions.iter().filter(|v| v["storage"] == true).count();
    if storage != 1 {
        return problem(
            "spec.versions",
            format!(
                "Invalid value: {}: must have exactly one version marked as storage version",
                json!(versions.iter().map(|v| v["name"].clone()).collect::<Vec<_>>())
            ),
        );
    }
    if !versions.iter().any(|v| v["served"] == true) {
        return problem(
            "spec.versions",
            "Invalid value: \"\": must have at least one version marked as served".into(),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, version) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let vname = version["name"].as_str().unwrap_or("");
        if vname.is_empty() || crate::objects::validate_name(vname, true).is_err() {
            return problem(
                &format!("{at}.name"),
                format!("Invalid value: {vname:?}: a DNS-1035 label is required"),
            );
        }
        if !seen.insert(vname.to_owned()) {
            return problem(&format!("{at}.name"), format!("Duplicate value: {vname:?}"));
        }
        let schema = &version["schema"]["openAPIV3Schema"];
        if !schema.is_object() {
            return problem(
                &format!("{at}.schema.openAPIV3Schema"),
                "Required value: schemas are required".into(),
            );
        }
        if let Some((field, message)) =
            structural_problem(schema, &format!("{at}.schema.openAPIV3Schema"), true)
        {
            return problem(&field, message);
        }
        if let Some(scale) = version["subresources"]["scale"].as_object() {
            for key in ["specReplicasPath", "statusReplicasPath"] {
                let path = scale.get(key).and_then(Value::as_str).unwrap_or("");
                if !path.starts_with('.') || path.contains('[') {
                    return problem(
                        &format!("{at}.subresources.scale.{key}"),
                        format!(
                            "Invalid value: {path:?}: should be a json path under .spec or .status"
                        ),
                    );
                }
            }
        }
        for (j, column) in
            version["additionalPrinterColumns"].as_array().into_iter().flatten().enumerate()
        {
            let col = format!("{at}.additionalPrinterColumns[{j}]");
            if column["name"].as_str().unwrap_or("").is_empty() {
                return problem(&format!("{col}.name"), "Required value".into());
            }
            match column["type"].as_str() {
                Some("integer" | "number" | "string" | "boolean" | "date") => {}
                other => return problem(&format!("{col}.type"), format!("Unsupported value: {:?}: supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\"", other.unwrap_or(""))),
            }
            if !column["jsonPath"].as_str().unwrap_or("").starts_with('.') {
                return problem(
                    &format!("{col}.jsonPath"),
                    "Invalid value: must be a simple json path starting with .".into(),
                );
            }
        }
    }
    if let Some(strategy) = spec["conversion"]["strategy"].as_str() {
        if strategy != "None" && strategy != "Webhook" {
            return problem(
                "spec.conversion.strategy",
                format!("Unsupported value: {strategy:?}: supported values: \"None\", \"Webhook\""),
            );
        }
    }
    Ok(())
}

/// What keeps a schema from being structural, as far as berth checks it: every level
/// says its type (unless it preserves unknown fields or is int-or-string), and the root is
/// an object.
fn structural_problem(schema: &Value, at: &str, root: bool) -> Option<(String, String)> {
    let kind = schema["type"].as_str();
    if root && kind != Some("object") {
        return Some((
            format!("{at}.type"),
            "Unsupported value: must be object at the root".into(),
        ));
    }
    let free = schema["x-kubernetes-preserve-unknown-fields"] == true
        || schema["x-kubernetes-int-or-string"] == true;
    if kind.is_none()
        && !free
        && (schema.get("properties").is_some() || schema.get("items").is_some())
    {
        return Some((
            format!("{at}.type"),
            "Required value: must not be empty for specified object fields".into(),
        ));
    }
    if let Some(kind) = kind {
        if !matches!(kind, "object" | "array" | "string" | "integer" | "number" | "boolean") {
            return Some((format!("{at}.type"), format!("Unsupported value: {kind:?}")));
        }
        if kind == "array" && !schema["items"].is_object() && !free {
            return Some((format!("{at}.items"), "Required value: must be specified".into()));
        }
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        if regex::Regex::new(pattern).is_err() {
            return Some((
                format!("{at}.pattern"),
                format!("Invalid value: {pattern:?}: must be a valid regular expression"),
            ));
        }
    }
    for (key, child) in schema["properties"].as_object().into_iter().flatten() {
        if let Some(found) = structural_problem(child, &format!("{at}.properties[{key}]"), false) {
            return Some(found);
        }
    }
    if schema["items"].is_object() {
        if let Some(found) = structural_problem(&schema["items"], &format!("{at}.items"), false) {
            return Some(found);
        }
    }
    if schema["additionalProperties"].is_object() {
        return structural_problem(
            &schema["additionalProperties"],
            &format!("{at}.additionalProperties"),
            false,
        );
    }
    None
}

/// What a new definition gets: defaults, the cleanup finalizer, and a status that
/// accepts its names (berth checks them when it validates) and records its stored
/// version.
pub fn prepare_create(definition: &mut Value) {
    default_definition(definition);
    let mut finalizers =
        definition["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
        finalizers.push(json!(CLEANUP_FINALIZER));
    }
    definition["metadata"]["finalizers"] = json!(finalizers);
    definition["status"] = json!({});
    refresh_status(definition);
}

/// An update keeps the status' record of every version ever stored.
pub fn prepare_update(old: &Value, new: &mut Value) {
    default_definition(new);
    new["status"]["storedVersions"] = old["status"]["storedVersions"].clone();
    refresh_status(new);
}

fn default_definition(definition: &mut Value) {
    let names = &mut definition["spec"]["names"];
    if names.is_object() {
        let kind = names["kind"].as_str().unwrap_or("").to_owned();
        if names["singular"].as_str().unwrap_or("").is_empty() {
            names["singular"] = json!(kind.to_lowercase());
        }
        if names["listKind"].as_str().unwrap_or("").is_empty() {
            names["listKind"] = json!(format!("{kind}List"));
        }
    }
    if definition["spec"].is_object() && !definition["spec"]["conversion"].is_object() {
        definition["spec"]["conversion"] = json!({"strategy": "None"});
    }
}

fn refresh_status(definition: &mut Value) {
    let now = crate::objects::now();
    let storage = definition["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == true)
        .and_then(|v| v["name"].as_str())
        .unwrap_or("")
        .to_owned();
    let mut stored: Vec<Value> =
        definition["status"]["storedVersions"].as_array().cloned().unwrap_or_default();
    if !storage.is_empty() && !stored.iter().any(|v| v == storage.as_str()) {
        stored.push(json!(storage));
    }
    let old: Vec<Value> =
        definition["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let since = |kind: &str, status: &str| {
        old.iter()
            .find(|c| c["type"] == kind && c["status"] == status)
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(now))
    };
    let mut conditions = vec![
        json!({"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted", "True")}),
        json!({"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": since("Established", "True")}),
    ];
    if definition["metadata"].get("deletionTimestamp").is_some() {
        conditions.push(json!({"type": "Terminating", "status": "True", "reason": "InstanceDeletionInProgress", "message": "CustomResource deletion is in progress", "lastTransitionTime": since("Terminating", "True")}));
    }
    definition["status"] = json!({
        "acceptedNames": definition["spec"]["names"].clone(),
        "conditions": conditions,
        "storedVersions": stored,
    });
}

/// A definition being deleted: its status says so.
pub fn mark_deleting(definition: &mut Value) {
    refresh_status(definition);
}

// ---------------------------------------------------------------------------------------
// Objects of a custom resource: pruning, defaults, validation.

/// Removes what the schema does not declare (Kubernetes' pruning) and returns the paths
/// removed; `apiVersion`, `kind` and `metadata` stay at the root and in embedded
/// resources. A null where the schema does not allow one is dropped too.
pub fn prune(schema: &Value, object: &mut Value) -> Vec<String> {
    let mut found = Vec::new();
    prune_at(schema, object, "", true, &mut found);
    found
}

fn prune_at(schema: &Value, value: &mut Value, path: &str, root: bool, found: &mut Vec<String>) {
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
    let embedded = root || schema["x-kubernetes-embedded-resource"] == true;
    match value {
        Value::Object(map) => {
            let properties = schema["properties"].as_object();
            let additional =
                schema["additionalProperties"].as_object().map(|_| &schema["additionalProperties"]);
            let allow_any = schema["additionalProperties"] == true;
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_path =
                    if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                if embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = properties.and_then(|p| p.get(&key)).or(additional);
                match sub {
                    Some(sub) => {
                        let nullable = sub["nullable"] == true;
                        if map[&key].is_null() && !nullable {
                            map.remove(&key);
                            continue;
                        }
                        if let Some(child) = map.get_mut(&key) {
                            prune_at(sub, child, &child_path, false, found);
                        }
                    }
                    None if preserve || allow_any => {}
                    None => {
                        map.remove(&key);
                        found.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, item) in items.iter_mut().enumerate() {
                prune_at(&schema["items"], item, &format!("{path}[{i}]"), false, found);
            }
        }
        _ => {}
    }
}

/// Fills `default`s of absent fields (and of nulls where no null is allowed), deepest
/// after their parents, as Kubernetes' structural defaulting does.
pub fn default(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (key, sub) in properties {
                    let Some(default) = sub.get("default") else { continue };
                    let missing = match map.get(key) {
                        None => true,
                        Some(Value::Null) => sub["nullable"] != true,
                        Some(_) => false,
                    };
                    if missing {
                        map.insert(key.clone(), default.clone());
                    }
                }
                for (key, child) in map.iter_mut() {
                    if let Some(sub) = properties.get(key) {
                        default(sub, child);
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for child in map.values_mut() {
                    default(&schema["additionalProperties"], child);
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for item in items.iter_mut() {
                default(&schema["items"], item);
            }
        }
        _ => {}
    }
}

/// One validation problem, as Kubernetes' `field.Error` is: the path, the reason
/// (`FieldValueInvalid`, ...) and the message after the path.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

/// Validates an object (already pruned and defaulted) against its schema. The root's
/// `metadata`, `apiVersion` and `kind` are the API's business, not the schema's.
pub fn validate(schema: &Value, object: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    check(schema, object, "", true, &mut problems);
    problems
}

/// A schema's pattern, compiled once (definitions' patterns are few; the cache is
/// emptied if it ever holds more than a thousand). `None` for a pattern that does not
/// compile (refused when the definition was written).
fn compiled(pattern: &str) -> Option<Arc<regex::Regex>> {
    static CACHE: std::sync::Mutex<BTreeMap<String, Arc<regex::Regex>>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(re) = cache.get(pattern) {
        return Some(re.clone());
    }
    let re = Arc::new(regex::Regex::new(pattern).ok()?);
    if cache.len() >= 1000 {
        cache.clear();
    }
    cache.insert(pattern.to_owned(), re.clone());
    Some(re)
}

/// A value as Go's `%v` of `field.Invalid` shows it: strings quoted, the rest as JSON.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, value: &Value, path: &str, root: bool, out: &mut Vec<Problem>) {
    let invalid = |out: &mut Vec<Problem>, detail: String| {
        out.push(Problem {
            field: path.to_owned(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}: {detail}", shown(value)),
        })
    };
    let at = if path.is_empty() { "body".to_owned() } else { format!("{path} in body") };
    if value.is_null() {
        if schema["nullable"] != true && schema["x-kubernetes-preserve-unknown-fields"] != true {
            if let Some(kind) = schema["type"].as_str() {
                out.push(Problem {
                    field: path.to_owned(),
                    reason: "FieldValueInvalid",
                    message: format!(
                        "Invalid value: \"null\": {at} must be of type {kind}: \"null\""
                    ),
                });
            }
        }
        return;
    }
    let actual = type_name(value);
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    if int_or_string {
        if !matches!(actual, "integer" | "string") {
            out.push(Problem {
                field: path.to_owned(),
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: {:?}: {at} must be of type integer or string: {:?}",
                    actual, actual
                ),
            });
            return;
        }
    } else if let Some(kind) = schema["type"].as_str() {
        let fits = kind == actual || (kind == "number" && actual == "integer");
        if !fits {
            out.push(Problem {
                field: path.to_owned(),
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: {actual:?}: {at} must be of type {kind}: {actual:?}"
                ),
            });
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            let list: Vec<String> = allowed.iter().map(shown).collect();
            out.push(Problem {
                field: path.to_owned(),
                reason: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: {}: supported values: {}",
                    shown(value),
                    list.join(", ")
                ),
            });
        }
    }
    match value {
        Value::String(text) => {
            let chars = text.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64() {
                if chars > max {
                    out.push(Problem {
                        field: path.to_owned(),
                        reason: "FieldValueTooLong",
                        message: format!("Too long: may not be more than {max} bytes"),
                    });
                }
            }
            if let Some(min) = schema["minLength"].as_u64() {
                if chars < min {
                    invalid(out, format!("{at} should be at least {min} chars long"));
                }
            }
            if let Some(pattern) = schema["pattern"].as_str() {
                match compiled(pattern) {
                    Some(re) if !re.is_match(text) => {
                        invalid(out, format!("{at} should match '{pattern}'"))
                    }
                    _ => {}
                }
            }
        }
        Value::Number(number) => {
            let n = number.as_f64().unwrap_or(0.0);
            let bound = |key: &str| schema[key].as_f64();
            let show =
                |f: f64| if f.fract() == 0.0 { format!("{}", f as i64) } else { f.to_string() };
            if let Some(max) = bound("maximum") {
                if schema["exclusiveMaximum"] == true && n >= max {
                    invalid(out, format!("{at} should be less than {}", show(max)));
                } else if n > max {
                    invalid(out, format!("{at} should be less than or equal to {}", show(max)));
                }
            }
            if let Some(min) = bound("minimum") {
                if schema["exclusiveMinimum"] == true && n <= min {
                    invalid(out, format!("{at} should be greater than {}", show(min)));
                } else if n < min {
                    invalid(out, format!("{at} should be greater than or equal to {}", show(min)));
                }
            }
            if let Some(step) = bound("multipleOf").filter(|s| *s > 0.0) {
                if (n / step).fract().abs() > 1e-9 {
                    invalid(out, format!("{at} should be a multiple of {}", show(step)));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64() {
                if items.len() as u64 > max {
                    out.push(Problem {
                        field: path.to_owned(),
                        reason: "FieldValueTooMany",
                        message: format!(
                            "Too many: {}: must have at most {max} items",
                            items.len()
                        ),
                    });
                }
            }
            if let Some(min) = schema["minItems"].as_u64() {
                if (items.len() as u64) < min {
                    invalid(out, format!("{at} should have at least {min} items"));
                }
            }
            match schema["x-kubernetes-list-type"].as_str() {
                Some("set") => {
                    // serde_json writes maps in one order: equal values, equal text.
                    let mut seen = std::collections::HashSet::new();
                    for (i, item) in items.iter().enumerate() {
                        if !seen.insert(item.to_string()) {
                            out.push(Problem {
                                field: format!("{path}[{i}]"),
                                reason: "FieldValueDuplicate",
                                message: format!("Duplicate value: {}", shown(item)),
                            });
                        }
                    }
                }
                Some("map") => {
                    let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let key_of = |item: &Value| -> Value {
                        Value::Object(
                            keys.iter().map(|k| ((*k).to_owned(), item[*k].clone())).collect(),
                        )
                    };
                    let mut seen = std::collections::HashSet::new();
                    for (i, item) in items.iter().enumerate() {
                        let key = key_of(item);
                        if !seen.insert(key.to_string()) {
                            out.push(Problem {
                                field: format!("{path}[{i}]"),
                                reason: "FieldValueDuplicate",
                                message: format!("Duplicate value: {key}"),
                            });
                        }
                    }
                }
                _ => {}
            }
            if schema["items"].is_object() {
                for (i, item) in items.iter().enumerate() {
                    check(&schema["items"], item, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        Value::Object(map) => {
            for required in
                schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str)
            {
                if !map.contains_key(required) {
                    out.push(Problem {
                        field: if path.is_empty() {
                            required.to_owned()
                        } else {
                            format!("{path}.{required}")
                        },
                        reason: "FieldValueRequired",
                        message: "Required value".into(),
                    });
                }
            }
            if let Some(max) = schema["maxProperties"].as_u64() {
                if map.len() as u64 > max {
                    out.push(Problem {
                        field: path.to_owned(),
                        reason: "FieldValueTooMany",
                        message: format!("Too many: {}: must have at most {max} items", map.len()),
                    });
                }
            }
            if let Some(min) = schema["minProperties"].as_u64() {
                if (map.len() as u64) < min {
                    invalid(out, format!("{at} should have at least {min} properties"));
                }
            }
            let properties = schema["properties"].as_object();
            for (key, child) in map {
                if (root || schema["x-kubernetes-embedded-resource"] == true)
                    && matches!(key.as_str(), "metadata" | "apiVersion" | "kind")
                {
                    continue;
                }
                let child_path =
                    if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                if let Some(sub) = properties.and_then(|p| p.get(key)) {
                    check(sub, child, &child_path, false, out);
                } else if schema["additionalProperties"].is_object() {
                    check(&schema["additionalProperties"], child, &child_path, false, out);
                }
            }
        }
        _ => {}
    }
    // The logic keywords constrain values only (structural schemas keep types out of them).
    let passes = |sub: &Value| {
        let mut inner = Vec::new();
        check(sub, value, path, root, &mut inner);
        inner.is_empty()
    };
    if let Some(all) = schema["allOf"].as_array() {
        for sub in all {
            check(sub, value, path, root, out);
        }
    }
    if let Some(any) = schema["anyOf"].as_array() {
        if !any.iter().any(passes) {
            invalid(out, format!("{at} must validate at least one schema (anyOf)"));
        }
    }
    if let Some(one) = schema["oneOf"].as_array() {
        if one.iter().filter(|s| passes(s)).count() != 1 {
            invalid(out, format!("{at} must validate one and only one schema (oneOf)"));
        }
    }
    if schema["not"].is_object() && passes(&schema["not"]) {
        invalid(out, format!("{at} must not validate the schema (not)"));
    }
}

// ---------------------------------------------------------------------------------------
// Reading fields: printer columns and the scale subresource's paths.

/// The values a JSONPath of printer columns names: `.spec.a.b`, `.items[0]`, `[*]`,
/// `[?(@.type=="Ready")]` and `\.` in keys.
pub fn json_path<'a>(object: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}').trim();
    let mut current: Vec<&Value> = vec![object];
    let mut rest = path.strip_prefix('$').unwrap_or(path);
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let mut key = String::new();
            let mut chars = after.char_indices().peekable();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            key.push(next);
                        }
                    }
                    '.' | '[' => {
                        end = i;
                        break;
                    }
                    c => key.push(c),
                }
            }
            rest = &after[end..];
            if key.is_empty() {
                continue;
            }
            current = current.into_iter().filter_map(|v| v.get(&key)).collect();
        } else if let Some(after) = rest.strip_prefix('[') {
            let Some(close) = after.find(']') else { return Vec::new() };
            let inside = &after[..close];
            rest = &after[close + 1..];
            if inside == "*" {
                current = current
                    .into_iter()
                    .flat_map(|v| match v {
                        Value::Array(items) => items.iter().collect::<Vec<_>>(),
                        Value::Object(map) => map.values().collect(),
                        _ => Vec::new(),
                    })
                    .collect();
            } else if let Ok(index) = inside.parse::<i64>() {
                current = current
                    .into_iter()
                    .filter_map(|v| {
                        let items = v.as_array()?;
                        let i = if index < 0 { items.len() as i64 + index } else { index };
                        items.get(usize::try_from(i).ok()?)
                    })
                    .collect();
            } else if let Some(filter) = inside.strip_prefix("?(").and_then(|f| f.strip_suffix(')'))
            {
                let (left, right) = match filter.split_once("==") {
                    Some(pair) => pair,
                    None => return Vec::new(),
                };
                let field = left.trim().trim_start_matches('@');
                let wanted = right.trim().trim_matches('"').trim_matches('\'');
                current = current
                    .into_iter()
                    .flat_map(|v| {
                        v.as_array().map(|a| a.iter().collect::<Vec<_>>()).unwrap_or_default()
                    })
                    .filter(|item| {
                        json_path(item, field).first().is_some_and(|found| match found {
                            Value::String(s) => s == wanted,
                            other => {
                                serde_json::from_str::<Value>(wanted).ok().as_ref() == Some(*other)
                            }
                        })
                    })
                    .collect();
            } else {
                let key = inside.trim_matches('\'').trim_matches('"');
                current = current.into_iter().filter_map(|v| v.get(key)).collect();
            }
        } else {
            return Vec::new();
        }
    }
    current
}

/// Sets the value at a simple dotted path (`.spec.replicas`), making objects on the way.
pub fn set_path(object: &mut Value, path: &str, value: Value) {
    let mut target = object;
    let keys: Vec<&str> =
        path.trim_start_matches('.').split('.').filter(|k| !k.is_empty()).collect();
    for key in &keys {
        if !target.is_object() {
            *target = json!({});
        }
        target = &mut target[*key];
    }
    *target = value;
}

/// The `Table` of custom objects: Name, then the printer columns (an Age column of
/// `metadata.creationTimestamp` when the version declares none).
pub fn table(version: &Version, items: &[Value], revision: i64, include_object: bool) -> Value {
    let columns = if version.columns.is_empty() {
        vec![Column {
            name: "Age".into(),
            kind: "date".into(),
            format: String::new(),
            description: "Custom resource definition column (in JSONPath format): .metadata.creationTimestamp".into(),
            priority: 0,
            json_path: ".metadata.creationTimestamp".into(),
        }]
    } else {
        version.columns.clone()
    };
    let mut definitions = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    definitions.extend(columns.iter().map(|c| {
        json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    let cells = |item: &Value| {
        let mut cells = vec![item["metadata"]["name"].clone()];
        for column in &columns {
            let found = json_path(item, &column.json_path).into_iter().next().cloned();
            cells.push(match (column.kind.as_str(), found) {
                (_, None) => Value::Null,
                ("date", Some(Value::String(time))) => json!(crate::objects::age(&time)),
                ("integer", Some(v)) if v.is_number() => json!(v.as_f64().unwrap_or(0.0) as i64),
                (_, Some(Value::String(s))) => json!(s),
                ("string", Some(v)) => json!(v.to_string()),
                (_, Some(v)) => v,
            });
        }
        cells
    };
    crate::objects::table_of(definitions, items, cells, revision, include_object)
}

/// An object (or a list, or a watch event's object) of a custom kind, in `version`:
/// with `strategy: None` only `apiVersion` changes.
pub fn convert(group: &str, version: &str, kind: &str, mut value: Value) -> Value {
    let api_version = json!(format!("{group}/{version}"));
    if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
        for item in items.iter_mut().filter(|i| i["kind"] == kind) {
            item["apiVersion"] = api_version.clone();
        }
        return value;
    }
    if value["kind"] == kind {
        value["apiVersion"] = api_version;
    }
    value
}

/// Whether a group and kind are custom.
pub fn is_custom(group: &str, kind: &str) -> bool {
    !group.is_empty() && by_group_kind(group, kind).is_some()
}

/// The OpenAPI v3 components of a custom group-version: each kind's schema (with
/// `apiVersion`, `kind`, `metadata` and the group-version-kind extension, so `kubectl
/// explain` finds it) and its list; `None` when no custom resource is served there.
pub fn openapi_components(group: &str, version: &str) -> Option<Map<String, Value>> {
    let versions: Vec<Arc<Version>> =
        versions().values().filter(|v| v.group == group && v.version == version).cloned().collect();
    if versions.is_empty() {
        return None;
    }
    let reversed: Vec<&str> = group.split('.').rev().collect();
    let prefix = format!("{}.{version}", reversed.join("."));
    let mut components = crate::schema::components_named(&[
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
    ]);
    let meta_ref =
        json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"});
    for v in versions {
        let mut schema = v.schema.clone();
        let gvk = json!([{"group": group, "version": version, "kind": v.kind}]);
        if let Some(map) = schema.as_object_mut() {
            let properties = map.entry("properties").or_insert_with(|| json!({}));
            properties["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
            properties["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
            properties["metadata"] =
                json!({"allOf": [meta_ref], "description": "Standard object's metadata."});
            map.insert("x-kubernetes-group-version-kind".into(), gvk);
        }
        let name = format!("{prefix}.{}", v.kind);
        components.insert(
            format!("{name}List"),
            json!({"type": "object", "required": ["items"],
                "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                    "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}},
                    "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"}]}},
                "x-kubernetes-group-version-kind": [{"group": group, "version": version, "kind": format!("{}List", v.kind)}]}),
        );
        components.insert(name, schema);
    }
    Some(components)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["cronSpec"], "properties": {
                "cronSpec": {"type": "string", "pattern": "^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$"},
                "image": {"type": "string", "maxLength": 20},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "port": {"x-kubernetes-int-or-string": true},
                "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set", "maxItems": 3},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "nested": {"type": "object", "default": {}, "properties": {"depth": {"type": "integer", "default": 2}}}
            }},
            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}
        }})
    }

    #[test]
    fn pruning_keeps_what_the_schema_declares() {
        let mut object = json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab",
            "metadata": {"name": "a"}, "extra": 1,
            "spec": {"cronSpec": "* * * * */5", "unknown": true, "free": {"anything": [1]},
                "labels": {"x": "y"}, "image": null}});
        let removed = prune(&schema(), &mut object);
        assert_eq!(removed, vec!["extra".to_owned(), "spec.unknown".to_owned()]);
        assert_eq!(object["spec"]["free"]["anything"], json!([1]));
        assert_eq!(object["metadata"]["name"], "a");
        assert!(object["spec"].get("image").is_none(), "a null that is not nullable goes");
    }

    #[test]
    fn defaults_fill_absent_fields_depth_first() {
        let mut object = json!({"spec": {"cronSpec": "* * * * *"}});
        default(&schema(), &mut object);
        assert_eq!(object["spec"]["replicas"], 1);
        assert_eq!(object["spec"]["nested"], json!({"depth": 2}));
        let mut kept = json!({"spec": {"replicas": 5}});
        default(&schema(), &mut kept);
        assert_eq!(kept["spec"]["replicas"], 5);
    }

    #[test]
    fn validation_speaks_as_kubernetes_does() {
        let messages = |object: Value| -> Vec<String> {
            validate(&schema(), &object)
                .into_iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect()
        };
        assert!(messages(json!({"spec": {"cronSpec": "* * * * */5", "replicas": 3, "port": "http", "tags": ["a"]}})).is_empty());
        assert_eq!(messages(json!({"spec": {}})), ["spec.cronSpec: Required value"]);
        assert_eq!(
            messages(json!({"spec": {"cronSpec": "* * * * */5", "replicas": 15}})),
            ["spec.replicas: Invalid value: 15: spec.replicas in body should be less than or equal to 10"]
        );
        assert_eq!(
            messages(json!({"spec": {"cronSpec": "* * * * */5", "replicas": "two"}})),
            ["spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""]
        );
        assert_eq!(
            messages(json!({"spec": {"cronSpec": "* * * *"}})),
            ["spec.cronSpec: Invalid value: \"* * * *\": spec.cronSpec in body should match '^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$'"]
        );
        assert_eq!(
            messages(json!({"spec": {"cronSpec": "* * * * *", "mode": "c"}})),
            ["spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\""]
        );
        assert_eq!(
            messages(json!({"spec": {"cronSpec": "* * * * *", "tags": ["a", "a"]}})),
            ["spec.tags[1]: Duplicate value: \"a\""]
        );
        assert_eq!(
            messages(json!({"spec": {"cronSpec": "* * * * *", "port": true}})),
            ["spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer or string: \"boolean\""]
        );
        assert_eq!(
            messages(json!({"spec": {"cronSpec": "* * * * *", "labels": {"a": 1}}})).len(),
            1
        );
        assert_eq!(
            messages(json!({"spec": {"cronSpec": "* * * * *", "image": "x".repeat(21)}})),
            ["spec.image: Too long: may not be more than 20 bytes"]
        );
    }

    #[test]
    fn json_paths_of_printer_columns() {
        let object = json!({"spec": {"a.b": 1, "list": [{"n": 1}, {"n": 2}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}]}});
        assert_eq!(json_path(&object, ".spec.a\\.b"), [&json!(1)]);
        assert_eq!(json_path(&object, ".spec.list[1].n"), [&json!(2)]);
        assert_eq!(json_path(&object, ".spec.list[*].n"), [&json!(1), &json!(2)]);
        assert_eq!(
            json_path(&object, ".status.conditions[?(@.type==\"Synced\")].status"),
            [&json!("False")]
        );
        assert!(json_path(&object, ".spec.missing").is_empty());
        let mut scaled = json!({});
        set_path(&mut scaled, ".spec.replicas", json!(3));
        assert_eq!(scaled, json!({"spec": {"replicas": 3}}));
    }

    #[test]
    fn definitions_are_checked_and_served() {
        let mut crd = json!({"metadata": {"name": "crontabs.stable.example.com"},
        "spec": {"group": "stable.example.com", "scope": "Namespaced",
            "names": {"plural": "crontabs", "kind": "CronTab", "shortNames": ["ct"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema()},
                 "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                 "additionalPrinterColumns": [{"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"}]},
                {"name": "v1beta1", "served": true, "storage": false, "deprecated": true, "schema": {"openAPIV3Schema": schema()}},
                {"name": "v0", "served": false, "storage": false, "schema": {"openAPIV3Schema": schema()}}
            ]}});
        validate_definition(&crd).unwrap();
        prepare_create(&mut crd);
        assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
        assert_eq!(crd["spec"]["names"]["listKind"], "CronTabList");
        assert_eq!(crd["metadata"]["finalizers"], json!([CLEANUP_FINALIZER]));
        let served = served(&crd);
        assert_eq!(served.len(), 2);
        assert!(served[0].0.status && served[0].0.scale);
        assert_eq!(
            served[1].1.deprecation.as_deref(),
            Some("stable.example.com/v1beta1 CronTab is deprecated")
        );
        let mut bad = crd.clone();
        bad["metadata"]["name"] = json!("other.stable.example.com");
        assert_eq!(validate_definition(&bad).unwrap_err().0, "metadata.name");
        let mut two = crd.clone();
        two["spec"]["versions"][1]["storage"] = json!(true);
        assert_eq!(validate_definition(&two).unwrap_err().0, "spec.versions");
        let mut untyped = crd.clone();
        untyped["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
            json!({"properties": {"a": {"type": "string"}}});
        assert!(validate_definition(&untyped).unwrap_err().0.ends_with("properties[spec].type"));
    }
}
