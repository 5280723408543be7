//! Load for a CRI runtime, for `benches/cri.sh`: PODS pods one after another, each
//! RunPodSandbox + CreateContainer + StartContainer from a pre-pulled image, then each
//! StopPodSandbox + RemovePodSandbox; prints p50/p99 per pod for both phases and the
//! totals. The same client drives berth's CRI and containerd's.
//!
//! Usage: criload SOCKET IMAGE PODS [--host-network]

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // a benchmark tool: failing loudly is the point

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (socket, image, pods) = match args.as_slice() {
        [_, socket, image, pods, ..] => {
            (socket.clone(), image.clone(), pods.parse::<usize>().expect("PODS is a number"))
        }
        _ => panic!("usage: criload SOCKET IMAGE PODS [--host-network]"),
    };
    let host_network = args.iter().any(|a| a == "--host-network");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
                }
            }))
            .await
            .expect("connect");
        let mut rt = RuntimeServiceClient::new(channel);
        let run = std::process::id();
        let mut starts = Vec::new();
        let mut sandboxes = Vec::new();
        let began = Instant::now();
        for n in 0..pods {
            let name = format!("bench-{run}-{n}");
            let config = cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata { name: name.clone(), uid: format!("uid-{name}"), namespace: "bench".into(), attempt: 0 }),
                hostname: if host_network { String::new() } else { name.clone() },
                log_directory: format!("/tmp/criload-{run}/{name}"),
                linux: Some(cri::LinuxPodSandboxConfig {
                    cgroup_parent: String::new(),
                    security_context: Some(cri::LinuxSandboxSecurityContext {
                        namespace_options: Some(cri::NamespaceOption {
                            network: if host_network { cri::NamespaceMode::Node as i32 } else { cri::NamespaceMode::Pod as i32 },
                            pid: cri::NamespaceMode::Container as i32,
                            ipc: cri::NamespaceMode::Pod as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let t0 = Instant::now();
            let sandbox = rt
                .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
                .await
                .expect("RunPodSandbox")
                .into_inner()
                .pod_sandbox_id;
            let container = rt
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sandbox.clone(),
                    config: Some(cri::ContainerConfig {
                        metadata: Some(cri::ContainerMetadata { name: "app".into(), attempt: 0 }),
                        image: Some(cri::ImageSpec { image: image.clone(), ..Default::default() }),
                        command: vec!["sleep".into(), "3600".into()],
                        log_path: "app.log".into(),
                        ..Default::default()
                    }),
                    sandbox_config: Some(config),
                })
                .await
                .expect("CreateContainer")
                .into_inner()
                .container_id;
            rt.start_container(cri::StartContainerRequest { container_id: container }).await.expect("StartContainer");
            starts.push(t0.elapsed());
            sandboxes.push(sandbox);
        }
        let started_all = began.elapsed();
        let mut stops = Vec::new();
        let began = Instant::now();
        for sandbox in sandboxes {
            let t0 = Instant::now();
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await.expect("StopPodSandbox");
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox }).await.expect("RemovePodSandbox");
            stops.push(t0.elapsed());
        }
        let stopped_all = began.elapsed();
        starts.sort();
        stops.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{{\"pods\": {pods}, \"start_p50_ms\": {:.1}, \"start_p99_ms\": {:.1}, \"start_total_s\": {:.2}, \"stop_p50_ms\": {:.1}, \"stop_p99_ms\": {:.1}, \"stop_total_s\": {:.2}}}",
            ms(percentile(&starts, 0.5)),
            ms(percentile(&starts, 0.99)),
            started_all.as_secs_f64(),
            ms(percentile(&stops, 0.5)),
            ms(percentile(&stops, 0.99)),
            stopped_all.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(format!("/tmp/criload-{run}"));
    });
}
