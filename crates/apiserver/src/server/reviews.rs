//! Reviews: objects a client creates to ask a question, answered and never stored.
//! SelfSubjectReview (`kubectl auth whoami`), SelfSubjectAccessReview (`kubectl auth
//! can-i`), SelfSubjectRulesReview (`kubectl auth can-i --list`), SubjectAccessReview and
//! LocalSubjectAccessReview (what another user may do: webhooks and proxies ask), and
//! TokenReview (whom a bearer token names).

use super::*;
use crate::rbac::{Attributes, User};

/// Kinds answered here.
pub(super) fn is_review(kind: &str) -> bool {
    matches!(
        kind,
        "SelfSubjectReview"
            | "SelfSubjectAccessReview"
            | "SelfSubjectRulesReview"
            | "SubjectAccessReview"
            | "LocalSubjectAccessReview"
            | "TokenReview"
    )
}

/// The answer to a review of `kind` that `user` created (in `namespace`, for the local
/// kind).
pub(super) async fn answer(
    state: &State,
    user: &User,
    kind: &str,
    namespace: Option<&str>,
    review: Value,
) -> Result<Value, ApiError> {
    let mut review = review;
    let api_version = match kind {
        "SelfSubjectReview" | "TokenReview" => "authentication.k8s.io/v1",
        _ => "authorization.k8s.io/v1",
    };
    if review.get("kind").and_then(Value::as_str).is_some_and(|k| k != kind) {
        return Err(ApiError::bad_request(format!("the body is not a {kind}")));
    }
    review["kind"] = json!(kind);
    review["apiVersion"] = json!(api_version);
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    let spec = review["spec"].clone();
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let status = match kind {
        "SelfSubjectReview" => {
            json!({"userInfo": {"username": user.name, "groups": user.groups}})
        }
        "TokenReview" => {
            let token = text(&spec["token"]);
            if token.is_empty() {
                return Err(invalid(kind, "spec.token", "Required value"));
            }
            // The audiences asked for (this API's when none); a service-account token
            // must carry one of them, static tokens serve any.
            let asked: Vec<&str> = spec["audiences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let asked = if asked.is_empty() { vec![crate::tokens::ISSUER] } else { asked };
            match state.token_user(&token, &asked).await {
                Some((found, audiences)) => json!({"authenticated": true,
                    "user": {"username": found.name, "groups": found.groups}, "audiences": audiences}),
                None => json!({"authenticated": false, "user": {},
                    "error": "the token is not valid for the audiences asked for"}),
            }
        }
        "SelfSubjectRulesReview" => {
            let namespace = text(&spec["namespace"]);
            let rules = state.rbac_rules(user, &namespace);
            let strings = |v: &Value| v.as_array().cloned().unwrap_or_default();
            let resource_rules: Vec<Value> = rules
                .iter()
                .filter(|r| r.get("nonResourceURLs").is_none())
                .map(|r| {
                    let mut rule = json!({"verbs": strings(&r["verbs"]), "apiGroups": strings(&r["apiGroups"]), "resources": strings(&r["resources"])});
                    if let Some(names) = r["resourceNames"].as_array().filter(|n| !n.is_empty()) {
                        rule["resourceNames"] = json!(names);
                    }
                    rule
                })
                .collect();
            let url_rules: Vec<Value> = rules
                .iter()
                .filter(|r| r.get("nonResourceURLs").is_some())
                .map(|r| json!({"verbs": strings(&r["verbs"]), "nonResourceURLs": strings(&r["nonResourceURLs"])}))
                .collect();
            json!({"resourceRules": resource_rules, "nonResourceRules": url_rules, "incomplete": false})
        }
        _ => {
            // Access reviews: of the caller, or of the user the spec names.
            let subject = match kind {
                "SelfSubjectAccessReview" => user.clone(),
                _ => {
                    let name = text(&spec["user"]);
                    let groups: Vec<String> = spec["groups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|g| g.as_str().map(str::to_owned))
                        .collect();
                    if name.is_empty() && groups.is_empty() {
                        return Err(invalid(
                            kind,
                            "spec.user",
                            "Invalid value: \"\": at least one of user or group must be specified",
                        ));
                    }
                    User { name, groups }
                }
            };
            let resource = &spec["resourceAttributes"];
            let non_resource = &spec["nonResourceAttributes"];
            if resource.is_object() == non_resource.is_object() {
                return Err(invalid(
                    kind,
                    "spec.resourceAttributes",
                    "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
                ));
            }
            let attributes = if non_resource.is_object() {
                Attributes {
                    verb: text(&non_resource["verb"]),
                    path: text(&non_resource["path"]),
                    ..Default::default()
                }
            } else {
                let mut namespace_of_spec = text(&resource["namespace"]);
                if kind == "LocalSubjectAccessReview" {
                    let url = namespace.unwrap_or("");
                    if namespace_of_spec.is_empty() {
                        namespace_of_spec = url.to_owned();
                        review["spec"]["resourceAttributes"]["namespace"] = json!(url);
                    } else if namespace_of_spec != url {
                        return Err(invalid(
                            kind,
                            "spec.resourceAttributes.namespace",
                            &format!("Invalid value: {namespace_of_spec:?}: must match metadata.namespace"),
                        ));
                    }
                    review["metadata"]["namespace"] = json!(url);
                }
                Attributes {
                    verb: text(&resource["verb"]),
                    group: text(&resource["group"]),
                    resource: text(&resource["resource"]),
                    subresource: text(&resource["subresource"]),
                    namespace: namespace_of_spec,
                    name: text(&resource["name"]),
                    ..Default::default()
                }
            };
            let allowed = state.authorize(&subject, &attributes).await;
            if allowed {
                json!({"allowed": true, "reason": "RBAC: allowed by a binding"})
            } else {
                json!({"allowed": false})
            }
        }
    };
    review["status"] = status;
    Ok(review)
}

fn invalid(kind: &str, field: &str, message: &str) -> ApiError {
    let mut error = ApiError::new(
        422,
        "Invalid",
        format!("{kind}.authorization.k8s.io \"\" is invalid: {field}: {message}"),
    );
    error.details = json!({"kind": kind, "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}]});
    error
}

impl State {
    /// The user a bearer token names: the admin's or a `tokens.csv` token, a bootstrap
    /// token, or a valid service-account token whose account still exists.
    pub(super) async fn user_for_token(&self, token: &str) -> Option<User> {
        self.token_user(token, &[crate::tokens::ISSUER]).await.map(|(user, _)| user)
    }

    /// The user a token names for one of `audiences`, with the audiences it serves among
    /// them: static tokens serve any, a service-account token those it was made for.
    pub(super) async fn token_user(
        &self,
        token: &str,
        audiences: &[&str],
    ) -> Option<(User, Vec<String>)> {
        match self.users.iter().find(|(known, _)| known == token) {
            Some((_, user)) => {
                Some((user.clone(), audiences.iter().map(|a| (*a).to_owned()).collect()))
            }
            None if token.len() == 23 && token.as_bytes()[6] == b'.' => self
                .bootstrap_token_user(token)
                .await
                .map(|user| (user, audiences.iter().map(|a| (*a).to_owned()).collect())),
            None => self.service_account_user_for(token, audiences).await,
        }
    }
}
