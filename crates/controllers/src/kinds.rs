//! The kinds the controllers act on, from berth-api's table: one served version of each
//! stored resource (versions of a group share storage), those that can be listed,
//! watched and deleted.

use berth_api::kinds::Resource;
use kube::api::ApiResource;

/// Resources that objects live in: listable, watchable and deletable, once each.
pub(crate) fn stored() -> Vec<&'static Resource> {
    let mut seen = std::collections::HashSet::new();
    berth_api::kinds::all()
        .into_iter()
        .filter(|r| ["list", "watch", "delete"].iter().all(|verb| r.verbs.contains(verb)))
        // events.k8s.io Events are core Events seen another way.
        .filter(|r| !(r.group == "events.k8s.io" && r.name == "events"))
        .filter(|r| seen.insert((r.group, r.name)))
        .collect()
}

pub(crate) fn api_resource(resource: &Resource) -> ApiResource {
    ApiResource {
        group: resource.group.to_owned(),
        version: resource.version.to_owned(),
        api_version: resource.group_version(),
        kind: resource.kind.to_owned(),
        plural: resource.name.to_owned(),
    }
}

/// The resource an owner reference names (`apiVersion` and `kind`), in any version.
pub(crate) fn by_reference(api_version: &str, kind: &str) -> Option<&'static Resource> {
    let group = api_version.rsplit_once('/').map(|(group, _)| group).unwrap_or("");
    berth_api::kinds::by_kind(api_version, kind)
        .or_else(|| stored().into_iter().find(|r| r.group == group && r.kind == kind))
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_stored_resource_once() {
        let stored = super::stored();
        let names: Vec<_> = stored.iter().map(|r| (r.group, r.name)).collect();
        assert!(names.contains(&("", "pods")));
        assert!(names.contains(&("apps", "replicasets")));
        assert_eq!(
            names.iter().filter(|n| **n == ("autoscaling", "horizontalpodautoscalers")).count(),
            1
        );
        assert!(!names.iter().any(|(_, name)| *name == "selfsubjectaccessreviews"));
        let rs = super::by_reference("apps/v1", "ReplicaSet").expect("replicasets");
        assert_eq!(rs.name, "replicasets");
        assert!(super::by_reference("example.com/v1", "Widget").is_none());
    }
}
