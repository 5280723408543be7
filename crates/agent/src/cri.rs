//! The agent's side of CRI: gRPC clients of a runtime's socket (berth's CRI, or
//! containerd's: the agent cannot tell them apart and does not need to).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// Both CRI services over one connection (tonic clients are cheap to clone).
#[derive(Debug, Clone)]
pub struct Runtime {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// The socket path of an endpoint (`unix:///run/x.sock` or a plain path).
pub fn socket_of(endpoint: &str) -> PathBuf {
    PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint))
}

/// Connects to the runtime's socket, waiting for it to appear and to accept (the runtime
/// may start after the agent, and a socket file left by a killed runtime refuses until the
/// new one binds it); the connection itself reconnects as needed.
pub async fn connect(socket: &Path, patience: Duration) -> Result<Runtime, String> {
    let deadline = tokio::time::Instant::now() + patience;
    let channel = loop {
        let path = socket.to_owned();
        let attempt = tonic::transport::Endpoint::try_from("http://[::]:50051")
            .map_err(|e| e.to_string())?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await;
        match attempt {
            Ok(channel) => break channel,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                // tonic's own message is "transport error"; the cause is in its sources.
                let cause = berth_stdx::error::chain(&e);
                return Err(if socket.exists() {
                    format!(
                        "cannot connect to the container runtime at {}: {cause}",
                        socket.display()
                    )
                } else {
                    format!("the container runtime's socket {} does not exist", socket.display())
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    Ok(Runtime {
        runtime: RuntimeServiceClient::new(channel.clone()),
        images: ImageServiceClient::new(channel),
    })
}
