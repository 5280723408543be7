//! Load for `benches/pod-startup.sh`: pod startup latency as Kubernetes' SLO measures it
//! (a pod's creation to its Ready condition, observed through a watch; the image is
//! already on the node), for SINGLES pods one at a time and for a BURST of pods in one
//! Deployment. Prints p50 and p99 of each and how long the whole burst took to be Ready.
//! Usage: `podstart KUBECONFIG SINGLES BURST`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark tool: failing loudly is the point

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kubeconfig =
        std::path::PathBuf::from(args.get(1).expect("usage: podstart KUBECONFIG SINGLES BURST"));
    let singles: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let burst: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100);
    let client = berth_client::from_kubeconfig(&kubeconfig).await.expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let revision = pods
        .list_metadata(&Default::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .unwrap_or_default();
    // Every pod's first sight and Ready, as the watch delivers them.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, bool, Instant)>();
    {
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut from = revision;
            loop {
                let mut stream = pods
                    .watch(&WatchParams::default().timeout(290), &from)
                    .await
                    .expect("watch")
                    .boxed();
                while let Some(event) = stream.next().await {
                    let pod = match event {
                        Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) => pod,
                        Ok(WatchEvent::Bookmark(mark)) => {
                            from = mark.metadata.resource_version;
                            continue;
                        }
                        _ => continue,
                    };
                    if let Some(rv) = &pod.metadata.resource_version {
                        from = rv.clone();
                    }
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    if tx.send((name, ready(&pod), Instant::now())).is_err() {
                        return;
                    }
                }
            }
        });
    }
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut ready_at: HashMap<String, Instant> = HashMap::new();
    fn note(
        seen: &mut HashMap<String, Instant>,
        ready_at: &mut HashMap<String, Instant>,
        (name, is_ready, at): (String, bool, Instant),
    ) {
        seen.entry(name.clone()).or_insert(at);
        if is_ready {
            ready_at.entry(name).or_insert(at);
        }
    }
    // One pod at a time.
    let mut single_ms = Vec::new();
    for i in 0..singles {
        let name = format!("single-{i}");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": "fixture:v1", "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]},
        }))
        .unwrap();
        let started = Instant::now();
        pods.create(&PostParams::default(), &pod).await.expect("create");
        loop {
            let event = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("a pod never got Ready")
                .expect("watch");
            note(&mut seen, &mut ready_at, event);
            if let Some(at) = ready_at.get(&name) {
                single_ms.push(at.duration_since(started).as_secs_f64() * 1000.0);
                break;
            }
        }
        pods.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
            .expect("delete");
    }
    // A burst: one Deployment.
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "burst"},
        "spec": {"replicas": burst, "selector": {"matchLabels": {"app": "burst"}},
            "template": {"metadata": {"labels": {"app": "burst"}}, "spec": {"terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": "fixture:v1", "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]}}},
    }))
    .unwrap();
    let started = Instant::now();
    deployments.create(&PostParams::default(), &deployment).await.expect("create the deployment");
    let burst_ready = |ready_at: &HashMap<String, Instant>| {
        ready_at.keys().filter(|n| n.starts_with("burst-")).count()
    };
    while burst_ready(&ready_at) < burst {
        let event = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .expect("the burst never got Ready")
            .expect("watch");
        note(&mut seen, &mut ready_at, event);
    }
    let all = started.elapsed().as_secs_f64();
    let mut burst_ms: Vec<f64> = ready_at
        .iter()
        .filter(|(n, _)| n.starts_with("burst-"))
        .map(|(n, at)| at.duration_since(seen[n]).as_secs_f64() * 1000.0)
        .collect();
    single_ms.sort_by(|a, b| a.total_cmp(b));
    burst_ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{}",
        serde_json::json!({
            "singles": singles, "single_p50_ms": (percentile(&single_ms, 50.0) * 10.0).round() / 10.0,
            "single_p99_ms": (percentile(&single_ms, 99.0) * 10.0).round() / 10.0,
            "burst": burst, "burst_p50_ms": (percentile(&burst_ms, 50.0) * 10.0).round() / 10.0,
            "burst_p99_ms": (percentile(&burst_ms, 99.0) * 10.0).round() / 10.0,
            "burst_all_ready_s": (all * 100.0).round() / 100.0,
        })
    );
    let _ = deployments.delete("burst", &DeleteParams::default()).await;
}
