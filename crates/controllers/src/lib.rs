//! What kube-controller-manager does for `berth server`, on the reconcile runtime
//! (`berth-reconcile`) and through the API like any client (`berth-client`), so every
//! write meets validation, RBAC and audit, and pods keep their grace periods:
//!
//! - `gc`: the garbage collector over `ownerReferences`: dependents of owners that are
//!   gone are deleted; owners deleted in the foreground (`foregroundDeletion`) go only
//!   after their dependents; owners deleted with orphaning (`orphan`) release them first.
//! - `namespace`: a terminating namespace is emptied, then finalized; a namespace left
//!   terminating by a crash finishes after a restart.
//! - `accounts`: a `default` ServiceAccount in every namespace.
//! - `rootca`: the ConfigMap `kube-root-ca.crt` (the cluster CA) in every namespace.
//! - `aggregation`: ClusterRoles with an `aggregationRule` collect the rules of the roles
//!   their selectors match (`admin`, `edit`, `view`).
//! - `endpoints`: Endpoints and EndpointSlices from Services' selectors and pod readiness.
//! - `cronjob`: Jobs at the times a CronJob's schedule names.
//! - `daemonset`: a pod on every node a DaemonSet admits.
//! - `nodelifecycle`: silent nodes marked Unknown and tainted, pods leaving nodes whose
//!   NoExecute taints they do not tolerate (after their `tolerationSeconds`).
//! - `nodeipam`: each Node a pod range of the cluster's of its own (`spec.podCIDR`).
//! - `hpa`: HorizontalPodAutoscalers scale their targets on the metrics API's usage.
//! - `disruption`: PodDisruptionBudgets' status (the disruptions evictions may spend).
//! - `statefulset`: pods with stable names and claims, made and replaced in order.
//! - `replicaset` (ReplicaSets and ReplicationControllers), `deployment`, `job`: the
//!   workload controllers (`workload` holds what
//!   they share: owned pods, pods from templates, readiness, expectations, events).
//!
//! Every loop is level-triggered: its state is what the API holds, so a restart (a
//! SIGKILL included) resumes where it stopped. Knows nothing of storage, HTTP or Linux.

mod accounts;
mod aggregation;
mod cronjob;
mod daemonset;
mod deployment;
mod disruption;
mod endpoints;
mod gc;
mod hpa;
mod job;
mod kinds;
mod namespace;
pub mod nodeipam;
mod nodelifecycle;
mod replicaset;
mod rootca;
mod statefulset;
mod workload;

use std::time::Duration;

use berth_reconcile::Informers;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Api { action, source }
    }
}

/// What the controllers are told at start.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster CA (PEM) that the root CA publisher hands every namespace.
    pub root_ca: Option<String>,
    /// How long a node may go without renewing its Lease before it is marked Unknown
    /// (kube-controller-manager's `--node-monitor-grace-period`).
    pub node_monitor_grace_period: Duration,
    /// How often autoscalers are evaluated (`--horizontal-pod-autoscaler-sync-period`).
    pub horizontal_pod_autoscaler_sync_period: Duration,
    /// Pod ranges for the Nodes (`--cluster-cidr`, `--node-cidr-mask-size`); `None`: the
    /// Nodes get none.
    pub node_ipam: Option<nodeipam::Config>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            root_ca: None,
            node_monitor_grace_period: Duration::from_secs(40),
            horizontal_pod_autoscaler_sync_period: Duration::from_secs(15),
            node_ipam: None,
        }
    }
}

/// The running controllers.
pub struct Manager {
    tasks: TaskTracker,
    informers: std::sync::Arc<Informers>,
}

impl Manager {
    /// Starts every controller over `client` until `shutdown`; with the cluster CA (PEM),
    /// the root CA publisher too.
    pub fn start(client: kube::Client, options: Options, shutdown: CancellationToken) -> Manager {
        Manager::start_on(std::sync::Arc::new(Informers::new(client, shutdown)), options)
    }

    /// [`Manager::start`] on informers made already (whose caches other loops of the
    /// process may share), acting with their client, until their shutdown token fires.
    pub fn start_on(informers: std::sync::Arc<Informers>, options: Options) -> Manager {
        let tasks = TaskTracker::new();
        if let Some(ca) = options.root_ca {
            tasks.spawn(rootca::run(informers.clone(), ca));
        }
        tasks.spawn(gc::run(informers.clone()));
        tasks.spawn(namespace::run(informers.clone()));
        tasks.spawn(accounts::run(informers.clone()));
        tasks.spawn(aggregation::run(informers.clone()));
        tasks.spawn(replicaset::run::<k8s_openapi::api::apps::v1::ReplicaSet>(informers.clone()));
        tasks.spawn(replicaset::run::<k8s_openapi::api::core::v1::ReplicationController>(
            informers.clone(),
        ));
        tasks.spawn(deployment::run(informers.clone()));
        tasks.spawn(job::run(informers.clone()));
        tasks.spawn(endpoints::run(informers.clone()));
        tasks.spawn(cronjob::run(informers.clone()));
        tasks.spawn(daemonset::run(informers.clone()));
        tasks.spawn(statefulset::run(informers.clone()));
        tasks.spawn(disruption::run(informers.clone()));
        tasks.spawn(hpa::run(informers.clone(), options.horizontal_pod_autoscaler_sync_period));
        tasks.spawn(nodelifecycle::run(informers.clone(), options.node_monitor_grace_period));
        if let Some(config) = options.node_ipam {
            tasks.spawn(nodeipam::run(informers.clone(), config));
        }
        tasks.close();
        Manager { tasks, informers }
    }

    /// Waits up to `grace` for every loop to end (after the shutdown token fired).
    pub async fn stopped(self, grace: Duration) {
        let informers = self.informers.tasks().clone();
        informers.close();
        let all = async {
            self.tasks.wait().await;
            informers.wait().await;
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("controllers did not stop within {grace:?}");
        }
    }
}

/// Most errors are conflicts and lag: retried soon, never later than this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
