//! The Job controller: up to `parallelism` pods at a time until `completions` of them
//! succeed (the condition `Complete`), or more than `backoffLimit` fail, or
//! `activeDeadlineSeconds` pass (the condition `Failed`, and the active pods deleted); a
//! failed pod is replaced after Kubernetes' back-off (10 s doubling per failure, at most
//! 6 minutes);
//! `suspend` deletes the active pods and waits. `completionMode: Indexed` gives each pod
//! an index (`batch.kubernetes.io/job-completion-index`, `JOB_COMPLETION_INDEX`, hostname
//! `JOB-INDEX`) until every index has succeeded (`completedIndexes`); a `podFailurePolicy`
//! decides what a failed pod means (FailJob, Ignore, Count) by its containers' exit codes
//! or its conditions; `ttlSecondsAfterFinished` deletes a finished Job (and its pods)
//! that long after it finished. `backoffLimitPerIndex` gives each index its own count of
//! failures (carried from pod to pod in `batch.kubernetes.io/job-index-failure-count`)
//! and back-off: an index past it, or one a `FailIndex` rule names, is failed
//! (`failedIndexes`) and not retried while the others run on; the Job fails when more
//! than `maxFailedIndexes` have, or at the end if any has. Status: active, ready,
//! succeeded, failed, start and completion times.

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

/// When the Job finished (its Complete or Failed condition's time), if it did.
fn finished_at(job: &Job) -> Option<i64> {
    let condition = job
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    Some(
        condition
            .last_transition_time
            .as_ref()
            .and_then(|t| berth_stdx::time::parse_rfc3339(&t.0.to_string()))
            .unwrap_or_else(berth_stdx::time::unix_now),
    )
}

/// When a failed pod failed: its containers' last finish, else when it stopped being
/// ready, else its creation (seconds since the epoch).
fn failed_at(pod: &Pod) -> i64 {
    let status = pod.status.as_ref();
    let finished = status
        .into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .filter_map(|t| berth_stdx::time::parse_rfc3339(&t.0.to_string()))
        .max();
    finished
        .or_else(|| {
            status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_transition_time.as_ref())
                .and_then(|t| berth_stdx::time::parse_rfc3339(&t.0.to_string()))
        })
        .or_else(|| {
            pod.metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| berth_stdx::time::parse_rfc3339(&t.0.to_string()))
        })
        .unwrap_or_else(berth_stdx::time::unix_now)
}

/// The annotation and label an Indexed Job's pod carries its index in.
const INDEX: &str = "batch.kubernetes.io/job-completion-index";

fn index_of(pod: &Pod) -> Option<i32> {
    workload::annotation(&pod.metadata, INDEX)
}

/// The annotations a pod of an index with its own back-off limit carries: how many of the
/// index's pods failed (counted, and ignored by the failure policy) before it was made.
const FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
const IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";

fn count_of(pod: &Pod, annotation: &str) -> i32 {
    workload::annotation(&pod.metadata, annotation).unwrap_or(0)
}

/// What is known of one index's failures under `backoffLimitPerIndex`.
#[derive(Debug, Default)]
struct IndexFailures {
    counted: i32,
    ignored: i32,
    /// A `FailIndex` rule matched one of its pods.
    by_rule: bool,
    /// When its last counted failure happened.
    last: Option<i64>,
}

/// Indexes written as `completedIndexes` and `failedIndexes` are (`0-2,4`), read back;
/// anything else in the text is skipped.
fn expand(text: &str) -> std::collections::BTreeSet<i32> {
    let mut indexes = std::collections::BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(first), Ok(last)) = (first.parse::<i32>(), last.parse::<i32>()) {
            indexes.extend(first..=last.min(first.saturating_add(1_000_000)));
        }
    }
    indexes
}

/// Indexes as Kubernetes writes `completedIndexes`: runs of three or more as a range,
/// `0-2,4,6,7`.
fn compress(indexes: &std::collections::BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    let written = |(first, last): (i32, i32)| match last - first {
        0 => first.to_string(),
        1 => format!("{first},{last}"),
        _ => format!("{first}-{last}"),
    };
    for &index in indexes {
        run = match run {
            Some((first, last)) if index == last + 1 => Some((first, index)),
            Some(done) => {
                parts.push(written(done));
                Some((index, index))
            }
            None => Some((index, index)),
        };
    }
    parts.extend(run.map(written));
    parts.join(",")
}

/// What a failed pod means under the Job's `podFailurePolicy`: the first rule that
/// matches it (its action and the message Kubernetes gives), if any.
fn failure_rule(
    policy: &k8s_openapi::api::batch::v1::PodFailurePolicy,
    pod: &Pod,
) -> Option<(String, String)> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let terminated: Vec<(String, i32)> = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten())
        })
        .filter_map(|c| {
            let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
            Some((c.name.clone(), code))
        })
        .collect();
    for (index, rule) in policy.rules.iter().enumerate() {
        if let Some(codes) = &rule.on_exit_codes {
            let hit = terminated.iter().find(|(container, code)| {
                *code != 0
                    && codes.container_name.as_deref().is_none_or(|c| c == container)
                    && match codes.operator.as_str() {
                        "In" => codes.values.contains(code),
                        "NotIn" => !codes.values.contains(code),
                        _ => false,
                    }
            });
            if let Some((container, code)) = hit {
                return Some((
                    rule.action.clone(),
                    format!("Container {container} for pod {namespace}/{name} failed with exit code {code} matching {} rule at index {index}", rule.action),
                ));
            }
        }
        for pattern in rule.on_pod_conditions.iter().flatten() {
            let wanted =
                if pattern.status.is_empty() { "True".to_owned() } else { pattern.status.clone() };
            let hit = status.and_then(|s| s.conditions.as_ref()).is_some_and(|conditions| {
                conditions.iter().any(|c| c.type_ == pattern.type_ && c.status == wanted)
            });
            if hit {
                return Some((
                    rule.action.clone(),
                    format!(
                        "Pod {namespace}/{name} has condition {} matching {} rule at index {index}",
                        pattern.type_, rule.action
                    ),
                ));
            }
        }
    }
    None
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
        let spec = job.spec.clone().unwrap_or_default();
        if job.metadata.deletion_timestamp.is_some() {
            self.expectations.forget(&uid);
            return Ok(Action::Done);
        }
        if let Some(at) = finished_at(&job) {
            self.expectations.forget(&uid);
            // ttlSecondsAfterFinished: the Job and (through the garbage collector) its pods go.
            let Some(ttl) = spec.ttl_seconds_after_finished else { return Ok(Action::Done) };
            let left = at + i64::from(ttl) - berth_stdx::time::unix_now();
            if left > 0 {
                return Ok(Action::RequeueAfter(Duration::from_secs(left as u64)));
            }
            let api: Api<Job> = Api::namespaced(self.client.clone(), &key.0);
            let params = workload::exactly(&job.metadata, DeleteParams::foreground());
            return match api.delete(&key.1, &params).await {
                Ok(_) => Ok(Action::Done),
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                    Ok(Action::Done)
                }
                Err(err) => Err(workload::api_error(format!(
                    "delete finished job {}/{}",
                    key.0, key.1
                ))(err)),
            };
        }
        let owned = workload::owned_pods(&self.pods, &key.0, &uid);
        let cached_active: Vec<Arc<Pod>> =
            owned.iter().filter(|p| workload::active(p)).cloned().collect();
        let (active, unseen) = self.expectations.adjust(&uid, &cached_active, &owned);
        let completions = spec.completions.unwrap_or(1).max(1);
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let succeeded_indexes: std::collections::BTreeSet<i32> = owned
            .iter()
            .filter(|p| workload::phase(p) == "Succeeded")
            .filter_map(|p| index_of(p))
            .filter(|i| (0..completions).contains(i))
            .collect();
        let succeeded = if indexed {
            succeeded_indexes.len() as i32
        } else {
            owned.iter().filter(|p| workload::phase(p) == "Succeeded").count() as i32
        };
        let per_index = spec.backoff_limit_per_index.filter(|_| indexed);
        // Failed pods, as the pod failure policy counts them (Ignore does not count), and
        // with a limit per index, each index's failures.
        let mut failed = 0;
        let mut last_failure: Option<i64> = None;
        let mut fail_job: Option<String> = None;
        let mut by_index: BTreeMap<i32, IndexFailures> = BTreeMap::new();
        for pod in owned.iter() {
            let is_failed = workload::phase(pod) == "Failed";
            let action = if is_failed {
                spec.pod_failure_policy.as_ref().and_then(|policy| failure_rule(policy, pod))
            } else {
                None
            };
            let ignored = action.as_ref().is_some_and(|(a, _)| a == "Ignore");
            let counted = is_failed && !ignored;
            if let (Some(_), Some(index)) = (per_index, index_of(pod)) {
                let entry = by_index.entry(index).or_default();
                entry.counted =
                    entry.counted.max(count_of(pod, FAILURE_COUNT) + i32::from(counted));
                entry.ignored =
                    entry.ignored.max(count_of(pod, IGNORED_FAILURE_COUNT) + i32::from(ignored));
                if counted {
                    let at = failed_at(pod);
                    entry.last = Some(entry.last.map_or(at, |l| l.max(at)));
                    entry.by_rule |= action.as_ref().is_some_and(|(a, _)| a == "FailIndex");
                }
            }
            if !counted {
                continue;
            }
            if let Some((_, message)) = action.filter(|(a, _)| a == "FailJob") {
                fail_job.get_or_insert(message);
            }
            failed += 1;
            let at = failed_at(pod);
            last_failure = Some(last_failure.map_or(at, |l: i64| l.max(at)));
        }
        let now_secs = berth_stdx::time::unix_now();
        // Kubernetes' back-off before a failed pod is replaced: 10 s, doubling with each
        // failure, at most 6 minutes; with a limit per index, each index waits on its own.
        let backoff = |failures: i32, at: i64| {
            let delay = (10i64 << (failures - 1).clamp(0, 6)).min(360);
            at + delay - now_secs
        };
        // The failed indexes: past their limit or named by a FailIndex rule, and those the
        // status already lists (their pods may be gone).
        let failed_indexes: std::collections::BTreeSet<i32> = match per_index {
            None => Default::default(),
            Some(limit) => {
                let listed = job
                    .status
                    .as_ref()
                    .and_then(|s| s.failed_indexes.as_deref())
                    .map(expand)
                    .unwrap_or_default();
                by_index
                    .iter()
                    .filter(|(_, f)| f.by_rule || f.counted > limit)
                    .map(|(i, _)| *i)
                    .chain(listed)
                    .filter(|i| (0..completions).contains(i) && !succeeded_indexes.contains(i))
                    .collect()
            }
        };
        // Indexes still waiting out their back-off, and how long the shortest wait is.
        let mut waiting: std::collections::BTreeSet<i32> = Default::default();
        let backoff_left = if per_index.is_some() {
            let mut shortest = 0;
            for (index, f) in &by_index {
                let Some(at) = f.last else { continue };
                let left = backoff(f.counted, at);
                if left > 0 && !failed_indexes.contains(index) {
                    waiting.insert(*index);
                    shortest = if shortest == 0 { left } else { shortest.min(left) };
                }
            }
            shortest
        } else {
            last_failure.map_or(0, |at| backoff(failed, at))
        };
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let now = berth_api::meta::now();
        let started =
            job.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.to_string());
        let start_time = started.clone().unwrap_or_else(|| now.clone());
        let involved = ("batch/v1", "Job", &job.metadata);
        let elapsed = berth_stdx::time::unix_now()
            - berth_stdx::time::parse_rfc3339(&start_time).unwrap_or(berth_stdx::time::unix_now());
        // In the order Kubernetes' controller decides them: failures before success.
        let mut condition = None;
        if let Some(message) = fail_job {
            condition = Some(("Failed", "PodFailurePolicy", message));
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
        } else if per_index.is_some()
            && spec.max_failed_indexes.is_some_and(|max| failed_indexes.len() as i32 > max)
        {
            condition = Some((
                "Failed",
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes".to_owned(),
            ));
        } else if !failed_indexes.is_empty()
            && (failed_indexes.len() + succeeded_indexes.len()) as i32 >= completions
        {
            condition = Some(("Failed", "FailedIndexes", "Job has failed indexes".to_owned()));
        } else if succeeded >= completions {
            condition = Some(("Complete", "", "".to_owned()));
        }
        let suspended = spec.suspend == Some(true);
        if condition.is_some() || suspended {
            self.delete_pods(&key.0, &active).await?;
        } else {
            // Pods still running for an index that has failed are not needed any more.
            let doomed: Vec<Arc<Pod>> = active
                .iter()
                .filter(|p| index_of(p).is_some_and(|i| failed_indexes.contains(&i)))
                .cloned()
                .collect();
            self.delete_pods(&key.0, &doomed).await?;
            let left = completions - succeeded - failed_indexes.len() as i32;
            let wanted = if backoff_left > 0 && per_index.is_none() {
                0
            } else {
                (parallelism.min(left)).max(0) as usize
            };
            let have = active.len() - doomed.len() + unseen;
            if indexed && have < wanted && unseen == 0 {
                // Each index neither done nor running gets a pod of its own.
                let running: std::collections::BTreeSet<i32> =
                    active.iter().filter_map(|p| index_of(p)).collect();
                let missing: Vec<i32> = (0..completions)
                    .filter(|i| {
                        !succeeded_indexes.contains(i)
                            && !running.contains(i)
                            && !failed_indexes.contains(i)
                            && !waiting.contains(i)
                    })
                    .take(wanted - have)
                    .collect();
                for index in missing {
                    let owner = workload::controller_reference("batch/v1", "Job", &job.metadata);
                    let labels: BTreeMap<String, String> =
                        [(INDEX.to_owned(), index.to_string())].into();
                    let mut pod = workload::pod_from_template(
                        &spec.template,
                        &format!("{}-{index}", key.1),
                        owner,
                        &labels,
                    );
                    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
                    annotations.insert(INDEX.to_owned(), index.to_string());
                    if per_index.is_some() {
                        let f = by_index.get(&index);
                        let counted = f.map_or(0, |f| f.counted);
                        let ignored = f.map_or(0, |f| f.ignored);
                        annotations.insert(FAILURE_COUNT.to_owned(), counted.to_string());
                        annotations.insert(IGNORED_FAILURE_COUNT.to_owned(), ignored.to_string());
                    }
                    if let Some(pod_spec) = pod.spec.as_mut() {
                        pod_spec.hostname = Some(format!("{}-{index}", key.1));
                        for container in pod_spec
                            .containers
                            .iter_mut()
                            .chain(pod_spec.init_containers.iter_mut().flatten())
                        {
                            container.env.get_or_insert_with(Vec::new).push(
                                k8s_openapi::api::core::v1::EnvVar {
                                    name: "JOB_COMPLETION_INDEX".into(),
                                    value: Some(index.to_string()),
                                    value_from: None,
                                },
                            );
                        }
                    }
                    if let Some(error) =
                        workload::create_pods(&self.client, involved, &self.expectations, &pod, 1)
                            .await
                    {
                        return Err(workload::api_error(format!(
                            "create pod {index} of job {}/{}",
                            key.0, key.1
                        ))(error));
                    }
                }
            } else if !indexed && have < wanted {
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
        if indexed {
            status["completedIndexes"] = json!(compress(&succeeded_indexes));
        }
        if per_index.is_some() {
            status["failedIndexes"] = json!(compress(&failed_indexes));
        }
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
            || (indexed && old["completedIndexes"] != status["completedIndexes"])
            || (per_index.is_some() && old["failedIndexes"] != status["failedIndexes"])
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
        if condition.is_some() {
            return Ok(Action::Done);
        }
        // Looked at again at the first of: the deadline, the end of a back-off, a second
        // for pods created but not seen yet.
        let deadline = spec.active_deadline_seconds.map(|d| (d - elapsed).max(1));
        let backoff = (backoff_left > 0).then_some(backoff_left);
        let unseen = (unseen > 0).then_some(1);
        Ok(match [deadline, backoff, unseen].into_iter().flatten().min() {
            Some(seconds) => Action::RequeueAfter(Duration::from_secs(seconds as u64)),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_are_written_as_ranges() {
        let set = |v: &[i32]| v.iter().copied().collect::<std::collections::BTreeSet<i32>>();
        assert_eq!(compress(&set(&[0, 1, 2, 4, 6, 7])), "0-2,4,6,7");
        assert_eq!(compress(&set(&[3])), "3");
        assert_eq!(compress(&set(&[])), "");
    }

    #[test]
    fn indexes_read_back_as_written() {
        let indexes: std::collections::BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(expand(&compress(&indexes)), indexes);
        assert_eq!(expand(""), Default::default());
        assert_eq!(expand("3,x,5-4"), [3].into());
    }

    #[test]
    fn failure_policies_match_exit_codes_and_conditions() {
        let policy: k8s_openapi::api::batch::v1::PodFailurePolicy = serde_json::from_value(json!({
            "rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]})).unwrap_or_default();
        let pod = |code: i32, condition: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"},
                "status": {"phase": "Failed", "conditions": [{"type": condition, "status": "True"}],
                    "containerStatuses": [{"name": "main", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": code}}}]}}))
            .unwrap_or_default()
        };
        let (action, message) = failure_rule(&policy, &pod(42, "Ready")).unwrap_or_default();
        assert_eq!(action, "FailJob");
        assert_eq!(
            message,
            "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 0"
        );
        assert_eq!(
            failure_rule(&policy, &pod(1, "DisruptionTarget")).map(|r| r.0),
            Some("Ignore".into())
        );
        assert_eq!(failure_rule(&policy, &pod(1, "Ready")), None);
    }
}
