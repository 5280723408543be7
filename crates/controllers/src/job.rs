//! The Job controller: up to `parallelism` pods at a time until `completions` of them
//! succeed (the condition `Complete`), or more than `backoffLimit` fail, or
//! `activeDeadlineSeconds` pass (the condition `Failed`, and the active pods deleted);
//! `suspend` deletes the active pods and waits. Status: active, ready, succeeded, failed,
//! start and completion times.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::{Action, Cache, Informers, Queue};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::workload::{self, Expectations};
use crate::{Error, MAX_BACKOFF};

type Key = (String, String);

struct Controller {
    client: kube::Client,
    jobs: Arc<Cache<Job>>,
    pods: Arc<Cache<Pod>>,
    expectations: Expectations,
}

pub(crate) async fn run(informers: Arc<Informers>) {
    let jobs = informers.typed::<Job>();
    let pods = informers.typed::<Pod>();
    let queue = Queue::<Key>::new();
    let shutdown = informers.shutdown().clone();
    jobs.queue_into(&informers, &queue, |job: &Job| Some(workload::key_of(&job.metadata)));
    let owner_of = {
        let jobs = jobs.clone();
        move |pod: &Pod| -> Option<Key> {
            let uid = workload::controller_uid(&pod.metadata)?;
            jobs.store()
                .state_filter(|j| j.metadata.uid.as_deref() == Some(uid))
                .first()
                .map(|j| workload::key_of(&j.metadata))
        }
    };
    pods.queue_into(&informers, &queue, owner_of);
    tokio::select! {
        _ = async { tokio::join!(jobs.ready(), pods.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    for job in jobs.store().state() {
        queue.add(workload::key_of(&job.metadata));
    }
    let controller = Arc::new(Controller {
        client: informers.client().clone(),
        jobs,
        pods,
        expectations: Expectations::default(),
    });
    berth_reconcile::run("job", queue, 4, MAX_BACKOFF, shutdown, move |key: Key| {
        let controller = controller.clone();
        async move { controller.reconcile(key).await }
    })
    .await;
}

fn finished(job: &Job) -> bool {
    job.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
    })
}

impl Controller {
    async fn delete_pods(&self, namespace: &str, pods: &[Arc<Pod>]) -> Result<(), Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        for pod in pods {
            let name = pod.metadata.name.clone().unwrap_or_default();
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => {
                    return Err(workload::api_error(format!("delete pod {namespace}/{name}"))(err))
                }
            }
        }
        Ok(())
    }

    async fn reconcile(&self, key: Key) -> Result<Action, Error> {
        let Some(job) = self.jobs.store().get(&ObjectRef::new(&key.1).within(&key.0)) else {
            return Ok(Action::Done);
        };
        let uid = job.metadata.uid.clone().unwrap_or_default();
        if job.metadata.deletion_timestamp.is_some() || finished(&job) {
            self.expectations.forget(&uid);
            return Ok(Action::Done);
        }
        let spec = job.spec.clone().unwrap_or_default();
        let owned = workload::owned_pods(&self.pods, &key.0, &uid);
        let cached_active: Vec<Arc<Pod>> =
            owned.iter().filter(|p| workload::active(p)).cloned().collect();
        let (active, unseen) = self.expectations.adjust(&uid, &cached_active, &owned);
        let succeeded = owned.iter().filter(|p| workload::phase(p) == "Succeeded").count() as i32;
        let failed = owned.iter().filter(|p| workload::phase(p) == "Failed").count() as i32;
        let completions = spec.completions.unwrap_or(1).max(1);
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let now = berth_api::meta::now();
        let started =
            job.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.to_string());
        let start_time = started.clone().unwrap_or_else(|| now.clone());
        let involved = ("batch/v1", "Job", &job.metadata);
        let elapsed = berth_stdx::time::unix_now()
            - berth_stdx::time::parse_rfc3339(&start_time).unwrap_or(berth_stdx::time::unix_now());
        let mut condition = None;
        if succeeded >= completions {
            condition = Some(("Complete", "", "".to_owned()));
        } else if failed > backoff_limit {
            condition = Some((
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".to_owned(),
            ));
        } else if spec.active_deadline_seconds.is_some_and(|deadline| elapsed >= deadline) {
            condition = Some((
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline".to_owned(),
            ));
        }
        let suspended = spec.suspend == Some(true);
        if condition.is_some() || suspended {
            self.delete_pods(&key.0, &active).await?;
        } else {
            let wanted = (parallelism.min(completions - succeeded)).max(0) as usize;
            let have = active.len() + unseen;
            if have < wanted {
                let template = spec.template.clone();
                let owner = workload::controller_reference("batch/v1", "Job", &job.metadata);
                let pod = workload::pod_from_template(&template, &key.1, owner, &BTreeMap::new());
                let error = workload::create_pods(
                    &self.client,
                    involved,
                    &self.expectations,
                    &pod,
                    wanted - have,
                )
                .await;
                if let Some(error) = error {
                    return Err(workload::api_error(format!(
                        "create pods for job {}/{}",
                        key.0, key.1
                    ))(error));
                }
            }
        }
        let ready = active.iter().filter(|p| workload::ready(p)).count();
        let mut status = json!({"active": if condition.is_some() || suspended { 0 } else { active.len() },
            "ready": ready, "succeeded": succeeded, "failed": failed, "startTime": start_time});
        if let Some((kind, reason, message)) = &condition {
            let mut entry = json!({"type": kind, "status": "True", "lastProbeTime": now, "lastTransitionTime": now});
            if !reason.is_empty() {
                entry["reason"] = json!(reason);
                entry["message"] = json!(message);
            }
            // Kubernetes 1.32 adds SuccessCriteriaMet / FailureTarget before the final one.
            let interim = if *kind == "Complete" { "SuccessCriteriaMet" } else { "FailureTarget" };
            let mut first = entry.clone();
            first["type"] = json!(interim);
            status["conditions"] = json!([first, entry]);
            if *kind == "Complete" {
                status["completionTime"] = json!(now);
            }
            let (event_kind, event_reason, event_message) = if *kind == "Complete" {
                ("Normal", "Completed", "Job completed".to_owned())
            } else {
                ("Warning", *reason, message.clone())
            };
            workload::event(&self.client, involved, event_kind, event_reason, &event_message).await;
        }
        let old = serde_json::to_value(&job.status).unwrap_or_default();
        let changed = ["active", "ready", "succeeded", "failed"]
            .iter()
            .any(|f| old[f].as_i64().unwrap_or(0) != status[f].as_i64().unwrap_or(0))
            || started.is_none()
            || condition.is_some();
        if changed {
            let api: Api<Job> = Api::namespaced(self.client.clone(), &key.0);
            match api
                .patch_status(
                    &key.1,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Action::Done),
                Err(err) => {
                    return Err(workload::api_error(format!(
                        "update the status of job {}/{}",
                        key.0, key.1
                    ))(err))
                }
            }
        }
        Ok(match spec.active_deadline_seconds {
            Some(deadline) if condition.is_none() => {
                Action::RequeueAfter(Duration::from_secs((deadline - elapsed).max(1) as u64))
            }
            _ if unseen > 0 => Action::RequeueAfter(Duration::from_secs(1)),
            _ => Action::Done,
        })
    }
}
