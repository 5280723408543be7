//! The ClusterRole aggregation controller: a ClusterRole with an `aggregationRule` gets
//! as its rules the rules of every ClusterRole its selectors match (how `admin`, `edit`
//! and `view` grow with the roles labelled `aggregate-to-*`, custom resources' included),
//! as kube-controller-manager's clusterrole-aggregation controller does.

use std::sync::Arc;

use berth_reconcile::{Action, Change, Informers, Queue};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;

use crate::{Error, MAX_BACKOFF};

pub(crate) async fn run(informers: Arc<Informers>) {
    let roles = informers.typed::<ClusterRole>();
    let queue = Queue::<String>::new();
    let shutdown = informers.shutdown().clone();
    // Any role's change may change what an aggregated role collects: every aggregated
    // role is looked at again (there are few).
    {
        let (queue, roles_seen) = (queue.clone(), roles.clone());
        roles.follow(&informers, move |change| {
            if matches!(change, Change::Applied(_) | Change::Deleted(_) | Change::Resynced) {
                for role in roles_seen.store().state() {
                    if role.aggregation_rule.is_some() {
                        queue.add(role.metadata.name.clone().unwrap_or_default());
                    }
                }
            }
        });
    }
    tokio::select! {
        _ = roles.ready() => {}
        _ = shutdown.cancelled() => return,
    }
    for role in roles.store().state() {
        if role.aggregation_rule.is_some() {
            queue.add(role.metadata.name.clone().unwrap_or_default());
        }
    }
    let client = informers.client().clone();
    berth_reconcile::run(
        "clusterrole-aggregation",
        queue,
        1,
        MAX_BACKOFF,
        shutdown,
        move |name: String| {
            let (client, roles) = (client.clone(), roles.clone());
            async move {
                let Some(role) = roles.store().get(&ObjectRef::new(&name)) else {
                    return Ok::<_, Error>(Action::Done);
                };
                let Some(rule) = &role.aggregation_rule else { return Ok(Action::Done) };
                let selectors = rule.cluster_role_selectors.clone().unwrap_or_default();
                let mut sources: Vec<Arc<ClusterRole>> = roles
                    .store()
                    .state()
                    .into_iter()
                    .filter(|other| other.metadata.name != role.metadata.name)
                    .filter(|other| {
                        selectors
                            .iter()
                            .any(|s| crate::workload::selects(s, other.metadata.labels.as_ref()))
                    })
                    .collect();
                sources.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
                let rules = aggregate(sources.iter().map(|r| r.rules.clone().unwrap_or_default()));
                if role.rules.clone().unwrap_or_default() == rules {
                    return Ok(Action::Done);
                }
                let mut updated = (*role).clone();
                updated.rules = Some(rules);
                let api: Api<ClusterRole> = Api::all(client);
                match api.replace(&name, &PostParams::default(), &updated).await {
                    Ok(_) => Ok(Action::Done),
                    // Changed meanwhile: the next change brings it back here.
                    Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                        Ok(Action::Done)
                    }
                    Err(err) => Err(Error::api(format!("aggregate the rules of {name}"))(err)),
                }
            }
        },
    )
    .await;
}

/// The rules of the matched roles, in order, each once.
fn aggregate(lists: impl Iterator<Item = Vec<PolicyRule>>) -> Vec<PolicyRule> {
    let mut rules: Vec<PolicyRule> = Vec::new();
    for rule in lists.flatten() {
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_collected_once_in_order() {
        let rule = |resource: &str| PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec![resource.to_owned()]),
            verbs: vec!["get".to_owned()],
            ..PolicyRule::default()
        };
        let merged = aggregate(
            vec![vec![rule("pods"), rule("services")], vec![rule("pods"), rule("secrets")]]
                .into_iter(),
        );
        assert_eq!(merged, vec![rule("pods"), rule("services"), rule("secrets")]);
    }
}
