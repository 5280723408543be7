//! What a request names, decided once from its method, path and query (pure: the metrics
//! labels and the dispatch read the same answer).

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Route {
    /// `/apis/G`: one group.
    Group { group: String },
    /// `/api/v1` or `/apis/G/V`: the resources of a group-version.
    GroupVersion { group: String, version: String },
    /// A resource, a collection, an object or a subresource.
    Resource(Target),
    /// An `/api` or `/apis` path naming nothing berth serves.
    NoSuchPath,
    /// Anything else: health, version, discovery roots, OpenAPI, `/metrics`.
    Other,
}

/// What a resource path names.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Target {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// What follows a node's `proxy` subresource: the agent's path.
    pub proxy_path: Option<String>,
}

/// The route of a path (without its trailing slash).
pub(super) fn parse(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        ["apis", group] => return Route::Group { group: request::percent_decode(group) },
        _ => return Route::Other,
    };
    if rest.is_empty() {
        return Route::GroupVersion { group: group.to_owned(), version: version.to_owned() };
    }
    // `namespaces/NAME/status` and `namespaces/NAME/finalize` name a namespace's
    // subresources, not a resource inside it.
    let namespace_subresource = |sub: &str| {
        resources::find("", "v1", "namespaces")
            .is_some_and(|ns| group.is_empty() && ns.subresources.iter().any(|s| s.name == sub))
    };
    let (namespace, rest) = match rest {
        ["namespaces", _, sub] if namespace_subresource(sub) => (None, rest),
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => {
            (Some(request::percent_decode(ns)), rest)
        }
        _ => (None, rest),
    };
    let Some(resource) = resources::find(group, version, rest[0]) else {
        return Route::NoSuchPath;
    };
    // `nodes/NAME/proxy/PATH...`: the rest is the node agent's path.
    let proxy_path =
        (rest.len() > 3 && rest[2] == "proxy" && resource.name == "nodes" && group.is_empty())
            .then(|| format!("/{}", rest[3..].join("/")));
    if rest.len() > 3 && proxy_path.is_none() {
        return Route::NoSuchPath;
    }
    let subresource = rest.get(2).map(|s| (*s).to_owned());
    if let Some(sub) = &subresource {
        if !resource.subresources.iter().any(|s| s.name == sub) {
            return Route::NoSuchPath;
        }
    }
    Route::Resource(Target {
        resource,
        namespace: if resource.namespaced { namespace } else { None },
        name: rest.get(1).map(|n| request::percent_decode(n)),
        subresource,
        proxy_path,
    })
}

/// The Kubernetes verb of a request on a resource route (`list`, `watch`, ...).
pub(super) fn verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method, named, watch) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, true, _) => "get",
        (&Method::GET, false, _) => "list",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, true, _) => "delete",
        (&Method::DELETE, false, _) => "deletecollection",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_routes() {
        let Route::Resource(target) = parse("/api/v1/namespaces/team/pods/web/log") else {
            panic!("a pod's log is a resource route");
        };
        assert_eq!(target.resource.name, "pods");
        assert_eq!(target.namespace.as_deref(), Some("team"));
        assert_eq!(target.name.as_deref(), Some("web"));
        assert_eq!(target.subresource.as_deref(), Some("log"));
        let Route::Resource(target) = parse("/api/v1/nodes/n1/proxy/stats/summary") else {
            panic!("a node's proxy is a resource route");
        };
        assert_eq!(target.subresource.as_deref(), Some("proxy"));
        assert_eq!(target.proxy_path.as_deref(), Some("/stats/summary"));
        assert_eq!(parse("/api/v1/namespaces/team/pods/web/log/more"), Route::NoSuchPath);
        let Route::Resource(target) = parse("/api/v1/namespaces/team") else { panic!("ns") };
        assert_eq!((target.resource.name, target.name.as_deref()), ("namespaces", Some("team")));
        assert_eq!(target.namespace, None, "namespaces are cluster-scoped");
        assert_eq!(
            parse("/apis/apps/v1"),
            Route::GroupVersion { group: "apps".into(), version: "v1".into() }
        );
        assert_eq!(parse("/apis/apps"), Route::Group { group: "apps".into() });
        assert_eq!(parse("/apis/apps/v1/nosuch"), Route::NoSuchPath);
        assert_eq!(parse("/api/v1/pods/a/nosuch"), Route::NoSuchPath);
        assert_eq!(parse("/api/v1/namespaces/a/pods/b/log/x"), Route::NoSuchPath);
        assert_eq!(parse("/metrics"), Route::Other);
        let Route::Resource(target) = parse("/api/v1/namespaces/team/finalize") else {
            panic!("a namespace's finalize is a subresource");
        };
        assert_eq!(target.resource.name, "namespaces");
        assert_eq!(target.name.as_deref(), Some("team"));
        assert_eq!(target.subresource.as_deref(), Some("finalize"));
        assert_eq!(verb(&Method::GET, false, true), "watch");
        assert_eq!(verb(&Method::DELETE, false, false), "deletecollection");
    }
}
