//! JSON as kube-apiserver writes it: an object's keys in its Go type's order where
//! clients see it most (`kind`, `apiVersion`, `metadata`, the body, `status` last;
//! `metadata` in ObjectMeta's order; a `Status` in its own), each list item the same, and
//! a newline at the end of the body. Deeper levels keep serde_json's (alphabetical) order:
//! JSON readers do not care, and the shapes a person reads match.

use serde_json::{Map, Value};

const METADATA: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

const STATUS: &[&str] =
    &["kind", "apiVersion", "metadata", "status", "message", "reason", "details", "code"];

/// The bytes of a response body.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_top(&mut out, value);
    out.push(b'\n');
    out
}

fn write_top(out: &mut Vec<u8>, value: &Value) {
    let Value::Object(map) = value else {
        write_plain(out, value);
        return;
    };
    let order: &[&str] = if map.get("kind").and_then(Value::as_str) == Some("Status") {
        STATUS
    } else if map.contains_key("type") && map.contains_key("object") {
        &["type", "object"] // a watch event
    } else {
        &["kind", "apiVersion", "metadata"]
    };
    let mut keys: Vec<&String> = Vec::with_capacity(map.len());
    keys.extend(order.iter().filter_map(|k| map.get_key_value(*k).map(|(k, _)| k)));
    // The body in serde_json's order, `spec` first and `status` last.
    let rest = |k: &&String| !order.contains(&k.as_str());
    keys.extend(map.keys().filter(rest).filter(|k| *k == "spec"));
    keys.extend(map.keys().filter(rest).filter(|k| *k != "spec" && *k != "status"));
    keys.extend(map.keys().filter(rest).filter(|k| *k == "status"));
    write_keys(out, map, &keys, |out, key, value| match (key, value) {
        ("metadata", Value::Object(meta)) => {
            let mut keys: Vec<&String> =
                METADATA.iter().filter_map(|k| meta.get_key_value(*k).map(|(k, _)| k)).collect();
            keys.extend(meta.keys().filter(|k| !METADATA.contains(&k.as_str())));
            write_keys(out, meta, &keys, |out, _, value| write_plain(out, value));
        }
        ("items", Value::Array(items)) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_top(out, item);
            }
            out.push(b']');
        }
        ("object", object @ Value::Object(_)) => write_top(out, object),
        (_, value) => write_plain(out, value),
    });
}

fn write_keys(
    out: &mut Vec<u8>,
    map: &Map<String, Value>,
    keys: &[&String],
    value_writer: impl Fn(&mut Vec<u8>, &str, &Value),
) {
    out.push(b'{');
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_plain(out, &Value::String((*key).clone()));
        out.push(b':');
        if let Some(value) = map.get(key.as_str()) {
            value_writer(out, key, value);
        }
    }
    out.push(b'}');
}

fn write_plain(out: &mut Vec<u8>, value: &Value) {
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubernetes_order_and_a_final_newline() {
        let object = json!({"status": {"phase": "Running"}, "spec": {"b": 1, "a": 2}, "metadata": {"uid": "u", "name": "n", "labels": {"z": "1"}, "namespace": "d"}, "kind": "Pod", "apiVersion": "v1"});
        let text = String::from_utf8(to_vec(&object)).unwrap();
        assert_eq!(
            text,
            "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"n\",\"namespace\":\"d\",\"uid\":\"u\",\"labels\":{\"z\":\"1\"}},\"spec\":{\"a\":2,\"b\":1},\"status\":{\"phase\":\"Running\"}}\n"
        );
        let status = json!({"code": 404, "reason": "NotFound", "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "m"});
        assert!(String::from_utf8(to_vec(&status)).unwrap().starts_with(
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"m\",\"reason\":\"NotFound\",\"code\":404}"
        ));
        let list = json!({"items": [{"metadata": {"name": "a"}, "kind": "ConfigMap", "data": {}}], "kind": "ConfigMapList", "apiVersion": "v1", "metadata": {}});
        assert_eq!(
            String::from_utf8(to_vec(&list)).unwrap(),
            "{\"kind\":\"ConfigMapList\",\"apiVersion\":\"v1\",\"metadata\":{},\"items\":[{\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"a\"},\"data\":{}}]}\n"
        );
        assert_eq!(serde_json::from_slice::<Value>(&to_vec(&object)).unwrap(), object);
    }
}
