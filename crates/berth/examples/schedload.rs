//! Load for `benches/scheduler.sh`, in the shape of kube-scheduler's `scheduler_perf`
//! SchedulingBasic: creates PODS pods (no node named, small requests) as fast as the API
//! takes them, and watches until every one is bound; reports pods/s from the first pod
//! created to the last pod bound, as a user sees it through the API.
//! Usage: `schedload KUBECONFIG PODS`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark tool: failing loudly is the point

use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kubeconfig =
        std::path::PathBuf::from(args.get(1).expect("usage: schedload KUBECONFIG PODS"));
    let count: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let client = berth_client::from_kubeconfig(&kubeconfig).await.expect("client");
    let api: Api<Pod> = Api::namespaced(client, "default");
    let revision = api
        .list_metadata(&Default::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .unwrap_or_default();
    let watcher = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut bound = std::collections::HashSet::new();
            let params = WatchParams::default().timeout(290);
            let mut from = revision;
            let mut last = Instant::now();
            while bound.len() < count {
                let mut stream = api.watch(&params, &from).await.expect("watch").boxed();
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
                    if pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some_and(|n| !n.is_empty())
                        && bound.insert(pod.metadata.name.clone().unwrap_or_default())
                    {
                        last = Instant::now();
                        if bound.len() == count {
                            break;
                        }
                    }
                }
            }
            last
        })
    };
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": "perf-"},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]},
    }))
    .expect("pod");
    let started = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(32, |_| {
            let (api, pod) = (api.clone(), pod.clone());
            async move {
                api.create(&PostParams::default(), &pod).await.expect("create");
            }
        })
        .await;
    let created = started.elapsed();
    let last_bound = watcher.await.expect("watcher");
    let total = last_bound.duration_since(started);
    println!("| pods | created in | all bound in | scheduling throughput |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {count} | {:.2} s ({:.0}/s) | {:.2} s | {:.0} pods/s |",
        created.as_secs_f64(),
        count as f64 / created.as_secs_f64(),
        total.as_secs_f64(),
        count as f64 / total.as_secs_f64()
    );
}
