//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=` carry them.
//!
//! Label selectors have every operator Kubernetes has: `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k` (exists) and `!k` (does not exist), joined by commas
//! (all must hold). Field selectors have `=`, `==` and `!=` on dotted paths of the object.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    });
    name_ok && prefix_ok
}

fn valid_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Splits on commas that are not inside parentheses.
fn split_top(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

impl LabelSelector {
    /// A `metav1.LabelSelector` object (`matchLabels` and `matchExpressions`), as workload
    /// specs carry them. Errors name the offending part.
    pub fn from_object(selector: &Value) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for (key, value) in selector["matchLabels"].as_object().into_iter().flatten() {
            let value =
                value.as_str().ok_or_else(|| format!("matchLabels[{key}] must be a string"))?;
            requirements.push(Requirement::Equals(key.clone(), value.to_owned()));
        }
        for (i, expression) in
            selector["matchExpressions"].as_array().into_iter().flatten().enumerate()
        {
            let key = expression["key"].as_str().unwrap_or("").to_owned();
            if key.is_empty() {
                return Err(format!("matchExpressions[{i}].key: Required value"));
            }
            let values: Vec<String> = expression["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let operator = expression["operator"].as_str().unwrap_or("");
            requirements.push(match operator {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!("matchExpressions[{i}].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"))
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!("matchExpressions[{i}].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"))
                }
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(format!("matchExpressions[{i}].operator: Invalid value: {other:?}: not a valid selector operator"))
                }
            });
        }
        Ok(LabelSelector { requirements })
    }

    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let bad =
            |reason: &str| SelectorError { selector: text.to_owned(), reason: reason.to_owned() };
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        for part in split_top(text) {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad("empty requirement"));
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("==") {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once('=') {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, rest)) = split_set_op(part, " notin ") {
                Requirement::NotIn(
                    key,
                    parse_set(rest).ok_or_else(|| bad("expected notin (v1,v2)"))?,
                )
            } else if let Some((key, rest)) = split_set_op(part, " in ") {
                Requirement::In(key, parse_set(rest).ok_or_else(|| bad("expected in (v1,v2)"))?)
            } else {
                Requirement::Exists(part.to_owned())
            };
            let (key, values): (&str, Vec<&str>) = match &requirement {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, vec![v.as_str()]),
                Requirement::In(k, vs) | Requirement::NotIn(k, vs) => {
                    (k, vs.iter().map(String::as_str).collect())
                }
                Requirement::Exists(k) | Requirement::DoesNotExist(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(bad(&format!("invalid label key {key:?}")));
            }
            if let Some(v) = values.iter().find(|v| !valid_value(v)) {
                return Err(bad(&format!("invalid label value {v:?}")));
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether an object with these labels (`metadata.labels`) matches.
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

fn split_set_op(part: &str, op: &str) -> Option<(String, String)> {
    let at = part.find(op)?;
    Some((part[..at].trim().to_owned(), part[at + op.len()..].trim().to_owned()))
}

fn parse_set(text: String) -> Option<Vec<String>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    (!values.is_empty()).then_some(values)
}

/// A parsed field selector: `path=value` and `path!=value` terms.
/// Fields selectors may name whose Go type is a plain bool (unset reads as false).
const BOOLEAN_FIELDS: &[&str] = &["spec.unschedulable", "spec.hostNetwork"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses, accepting only the fields in `allowed` (plus `metadata.name` and
    /// `metadata.namespace`, which every kind has), as the API server does.
    pub fn parse(text: &str, allowed: &[&str]) -> Result<FieldSelector, SelectorError> {
        let bad = |reason: String| SelectorError { selector: text.to_owned(), reason };
        let mut terms = Vec::new();
        if text.trim().is_empty() {
            return Ok(FieldSelector::default());
        }
        for part in text.split(',') {
            let part = part.trim();
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(bad(format!("{part:?} is not FIELD=VALUE or FIELD!=VALUE")));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace") && !allowed.contains(&field)
            {
                return Err(bad(format!("field label not supported: {field}")));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector { terms })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let mut current = object;
            for key in field.split('.') {
                current = current.get(key).unwrap_or(&Value::Null);
            }
            let actual = match current {
                Value::String(s) => s.clone(),
                // An unset boolean field is false, as Kubernetes' field sets format it.
                Value::Null if BOOLEAN_FIELDS.contains(&field.as_str()) => "false".to_owned(),
                Value::Null => String::new(),
                Value::Bool(b) => b.to_string(),
                other => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn every_operator() {
        let l = labels(json!({"app": "web", "tier": "front", "example.com/team": "a"}));
        for (selector, expected) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("app in (web, db)", true),
            ("app notin (web,db)", false),
            ("tier notin (back)", true),
            ("missing notin (x)", true),
            ("missing in (x)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("example.com/team=a,app=web", true),
            ("app=web,tier in (back)", false),
        ] {
            let parsed =
                LabelSelector::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
            assert_eq!(parsed.matches(Some(&l)), expected, "{selector}");
        }
        assert!(LabelSelector::parse("app=web").unwrap().matches(Some(&l)));
        assert!(!LabelSelector::parse("app").unwrap().matches(None));
        assert!(LabelSelector::parse("!app").unwrap().matches(None));
    }

    #[test]
    fn bad_label_selectors() {
        for bad in
            ["app=web,", "-app=x", "app=we b", "app in web", "app in ()x", "a/b/c=x", "app=-x-"]
        {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
        let err = LabelSelector::parse("Bad Key=x").unwrap_err().to_string();
        assert!(err.contains("invalid label key"), "{err}");
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let allowed = ["spec.nodeName", "status.phase"];
        let sel = FieldSelector::parse("metadata.name=p,status.phase!=Failed", &allowed).unwrap();
        assert!(sel.matches(&pod));
        assert!(!FieldSelector::parse("spec.nodeName=n2", &allowed).unwrap().matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=", &allowed).unwrap().matches(&json!({})));
        let err = FieldSelector::parse("spec.hostname=x", &allowed).unwrap_err().to_string();
        assert!(err.contains("field label not supported: spec.hostname"), "{err}");
        assert!(FieldSelector::parse("name", &allowed).is_err());
    }
}
