//! The namespace controller: a namespace being deleted (`Terminating`, with `kubernetes`
//! in `spec.finalizers`) has everything in it deleted through the API (so pods keep their
//! grace periods and owners their cascades), then is finalized; the API server removes it
//! once no finalizer is left. A namespace left terminating by a crash is finished after a
//! restart, since the loop only reads what the API holds.

use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::{Action, Informers, Queue};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::reflector::ObjectRef;

use crate::{kinds, Error, MAX_BACKOFF};

/// The finalizer the namespace controller owns.
const FINALIZER: &str = "kubernetes";

pub(crate) async fn run(informers: Arc<Informers>) {
    let namespaces = informers.typed::<Namespace>();
    let queue = Queue::<String>::new();
    let shutdown = informers.shutdown().clone();
    let terminating = |namespace: &Namespace| namespace.metadata.deletion_timestamp.is_some();
    namespaces.queue_into(&informers, &queue, move |namespace: &Namespace| {
        terminating(namespace).then(|| namespace.metadata.name.clone().unwrap_or_default())
    });
    tokio::select! {
        _ = namespaces.ready() => {}
        _ = shutdown.cancelled() => return,
    }
    for namespace in namespaces.store().state().iter().filter(|n| terminating(n)) {
        queue.add(namespace.metadata.name.clone().unwrap_or_default());
    }
    let client = informers.client().clone();
    berth_reconcile::run("namespace", queue, 2, MAX_BACKOFF, shutdown, move |name: String| {
        let (client, namespaces) = (client.clone(), namespaces.clone());
        async move {
            let Some(namespace) = namespaces.store().get(&ObjectRef::new(&name)) else {
                return Ok(Action::Done);
            };
            finish(&client, &namespace).await
        }
    })
    .await;
}

async fn finish(client: &kube::Client, namespace: &Namespace) -> Result<Action, Error> {
    let name = namespace.metadata.name.clone().unwrap_or_default();
    let finalizers = namespace.spec.as_ref().and_then(|s| s.finalizers.clone()).unwrap_or_default();
    if namespace.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER)
    {
        return Ok(Action::Done);
    }
    let resources: Vec<_> = kinds::stored()
        .into_iter()
        .filter(|r| r.namespaced && r.verbs.contains(&"deletecollection"))
        .map(kinds::api_resource)
        .collect();
    let mut remaining = 0;
    for resource in &resources {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &name, resource);
        let left = api
            .list_metadata(&ListParams::default().limit(1))
            .await
            .map_err(Error::api(format!("list {} in {name}", resource.plural)))?;
        if left.items.is_empty() {
            continue;
        }
        remaining += 1;
        api.delete_collection(&DeleteParams::background(), &ListParams::default())
            .await
            .map_err(Error::api(format!("delete {} in {name}", resource.plural)))?;
    }
    if remaining > 0 {
        // Deleted ones may still be held by finalizers or grace periods: look again.
        for resource in &resources {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &name, resource);
            let left = api
                .list_metadata(&ListParams::default().limit(1))
                .await
                .map_err(Error::api(format!("list {} in {name}", resource.plural)))?;
            if !left.items.is_empty() {
                tracing::debug!(namespace = %name, kind = %resource.kind, "waiting for content to go");
                return Ok(Action::RequeueAfter(Duration::from_millis(500)));
            }
        }
    }
    let mut finalized = namespace.clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    }
    let api: Api<Namespace> = Api::all(client.clone());
    match api.replace_subresource("finalize", &name, &PostParams::default(), &finalized).await {
        Ok(_) => Ok(Action::Done),
        // Gone meanwhile (another finalize removed it).
        Err(kube::Error::Api(status))
            if status.code == 404 && status.reason == "NotFound" && status.details.is_some() =>
        {
            Ok(Action::Done)
        }
        Err(err) => Err(Error::api(format!("finalize namespace {name}"))(err)),
    }
}
