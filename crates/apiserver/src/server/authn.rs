//! Who is asking: a bearer token (the admin's, `tokens.csv`, a service-account token), or
//! else the identity the transport established (a verified client certificate, or an
//! in-process caller), then impersonation for those RBAC lets `impersonate`.

use super::*;

/// The caller of `request`, or `None` (401).
pub(super) async fn authenticate(
    state: &State,
    request: &hyper::http::request::Parts,
) -> Option<crate::rbac::User> {
    let transport = request
        .extensions
        .get::<berth_api::identity::Authenticated>()
        .map(|authenticated| authenticated.0.clone());
    let token = request
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // As Kubernetes' authenticators do, either credential suffices: a certificate user
    // stands even beside a token nobody knows.
    match token {
        Some(token) => match state.user_for_token(token).await {
            Some(user) => Some(user),
            None => transport,
        },
        None => transport,
    }
}

/// `kubectl --as USER --as-group GROUP`: acting as someone else, for those whom RBAC
/// allows to `impersonate` that user and those groups.
pub(super) async fn impersonate(
    state: &State,
    user: crate::rbac::User,
    headers: &hyper::HeaderMap,
) -> Result<crate::rbac::User, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
    };
    let (names, groups) = (values("impersonate-user"), values("impersonate-group"));
    let Some(name) = names.first() else {
        if groups.is_empty() {
            return Ok(user);
        }
        return Err(ApiError::bad_request("requested impersonation of groups without a user"));
    };
    // A service account is impersonated as one (`impersonate serviceaccounts` in its
    // namespace) and gets its groups, as its token would.
    let account = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()));
    let first = match &account {
        Some((ns, sa)) => ("serviceaccounts", ns.clone(), sa.clone()),
        None => ("users", String::new(), name.clone()),
    };
    let targets =
        std::iter::once(first).chain(groups.iter().map(|g| ("groups", String::new(), g.clone())));
    for (resource, namespace, target) in targets {
        let attributes = crate::rbac::Attributes {
            verb: "impersonate".into(),
            group: String::new(),
            resource: resource.into(),
            subresource: String::new(),
            namespace,
            name: target.clone(),
            ..Default::default()
        };
        if !state.authorize(&user, &attributes).await {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("{resource} {target:?} is forbidden: User {:?} cannot impersonate resource {resource:?} in API group \"\" at the cluster scope", user.name),
            ));
        }
    }
    let mut groups = groups;
    if let Some((ns, _)) = &account {
        for group in ["system:serviceaccounts".to_owned(), format!("system:serviceaccounts:{ns}")] {
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
    }
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    Ok(crate::rbac::User { name: name.clone(), groups })
}
