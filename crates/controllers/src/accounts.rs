//! The service-account controller: every namespace that is not terminating has a
//! `default` ServiceAccount (made again if deleted), as pods run as it unless they say
//! otherwise.

use std::sync::Arc;

use berth_reconcile::{Action, Change, Informers, Queue};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef;

use crate::{Error, MAX_BACKOFF};

const DEFAULT: &str = "default";

pub(crate) async fn run(informers: Arc<Informers>) {
    let namespaces = informers.typed::<Namespace>();
    let accounts = informers.typed::<ServiceAccount>();
    let queue = Queue::<String>::new();
    let shutdown = informers.shutdown().clone();
    let name = |namespace: &Namespace| namespace.metadata.name.clone();
    namespaces.queue_into(&informers, &queue, name);
    // A deleted default account is made again; a relisting looks at every namespace.
    {
        let (queue, namespaces) = (queue.clone(), namespaces.clone());
        accounts.follow(&informers, move |change| match change {
            Change::Deleted(account) if account.metadata.name.as_deref() == Some(DEFAULT) => {
                queue.add(account.metadata.namespace.clone().unwrap_or_default());
            }
            Change::Applied(_) | Change::Deleted(_) => {}
            Change::Resynced => {
                for namespace in namespaces.store().state() {
                    queue.add(namespace.metadata.name.clone().unwrap_or_default());
                }
            }
        });
    }
    tokio::select! {
        _ = async { tokio::join!(namespaces.ready(), accounts.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    for namespace in namespaces.store().state() {
        queue.add(namespace.metadata.name.clone().unwrap_or_default());
    }
    let client = informers.client().clone();
    berth_reconcile::run("serviceaccount", queue, 2, MAX_BACKOFF, shutdown, move |name: String| {
        let (client, namespaces, accounts) = (client.clone(), namespaces.clone(), accounts.clone());
        async move {
            let Some(namespace) = namespaces.store().get(&ObjectRef::new(&name)) else {
                return Ok::<_, Error>(Action::Done);
            };
            if namespace.metadata.deletion_timestamp.is_some() {
                return Ok(Action::Done);
            }
            if accounts.store().get(&ObjectRef::new(DEFAULT).within(&name)).is_some() {
                return Ok(Action::Done);
            }
            let account = ServiceAccount {
                metadata: ObjectMeta { name: Some(DEFAULT.to_owned()), ..ObjectMeta::default() },
                ..ServiceAccount::default()
            };
            let api: Api<ServiceAccount> = Api::namespaced(client, &name);
            match api.create(&PostParams::default(), &account).await {
                Ok(_) => Ok(Action::Done),
                // Made meanwhile, or the namespace began terminating.
                Err(kube::Error::Api(status)) if status.code == 409 || status.code == 403 => {
                    Ok(Action::Done)
                }
                Err(err) => {
                    Err(Error::api(format!("create the default service account in {name}"))(err))
                }
            }
        }
    })
    .await;
}
