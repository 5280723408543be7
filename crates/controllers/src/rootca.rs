//! The root CA publisher, as Kubernetes' root-ca-cert-publisher: every namespace that is
//! not terminating has a ConfigMap `kube-root-ca.crt` holding the cluster CA as `ca.crt`
//! (what a pod's service-account volume projects), made again if deleted and put back if
//! edited.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_reconcile::{Action, Change, Informers, Queue};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;

use crate::{Error, MAX_BACKOFF};

const NAME: &str = "kube-root-ca.crt";

pub(crate) async fn run(informers: Arc<Informers>, ca: String) {
    let namespaces = informers.typed::<Namespace>();
    let maps = informers.typed::<ConfigMap>();
    let queue = Queue::<String>::new();
    let shutdown = informers.shutdown().clone();
    namespaces
        .queue_into(&informers, &queue, |namespace: &Namespace| namespace.metadata.name.clone());
    {
        let (queue, namespaces) = (queue.clone(), namespaces.clone());
        maps.follow(&informers, move |change| match change {
            Change::Applied(map) | Change::Deleted(map) => {
                if map.metadata.name.as_deref() == Some(NAME) {
                    queue.add(map.metadata.namespace.clone().unwrap_or_default());
                }
            }
            Change::Resynced => {
                for namespace in namespaces.store().state() {
                    queue.add(namespace.metadata.name.clone().unwrap_or_default());
                }
            }
        });
    }
    tokio::select! {
        _ = async { tokio::join!(namespaces.ready(), maps.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    for namespace in namespaces.store().state() {
        queue.add(namespace.metadata.name.clone().unwrap_or_default());
    }
    let client = informers.client().clone();
    berth_reconcile::run("root-ca-cert-publisher", queue, 2, MAX_BACKOFF, shutdown, move |name: String| {
        let (client, namespaces, maps, ca) = (client.clone(), namespaces.clone(), maps.clone(), ca.clone());
        async move {
            let Some(namespace) = namespaces.store().get(&ObjectRef::new(&name)) else {
                return Ok::<_, Error>(Action::Done);
            };
            if namespace.metadata.deletion_timestamp.is_some() {
                return Ok(Action::Done);
            }
            let wanted: BTreeMap<String, String> = [("ca.crt".to_owned(), ca)].into();
            if maps
                .store()
                .get(&ObjectRef::new(NAME).within(&name))
                .is_some_and(|map| map.data.as_ref() == Some(&wanted))
            {
                return Ok(Action::Done);
            }
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(NAME.to_owned()),
                    annotations: Some(
                        [(
                            "kubernetes.io/description".to_owned(),
                            "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_owned(),
                        )]
                        .into(),
                    ),
                    ..ObjectMeta::default()
                },
                data: Some(wanted),
                ..ConfigMap::default()
            };
            let api: Api<ConfigMap> = Api::namespaced(client, &name);
            let params = PatchParams::apply("root-ca-cert-publisher").force();
            match api.patch(NAME, &params, &Patch::Apply(&map)).await {
                Ok(_) => Ok(Action::Done),
                // The namespace began terminating meanwhile.
                Err(kube::Error::Api(status)) if status.code == 403 || status.code == 404 => {
                    Ok(Action::Done)
                }
                Err(err) => Err(Error::api(format!("publish {NAME} in {name}"))(err)),
            }
        }
    })
    .await;
}
