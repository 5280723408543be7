//! The three patch types of `PATCH`: JSON patch (RFC 6902), JSON merge patch (RFC 7386)
//! and strategic merge patch, which merges lists of objects by their merge key (containers
//! by name, ports by containerPort, ...) and understands the `$patch`, `$retainKeys`,
//! `$setElementOrder` and `$deleteFromPrimitiveList` directives.

use serde_json::{Map, Value};

/// The merge key of the lists strategic merge patch merges element by element; other
/// lists are replaced whole.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "volumeMounts"
        | "imagePullSecrets"
        | "secrets"
        | "hostAliases"
        | "resourceClaims" => match field {
            "volumeMounts" => "mountPath",
            "hostAliases" => "ip",
            _ => "name",
        },
        "ports" => "containerPort",
        "conditions" => "type",
        "tolerations" | "topologySpreadConstraints" => return None,
        "ownerReferences" => "uid",
        "envFrom" => return None,
        _ => return None,
    })
}

/// RFC 7386: objects merge, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(changes) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in changes {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn pointer_tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("invalid JSON pointer {path:?}"));
    };
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn parent_mut<'a>(root: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut current = root;
    for token in &tokens[..tokens.len().saturating_sub(1)] {
        current = match current {
            Value::Object(map) => {
                map.get_mut(token).ok_or_else(|| format!("path element {token:?} not found"))?
            }
            Value::Array(list) => {
                let index: usize =
                    token.parse().map_err(|_| format!("{token:?} is not an array index"))?;
                list.get_mut(index).ok_or_else(|| format!("index {index} out of range"))?
            }
            _ => return Err(format!("cannot descend into {token:?}")),
        };
    }
    Ok(current)
}

fn add(root: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let tokens = pointer_tokens(path)?;
    let Some(last) = tokens.last().cloned() else {
        *root = value;
        return Ok(());
    };
    match parent_mut(root, &tokens)? {
        Value::Object(map) => {
            map.insert(last, value);
        }
        Value::Array(list) => {
            let index = if last == "-" {
                list.len()
            } else {
                last.parse().map_err(|_| format!("{last:?} is not an index"))?
            };
            if index > list.len() {
                return Err(format!("index {index} out of range"));
            }
            list.insert(index, value);
        }
        _ => return Err(format!("cannot add at {path:?}")),
    }
    Ok(())
}

fn remove(root: &mut Value, path: &str) -> Result<Value, String> {
    let tokens = pointer_tokens(path)?;
    let Some(last) = tokens.last().cloned() else {
        return Err("cannot remove the whole document".into());
    };
    match parent_mut(root, &tokens)? {
        Value::Object(map) => map.remove(&last).ok_or_else(|| format!("{path:?} does not exist")),
        Value::Array(list) => {
            let index: usize = last.parse().map_err(|_| format!("{last:?} is not an index"))?;
            if index >= list.len() {
                return Err(format!("index {index} out of range"));
            }
            Ok(list.remove(index))
        }
        _ => Err(format!("cannot remove {path:?}")),
    }
}

/// RFC 6902, applied all or nothing.
pub fn json_patch(target: &Value, operations: &Value) -> Result<Value, String> {
    let Some(operations) = operations.as_array() else {
        return Err("a JSON patch is an array of operations".into());
    };
    let mut doc = target.clone();
    for op in operations {
        let path = op["path"].as_str().ok_or("an operation needs a path")?;
        match op["op"].as_str().unwrap_or("") {
            "add" => add(&mut doc, path, op.get("value").cloned().ok_or("add needs a value")?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, op.get("value").cloned().ok_or("replace needs a value")?)?;
            }
            "move" => {
                let from = op["from"].as_str().ok_or("move needs from")?;
                let value = remove(&mut doc, from)?;
                add(&mut doc, path, value)?;
            }
            "copy" => {
                let from = op["from"].as_str().ok_or("copy needs from")?;
                let value =
                    doc.pointer(from).cloned().ok_or_else(|| format!("{from:?} does not exist"))?;
                add(&mut doc, path, value)?;
            }
            "test" => {
                if doc.pointer(path) != op.get("value") {
                    return Err(format!("test failed at {path:?}"));
                }
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
    }
    Ok(doc)
}

/// Strategic merge patch.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if changes.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = changes.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    let mut retain: Option<Vec<String>> = None;
    for (key, value) in changes {
        if key == "$retainKeys" {
            retain = value
                .as_array()
                .map(|l| l.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect());
            continue;
        }
        if key.starts_with("$setElementOrder/") || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(gone)) = (map.get_mut(field), value.as_array()) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if value.is_null() {
            map.remove(key);
            continue;
        }
        match (merge_key(key), value) {
            (Some(merge_key), Value::Array(items)) if items.iter().all(Value::is_object) => {
                let current = map.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
                if !current.is_array() {
                    *current = Value::Array(Vec::new());
                }
                if let Value::Array(list) = current {
                    for item in items {
                        let id = item.get(merge_key);
                        let position =
                            list.iter().position(|e| id.is_some() && e.get(merge_key) == id);
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        match (position, delete) {
                            (Some(at), true) => {
                                list.remove(at);
                            }
                            (None, true) => {}
                            (Some(at), false) => strategic_merge(&mut list[at], item),
                            (None, false) => {
                                let mut fresh = Value::Null;
                                strategic_merge(&mut fresh, item);
                                list.push(fresh);
                            }
                        }
                    }
                }
            }
            (_, Value::Object(_)) => {
                strategic_merge(map.entry(key.clone()).or_insert(Value::Null), value)
            }
            _ => {
                map.insert(key.clone(), value.clone());
            }
        }
    }
    if let Some(keep) = retain {
        map.retain(|k, _| keep.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patches() {
        let mut doc = json!({"a": 1, "b": {"c": 2, "d": 3}, "list": [1, 2]});
        merge_patch(&mut doc, &json!({"a": null, "b": {"c": 5}, "list": [3], "new": "x"}));
        assert_eq!(doc, json!({"b": {"c": 5, "d": 3}, "list": [3], "new": "x"}));
    }

    #[test]
    fn json_patches() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2, 3]});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "remove", "path": "/list/0"},
                {"op": "replace", "path": "/metadata/labels/a", "value": "9"},
                {"op": "add", "path": "/list/-", "value": 4},
                {"op": "test", "path": "/list/0", "value": 2},
                {"op": "copy", "from": "/list", "path": "/copy"},
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"a": "9", "b/c": "2"}}, "list": [2, 3, 4], "copy": [2, 3, 4]})
        );
        assert!(json_patch(&doc, &json!([{"op": "test", "path": "/list/0", "value": 7}])).is_err());
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&doc, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn strategic_merges_by_key_with_directives() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}], "args": ["x"]},
            {"name": "sidecar", "image": "side:1"}
        ], "finalizers": ["a", "b"]}});
        strategic_merge(
            &mut pod,
            &json!({"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [
                    {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}], "args": ["y"]},
                    {"name": "sidecar", "$patch": "delete"},
                    {"name": "new", "image": "new:1"}
                ],
                "$deleteFromPrimitiveList/finalizers": ["a"]
            }}),
        );
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
            {"name": "app", "image": "app:2", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "args": ["y"]},
            {"name": "new", "image": "new:1"}
        ], "finalizers": ["b"]}})
        );
        let mut strategy =
            json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}});
        strategic_merge(
            &mut strategy,
            &json!({"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}),
        );
        assert_eq!(strategy, json!({"strategy": {"type": "Recreate"}}));
        let mut labels = json!({"metadata": {"labels": {"a": "1"}}});
        strategic_merge(
            &mut labels,
            &json!({"metadata": {"labels": {"$patch": "replace", "b": "2"}}}),
        );
        assert_eq!(labels, json!({"metadata": {"labels": {"b": "2"}}}));
    }
}
