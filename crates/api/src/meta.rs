//! Object metadata on untyped (JSON) objects, and times as `metav1.Time` writes them.

use serde_json::{Map, Value};

/// An object's `metadata`, when it has one.
pub fn meta(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

/// An object's name ("" without one).
pub fn name_of(object: &Value) -> &str {
    meta(object).and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("")
}

/// Now, as `metav1.Time` writes it (seconds, UTC).
pub fn now() -> String {
    berth_stdx::time::now_rfc3339()
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    berth_stdx::time::unix_now()
}

/// Seconds since the epoch as `metav1.Time`.
pub fn format_time(seconds: i64) -> String {
    berth_stdx::time::format_rfc3339(seconds)
}

/// A `metav1.Time` (or any RFC 3339 time) as seconds since the epoch.
pub fn parse_time(text: &str) -> Option<i64> {
    berth_stdx::time::parse_rfc3339(text)
}
