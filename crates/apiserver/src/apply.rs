//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Every write records which manager set which fields (`FieldsV1`: `f:` for a field,
//! `k:{...}` for a list element by its merge key). An apply sets the fields of its
//! configuration, removes the fields it applied before and no longer does, and refuses to
//! change a field another manager owns unless forced.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

/// A field path: steps of `f:name` or `k:{"name":"web"}`.
pub type Path = Vec<String>;

/// Lists merged by key (as strategic merge patch merges them); other lists are atomic.
fn list_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "ports" => "containerPort",
        _ => return None,
    })
}

/// Metadata the server owns: never in anyone's field set.
fn server_owned(path: &[String]) -> bool {
    matches!(path.first().map(String::as_str), Some("f:apiVersion" | "f:kind" | "f:status"))
        || (path.first().map(String::as_str) == Some("f:metadata")
            && !matches!(
                path.get(1).map(String::as_str),
                Some("f:labels" | "f:annotations" | "f:finalizers")
            ))
}

/// The leaf fields an object (or applied configuration) sets.
pub fn fields(object: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    walk(object, &mut Vec::new(), &mut out);
    out.retain(|p| !server_owned(p));
    out
}

fn walk(value: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                at.push(format!("f:{k}"));
                match (v, list_key(k)) {
                    (Value::Array(items), Some(key))
                        if items.iter().all(|i| i.get(key).is_some()) =>
                    {
                        for item in items {
                            at.push(format!("k:{}", json!({key: item[key]})));
                            walk(item, at, out);
                            at.pop();
                        }
                    }
                    _ => walk(v, at, out),
                }
                at.pop();
            }
        }
        _ => {
            out.insert(at.clone());
        }
    }
}

/// The value at a path, if any.
pub fn get<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut current = object;
    for step in path {
        current = if let Some(name) = step.strip_prefix("f:") {
            current.get(name)?
        } else {
            let key: Value = serde_json::from_str(step.strip_prefix("k:")?).ok()?;
            let (k, v) = key.as_object()?.iter().next()?;
            current.as_array()?.iter().find(|item| item.get(k) == Some(v))?
        };
    }
    Some(current)
}

/// Removes the value at a path (and a list element left empty of anything but its key).
pub fn remove(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut current = object;
    for step in parents {
        let next = if let Some(name) = step.strip_prefix("f:") {
            current.get_mut(name)
        } else {
            let Some(key) =
                step.strip_prefix("k:").and_then(|k| serde_json::from_str::<Value>(k).ok())
            else {
                return;
            };
            let Some((k, v)) =
                key.as_object().and_then(|o| o.iter().next()).map(|(k, v)| (k.clone(), v.clone()))
            else {
                return;
            };
            current
                .as_array_mut()
                .and_then(|items| items.iter_mut().find(|item| item.get(&k) == Some(&v)))
        };
        let Some(next) = next else { return };
        current = next;
    }
    if let Some(name) = last.strip_prefix("f:") {
        if let Some(map) = current.as_object_mut() {
            map.remove(name);
        }
    } else if let Some(key) =
        last.strip_prefix("k:").and_then(|k| serde_json::from_str::<Value>(k).ok())
    {
        if let (Some((k, v)), Some(items)) =
            (key.as_object().and_then(|o| o.iter().next()), current.as_array_mut())
        {
            items.retain(|item| item.get(k) != Some(v));
        }
    }
}

/// `FieldsV1` JSON from a set of paths.
pub fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for step in path {
            let entry = node.entry(step.clone()).or_insert_with(|| json!({}));
            let Some(next) = entry.as_object_mut() else { break };
            node = next;
        }
    }
    Value::Object(root)
}

/// The leaf paths of a `FieldsV1` document.
pub fn from_fields_v1(fields: &Value) -> BTreeSet<Path> {
    fn go(value: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
        match value.as_object() {
            Some(map) if !map.is_empty() => {
                for (k, v) in map {
                    if k == "." {
                        continue;
                    }
                    at.push(k.clone());
                    go(v, at, out);
                    at.pop();
                }
            }
            _ => {
                out.insert(at.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    go(fields, &mut Vec::new(), &mut out);
    out
}

/// `.data.a`, `.spec.containers[name="web"].image`: how conflicts are reported.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for step in path {
        if let Some(name) = step.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(key) =
            step.strip_prefix("k:").and_then(|k| serde_json::from_str::<Value>(k).ok())
        {
            if let Some((k, v)) = key.as_object().and_then(|o| o.iter().next()) {
                out.push_str(&format!("[{k}={v}]"));
            }
        }
    }
    out
}

/// The managers of an object: (manager, operation, fields).
pub fn managers(object: &Value) -> Vec<(String, String, BTreeSet<Path>)> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or("").to_owned(),
                e["operation"].as_str().unwrap_or("Update").to_owned(),
                from_fields_v1(&e["fieldsV1"]),
            )
        })
        .collect()
}

/// Writes the managers back into `metadata.managedFields`, dropping empty ones.
pub fn set_managers(
    object: &mut Value,
    managers: &[(String, String, BTreeSet<Path>)],
    api_version: &str,
) {
    let entries: Vec<Value> = managers
        .iter()
        .filter(|(_, _, f)| !f.is_empty())
        .map(|(manager, operation, f)| {
            json!({"manager": manager, "operation": operation, "apiVersion": api_version,
                   "time": crate::objects::now(), "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(f)})
        })
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// Records an `Update` by `manager`: it owns the fields whose values it set or changed
/// (all of them on create), which leave their other owners.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, api_version: &str) {
    let mut owners = old.map(managers).unwrap_or_default();
    let changed: BTreeSet<Path> =
        fields(new).into_iter().filter(|p| old.is_none_or(|o| get(o, p) != get(new, p))).collect();
    if changed.is_empty() {
        set_managers(new, &owners, api_version);
        return;
    }
    for (_, _, owned) in owners.iter_mut() {
        owned.retain(|p| !changed.contains(p));
    }
    match owners.iter_mut().find(|(m, op, _)| m == manager && op == "Update") {
        Some((_, _, owned)) => owned.extend(changed),
        None => owners.push((manager.to_owned(), "Update".into(), changed)),
    }
    set_managers(new, &owners, api_version);
}

/// A field someone else owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

/// Server-side apply of `config` by `manager` onto `live` (None: the object is new).
/// Returns the merged object with its managed fields, or the conflicts.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
) -> Result<Value, Vec<Conflict>> {
    let applied = fields(config);
    let mut owners = live.map(managers).unwrap_or_default();
    let mut merged = live.cloned().unwrap_or_else(|| json!({}));
    if let Some(live) = live {
        let mut conflicts = Vec::new();
        for path in &applied {
            if get(live, path) == get(config, path) {
                continue;
            }
            for (other, _, owned) in &owners {
                if other != manager && owned.contains(path) {
                    conflicts.push(Conflict { manager: other.clone(), field: display(path) });
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(conflicts);
        }
        // Fields this manager applied before and no longer does go, unless others own them.
        let before: BTreeSet<Path> = owners
            .iter()
            .filter(|(m, op, _)| m == manager && op == "Apply")
            .flat_map(|(_, _, f)| f.iter().cloned())
            .collect();
        for path in before.difference(&applied) {
            let shared = owners
                .iter()
                .any(|(m, op, f)| !(m == manager && op == "Apply") && f.contains(path));
            if !shared {
                remove(&mut merged, path);
            }
        }
        if force {
            for (other, _, owned) in owners.iter_mut() {
                if other != manager {
                    owned.retain(|p| !applied.contains(p) || get(live, p) == get(config, p));
                }
            }
        }
    }
    crate::patch::strategic_merge(&mut merged, config);
    owners.retain(|(m, op, _)| !(m == manager && op == "Apply"));
    owners.push((manager.to_owned(), "Apply".into(), applied));
    set_managers(&mut merged, &owners, api_version);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_through_fields_v1() {
        let object = json!({"apiVersion": "apps/v1", "metadata": {"name": "web", "labels": {"app": "web"}, "uid": "x"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "a"}]}}}});
        let set = fields(&object);
        let shown: Vec<String> = set.iter().map(|p| display(p)).collect();
        assert_eq!(
            shown,
            [
                ".metadata.labels.app",
                ".spec.replicas",
                ".spec.template.spec.containers[name=\"web\"].image",
                ".spec.template.spec.containers[name=\"web\"].name"
            ]
        );
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
        let mut copy = object.clone();
        remove(&mut copy, &set.iter().find(|p| display(p).ends_with("image")).unwrap().clone());
        assert!(copy["spec"]["template"]["spec"]["containers"][0].get("image").is_none());
    }

    #[test]
    fn apply_owns_removes_and_conflicts() {
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        let created = apply(None, &first, "alice", false, "v1").unwrap();
        assert_eq!(created["data"], json!({"a": "1", "b": "2"}));
        assert_eq!(created["metadata"]["managedFields"][0]["manager"], "alice");
        // alice drops b: it goes.
        let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
        let updated = apply(Some(&created), &second, "alice", false, "v1").unwrap();
        assert_eq!(updated["data"], json!({"a": "1"}));
        // bob changes a, which alice owns: a conflict, unless forced.
        let bob = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "9"}});
        let conflicts = apply(Some(&updated), &bob, "bob", false, "v1").unwrap_err();
        assert_eq!(conflicts, [Conflict { manager: "alice".into(), field: ".data.a".into() }]);
        let forced = apply(Some(&updated), &bob, "bob", true, "v1").unwrap();
        assert_eq!(forced["data"]["a"], "9");
        let owners = managers(&forced);
        assert!(owners.iter().all(|(m, _, f)| m == "bob"
            || f.is_empty()
            || !f.iter().any(|p| display(p) == ".data.a")));
        // Agreeing on a value is no conflict: both own it.
        let same = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "9"}});
        apply(Some(&forced), &same, "carol", false, "v1").unwrap();
        // An Update takes over what it changes.
        let mut edited = forced.clone();
        edited["data"]["a"] = json!("10");
        record_update(Some(&forced), &mut edited, "kubectl-edit", "v1");
        let owners = managers(&edited);
        let edit = owners.iter().find(|(m, _, _)| m == "kubectl-edit").unwrap();
        assert!(edit.2.iter().any(|p| display(p) == ".data.a"));
    }
}
