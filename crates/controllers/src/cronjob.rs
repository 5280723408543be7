//! The CronJob controller: at each time its schedule names (UTC), a Job from the
//! template, named `{cronjob}-{minutes since the epoch}` (so a restart never makes a run
//! twice); missed runs (after a restart, or a `lastScheduleTime` long ago) make one Job
//! for the latest of them, unless `startingDeadlineSeconds` has passed; concurrencyPolicy
//! Allow, Forbid (skip while one runs) and Replace (delete the running one); `suspend`;
//! the successful and failed history limits; `status.active` and `lastScheduleTime`.

use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::{Action, Cache, Informers, Queue};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::workload;
use crate::{Error, MAX_BACKOFF};

type Key = (String, String);

struct Controller {
    client: kube::Client,
    cronjobs: Arc<Cache<CronJob>>,
    jobs: Arc<Cache<Job>>,
}

pub(crate) async fn run(informers: Arc<Informers>) {
    let cronjobs = informers.typed::<CronJob>();
    let jobs = informers.typed::<Job>();
    let queue = Queue::<Key>::new();
    let shutdown = informers.shutdown().clone();
    cronjobs.queue_into(&informers, &queue, |c: &CronJob| Some(workload::key_of(&c.metadata)));
    let owner_of = {
        let cronjobs = cronjobs.clone();
        move |job: &Job| -> Option<Key> {
            let uid = workload::controller_uid(&job.metadata)?;
            cronjobs
                .store()
                .state_filter(|c| c.metadata.uid.as_deref() == Some(uid))
                .first()
                .map(|c| workload::key_of(&c.metadata))
        }
    };
    jobs.queue_into(&informers, &queue, owner_of);
    tokio::select! {
        _ = async { tokio::join!(cronjobs.ready(), jobs.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    for cronjob in cronjobs.store().state() {
        queue.add(workload::key_of(&cronjob.metadata));
    }
    let controller = Arc::new(Controller { client: informers.client().clone(), cronjobs, jobs });
    berth_reconcile::run("cronjob", queue, 2, MAX_BACKOFF, shutdown, move |key: Key| {
        let controller = controller.clone();
        async move { controller.reconcile(key).await }
    })
    .await;
}

fn job_finished(job: &Job) -> Option<&'static str> {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref())?;
    conditions.iter().find_map(|c| match (c.type_.as_str(), c.status.as_str()) {
        ("Complete", "True") => Some("Complete"),
        ("Failed", "True") => Some("Failed"),
        _ => None,
    })
}

fn seconds(time: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<i64> {
    time.and_then(|t| berth_stdx::time::parse_rfc3339(&t.0.to_string()))
}

impl Controller {
    async fn reconcile(&self, key: Key) -> Result<Action, Error> {
        let Some(cronjob) = self.cronjobs.store().get(&ObjectRef::new(&key.1).within(&key.0))
        else {
            return Ok(Action::Done);
        };
        if cronjob.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let uid = cronjob.metadata.uid.clone().unwrap_or_default();
        let spec = cronjob.spec.clone().unwrap_or_default();
        let mut jobs: Vec<Arc<Job>> = self.jobs.store().state_filter(|j| {
            j.metadata.namespace.as_deref() == Some(key.0.as_str())
                && workload::controller_uid(&j.metadata) == Some(uid.as_str())
        });
        jobs.sort_by_key(|j| seconds(j.metadata.creation_timestamp.as_ref()).unwrap_or(0));
        let running: Vec<&Arc<Job>> = jobs.iter().filter(|j| job_finished(j).is_none()).collect();
        self.trim_history(
            &key.0,
            &jobs,
            spec.successful_jobs_history_limit.unwrap_or(3),
            "Complete",
        )
        .await?;
        self.trim_history(&key.0, &jobs, spec.failed_jobs_history_limit.unwrap_or(1), "Failed")
            .await?;
        let schedule = match berth_api::cron::Schedule::parse(&spec.schedule) {
            Ok(schedule) => schedule,
            Err(message) => {
                tracing::warn!(
                    "cronjob {}/{}: schedule {:?}: {message}",
                    key.0,
                    key.1,
                    spec.schedule
                );
                return Ok(Action::Done);
            }
        };
        let now = berth_stdx::time::unix_now();
        let status = cronjob.status.clone().unwrap_or_default();
        let since = seconds(status.last_schedule_time.as_ref())
            .or_else(|| seconds(cronjob.metadata.creation_timestamp.as_ref()))
            .unwrap_or(now);
        // The latest time the schedule named since the last run, if any has come.
        let mut due = None;
        let mut cursor = since;
        for _ in 0..100_000 {
            match schedule.next_after(cursor) {
                Some(next) if next <= now => {
                    due = Some(next);
                    cursor = next;
                }
                _ => break,
            }
        }
        let involved = ("batch/v1", "CronJob", &cronjob.metadata);
        let mut last_schedule = status.last_schedule_time.as_ref().map(|t| t.0.to_string());
        if let (Some(due), false) = (due, spec.suspend == Some(true)) {
            let too_late =
                spec.starting_deadline_seconds.is_some_and(|deadline| now - due > deadline);
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            if too_late {
                workload::event(
                    &self.client,
                    involved,
                    "Warning",
                    "MissSchedule",
                    &format!(
                        "Missed scheduled time to start a job: {}",
                        berth_stdx::time::format_rfc3339(due)
                    ),
                )
                .await;
            } else if policy == "Forbid" && !running.is_empty() {
                // Skipped; looked at again when the running one finishes.
                return self
                    .write_status(&key, &running, last_schedule.as_deref())
                    .await
                    .map(|_| Action::RequeueAfter(Duration::from_secs(10)));
            } else {
                if policy == "Replace" {
                    let api: Api<Job> = Api::namespaced(self.client.clone(), &key.0);
                    for job in &running {
                        let name = job.metadata.name.clone().unwrap_or_default();
                        match api.delete(&name, &DeleteParams::background()).await {
                            Ok(_) | Err(kube::Error::Api(_)) => {}
                            Err(err) => {
                                return Err(workload::api_error(format!(
                                    "replace job {}/{name}",
                                    key.0
                                ))(err))
                            }
                        }
                    }
                }
                self.start(&cronjob, due).await?;
            }
            last_schedule = Some(berth_stdx::time::format_rfc3339(due));
        }
        self.write_status(&key, &running, last_schedule.as_deref()).await?;
        let next = schedule.next_after(now).unwrap_or(now + 60);
        Ok(Action::RequeueAfter(Duration::from_secs((next - now).max(1) as u64)))
    }

    async fn start(&self, cronjob: &CronJob, due: i64) -> Result<(), Error> {
        let (namespace, name) = workload::key_of(&cronjob.metadata);
        let mut template =
            cronjob.spec.as_ref().map(|s| s.job_template.clone()).unwrap_or_default();
        // CronJobs stored by berth before 2026-12-02 carry the replacement policy it then
        // defaulted to even beside a pod failure policy, which a Job may not have: the
        // Job gets the API's default instead.
        if let Some(spec) = template.spec.as_mut() {
            if spec.pod_failure_policy.is_some()
                && spec.pod_replacement_policy.as_deref() == Some("TerminatingOrFailed")
            {
                spec.pod_replacement_policy = None;
            }
        }
        let meta = template.metadata.clone().unwrap_or_default();
        let mut annotations = meta.annotations.unwrap_or_default();
        annotations.insert(
            "batch.kubernetes.io/cronjob-scheduled-timestamp".into(),
            berth_stdx::time::format_rfc3339(due),
        );
        let job = Job {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{}", due / 60)),
                namespace: Some(namespace.clone()),
                labels: meta.labels,
                annotations: Some(annotations),
                owner_references: Some(vec![workload::controller_reference(
                    "batch/v1",
                    "CronJob",
                    &cronjob.metadata,
                )]),
                ..ObjectMeta::default()
            },
            spec: template.spec,
            status: None,
        };
        let api: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        let involved = ("batch/v1", "CronJob", &cronjob.metadata);
        match api.create(&PostParams::default(), &job).await {
            Ok(made) => {
                let job_name = made.metadata.name.unwrap_or_default();
                workload::event(
                    &self.client,
                    involved,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created job {job_name}"),
                )
                .await;
                Ok(())
            }
            // Made before a restart: this run is done.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            // A template the API refuses: a warning, and the next schedule tries again.
            Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
                workload::event(
                    &self.client,
                    involved,
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating job: {}", status.message),
                )
                .await;
                Ok(())
            }
            Err(err) => Err(workload::api_error(format!(
                "create a job for cronjob {namespace}/{name}"
            ))(err)),
        }
    }

    async fn trim_history(
        &self,
        namespace: &str,
        jobs: &[Arc<Job>],
        keep: i32,
        outcome: &str,
    ) -> Result<(), Error> {
        let finished: Vec<&Arc<Job>> =
            jobs.iter().filter(|j| job_finished(j) == Some(outcome)).collect();
        let keep = keep.max(0) as usize;
        if finished.len() <= keep {
            return Ok(());
        }
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        for job in &finished[..finished.len() - keep] {
            let name = job.metadata.name.clone().unwrap_or_default();
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => {
                    return Err(workload::api_error(format!("delete old job {namespace}/{name}"))(
                        err,
                    ))
                }
            }
        }
        Ok(())
    }

    async fn write_status(
        &self,
        key: &Key,
        running: &[&Arc<Job>],
        last_schedule: Option<&str>,
    ) -> Result<(), Error> {
        let active: Vec<serde_json::Value> = running
            .iter()
            .map(|j| json!({"apiVersion": "batch/v1", "kind": "Job", "name": j.metadata.name, "namespace": key.0, "uid": j.metadata.uid}))
            .collect();
        let current = self.cronjobs.store().get(&ObjectRef::new(&key.1).within(&key.0));
        let current_status = current.as_ref().and_then(|c| c.status.clone()).unwrap_or_default();
        let same_active = current_status
            .active
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
            == running.iter().map(|j| j.metadata.name.clone()).collect::<Vec<_>>();
        let same_time = current_status.last_schedule_time.as_ref().map(|t| t.0.to_string())
            == last_schedule.map(str::to_owned)
            || current_status
                .last_schedule_time
                .as_ref()
                .and_then(|t| berth_stdx::time::parse_rfc3339(&t.0.to_string()))
                == last_schedule.and_then(berth_stdx::time::parse_rfc3339);
        if same_active && same_time {
            return Ok(());
        }
        let status = json!({"active": if active.is_empty() { json!(null) } else { json!(active) }, "lastScheduleTime": last_schedule});
        workload::patch_status::<CronJob>(&self.client, key, status).await
    }
}
