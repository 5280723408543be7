//! Startup, liveness and readiness probes, as the kubelet runs them: `exec` through CRI
//! ExecSync, `httpGet` (a GET to the pod's address; 200-399 is success) and `tcpSocket`
//! (a connection) from the agent, with `initialDelaySeconds`, `periodSeconds`,
//! `timeoutSeconds`, `successThreshold` and `failureThreshold`. Results are kept per
//! container id (a restarted container starts over, as a new id does for the kubelet).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cri::Runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

#[derive(Debug, Clone)]
struct State {
    last: Option<Instant>,
    successes: i32,
    failures: i32,
    /// The probe's verdict so far (startup and readiness start false, liveness true).
    passing: bool,
    message: String,
}

/// Probe results by (container id, kind).
#[derive(Debug, Default)]
pub struct Results {
    states: Mutex<HashMap<(String, Kind), State>>,
}

/// What the sync should do about a container after its probes ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub started: bool,
    pub ready: bool,
    /// Kill it (liveness or startup failed past its threshold): the message says why.
    pub kill: Option<String>,
    /// The probes that ran now and failed (`Readiness probe failed: ...`), for the
    /// kubelet's Unhealthy events.
    pub failed: Vec<String>,
}

impl Results {
    /// Drops every result of containers not in `ids` (all containers the node runs).
    pub fn retain(&self, ids: &std::collections::HashSet<String>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|(id, _), _| ids.contains(id));
    }

    /// Whether a container's startup probe has passed.
    pub fn started(&self, id: &str) -> bool {
        self.get(id, Kind::Startup).is_some_and(|s| s.passing)
    }

    fn get(&self, id: &str, kind: Kind) -> Option<State> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.get(&(id.to_owned(), kind)).cloned()
    }

    fn put(&self, id: &str, kind: Kind, state: State) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.insert((id.to_owned(), kind), state);
    }

    /// Runs the container's probes that are due and says where it stands.
    pub async fn check(
        &self,
        runtime: &Runtime,
        container: &Container,
        status: &cri::ContainerStatus,
        pod_ip: &str,
    ) -> Verdict {
        let id = status.id.as_str();
        let started_at = std::time::UNIX_EPOCH
            + Duration::from_nanos(u64::try_from(status.started_at).unwrap_or(0));
        let running_for =
            std::time::SystemTime::now().duration_since(started_at).unwrap_or_default();
        let mut verdict = Verdict { started: true, ready: true, kill: None, failed: Vec::new() };
        let startup_done = match &container.startup_probe {
            Some(probe) => {
                let (state, fresh) = self
                    .step(runtime, container, id, Kind::Startup, probe, running_for, pod_ip, false)
                    .await;
                verdict.failed.extend(fresh.map(|m| format!("Startup probe failed: {m}")));
                if state.passing {
                    true
                } else {
                    verdict.started = false;
                    verdict.ready = false;
                    if state.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                        verdict.kill = Some(format!("Startup probe failed: {}", state.message));
                    }
                    false
                }
            }
            None => true,
        };
        if !startup_done {
            return verdict;
        }
        if let Some(probe) = &container.liveness_probe {
            let (state, fresh) = self
                .step(runtime, container, id, Kind::Liveness, probe, running_for, pod_ip, true)
                .await;
            verdict.failed.extend(fresh.map(|m| format!("Liveness probe failed: {m}")));
            if !state.passing {
                verdict.kill = Some(format!("Liveness probe failed: {}", state.message));
            }
        }
        if let Some(probe) = &container.readiness_probe {
            let (state, fresh) = self
                .step(runtime, container, id, Kind::Readiness, probe, running_for, pod_ip, false)
                .await;
            verdict.failed.extend(fresh.map(|m| format!("Readiness probe failed: {m}")));
            verdict.ready = state.passing;
        }
        verdict
    }

    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        runtime: &Runtime,
        container: &Container,
        id: &str,
        kind: Kind,
        probe: &Probe,
        running_for: Duration,
        pod_ip: &str,
        initially: bool,
    ) -> (State, Option<String>) {
        let mut state = self.get(id, kind).unwrap_or(State {
            last: None,
            successes: 0,
            failures: 0,
            passing: initially,
            message: String::new(),
        });
        let delay = Duration::from_secs(
            u64::try_from(probe.initial_delay_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let period = Duration::from_secs(
            u64::try_from(probe.period_seconds.unwrap_or(10).max(1)).unwrap_or(10),
        );
        if running_for < delay || state.last.is_some_and(|last| last.elapsed() < period) {
            return (state, None);
        }
        // A passed startup probe is not run again.
        if kind == Kind::Startup && state.passing {
            return (state, None);
        }
        let timeout = Duration::from_secs(
            u64::try_from(probe.timeout_seconds.unwrap_or(1).max(1)).unwrap_or(1),
        );
        let outcome = run(runtime, container, id, probe, pod_ip, timeout).await;
        state.last = Some(Instant::now());
        let fresh = outcome.as_ref().err().cloned();
        match outcome {
            Ok(()) => {
                state.successes += 1;
                state.failures = 0;
                if state.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                    state.passing = true;
                }
            }
            Err(message) => {
                state.failures += 1;
                state.successes = 0;
                state.message = message;
                if state.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    state.passing = false;
                }
            }
        }
        self.put(id, kind, state.clone());
        (state, fresh)
    }
}

fn port_of(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

async fn run(
    runtime: &Runtime,
    container: &Container,
    id: &str,
    probe: &Probe,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let mut rt = runtime.runtime.clone();
        let request = cri::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: exec.command.clone().unwrap_or_default(),
            timeout: i64::try_from(timeout.as_secs()).unwrap_or(1),
        };
        return match rt.exec_sync(request).await {
            Ok(out) => {
                let out = out.into_inner();
                if out.exit_code == 0 {
                    Ok(())
                } else {
                    let text = String::from_utf8_lossy(if out.stdout.is_empty() {
                        &out.stderr
                    } else {
                        &out.stdout
                    })
                    .trim()
                    .to_owned();
                    Err(format!(
                        "command {:?} exited with {}: {text}",
                        exec.command.clone().unwrap_or_default(),
                        out.exit_code
                    ))
                }
            }
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                Err(format!("command timed out after {}s", timeout.as_secs()))
            }
            Err(status) => Err(status.message().to_owned()),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = port_of(container, &http.port)?;
        let host = http.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_owned());
        let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
        let https = http.scheme.as_deref() == Some("HTTPS");
        let headers: Vec<(String, String)> =
            http.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
        return http_check(&host, port, &path, https, &headers, timeout).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port_of(container, &tcp.port)?;
        let host = tcp.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_owned());
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(grpc) = &probe.grpc {
        let port = u16::try_from(grpc.port).map_err(|_| format!("bad gRPC port {}", grpc.port))?;
        let service = grpc.service.clone().unwrap_or_default();
        return tokio::time::timeout(timeout, grpc_check(pod_ip, port, service))
            .await
            .unwrap_or_else(|_| {
                Err(format!("timeout: health rpc did not complete within {}s", timeout.as_secs()))
            });
    }
    Err("the probe names no handler (exec, httpGet, tcpSocket, grpc)".into())
}

/// An httpGet probe: a GET of `path` (over TLS without checking the certificate when
/// `https`), healthy on a status from 200 to 399.
async fn http_check(
    host: &str,
    port: u16,
    path: &str,
    https: bool,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let scheme = if https { "https" } else { "http" };
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("Get \"{scheme}://{host}:{port}{path}\": {e}"))?;
        let mut stream: Box<dyn Stream> = if https {
            // As the kubelet: TLS without checking the certificate (a probe asks
            // whether the server answers, not who it is).
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("bad host {host:?}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(insecure_tls())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("Get \"{scheme}://{host}:{port}{path}\": {e}"))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut head = vec![0u8; 1024];
        let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
        let line =
            String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or_default().to_owned();
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| {
        Err(format!("Get \"{scheme}://{host}:{port}{path}\": timeout after {}s", timeout.as_secs()))
    })
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A TLS client that accepts any certificate, for HTTPS probes (the kubelet's probes skip
/// verification too).
fn insecure_tls() -> std::sync::Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let verifier = std::sync::Arc::new(crate::join::Unverified(provider.clone()));
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
                });
            std::sync::Arc::new(config.unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }))
        })
        .clone()
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse` (status 1 is SERVING).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// A gRPC probe, as the kubelet's: `grpc.health.v1.Health/Check` for `service` on the
/// pod's address, over plain HTTP/2; healthy when the answer is SERVING.
async fn grpc_check(pod_ip: &str, port: u16, service: String) -> Result<(), String> {
    let address = format!("http://{pod_ip}:{port}");
    let channel = tonic::transport::Endpoint::from_shared(address.clone())
        .map_err(|e| format!("bad address {address}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("failed to connect service \"{pod_ip}:{port}\": {e}"))?;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|e| format!("failed to connect service: {e}"))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    let answer = client
        .unary(tonic::Request::new(HealthCheckRequest { service }), path, codec)
        .await
        .map_err(|status| {
            format!("rpc error: code = {:?} desc = {}", status.code(), status.message())
        })?;
    match answer.into_inner().status {
        1 => Ok(()),
        status => {
            let name = match status {
                0 => "UNKNOWN",
                2 => "NOT_SERVING",
                3 => "SERVICE_UNKNOWN",
                _ => "UNRECOGNIZED",
            };
            Err(format!("service unhealthy (responded with \"{name}\")"))
        }
    }
}

/// Runs a lifecycle hook (postStart, preStop): exec, httpGet, tcpSocket or sleep, within
/// `timeout`.
pub async fn run_hook(
    runtime: &Runtime,
    container: &Container,
    id: &str,
    handler: &LifecycleHandler,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(sleep) = &handler.sleep {
        let wanted = Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0));
        tokio::time::sleep(wanted.min(timeout)).await;
        return Ok(());
    }
    let probe = Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        tcp_socket: handler.tcp_socket.clone(),
        ..Probe::default()
    };
    run(runtime, container, id, &probe, pod_ip, timeout.max(Duration::from_secs(1))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;

    /// A gRPC health service answering `status` to every check.
    #[derive(Clone)]
    struct Health(i32);

    impl tonic::server::NamedService for Health {
        const NAME: &'static str = "grpc.health.v1.Health";
    }

    struct Check(i32);

    impl tonic::server::UnaryService<HealthCheckRequest> for Check {
        type Response = HealthCheckResponse;
        type Future =
            std::future::Ready<Result<tonic::Response<HealthCheckResponse>, tonic::Status>>;
        fn call(&mut self, _: tonic::Request<HealthCheckRequest>) -> Self::Future {
            std::future::ready(Ok(tonic::Response::new(HealthCheckResponse { status: self.0 })))
        }
    }

    type Http = tonic::codegen::http::Request<tonic::body::Body>;
    type Answer = tonic::codegen::http::Response<tonic::body::Body>;

    impl tower::Service<Http> for Health {
        type Response = Answer;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Http) -> Self::Future {
            let status = self.0;
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                    HealthCheckResponse,
                    HealthCheckRequest,
                >::default());
                Ok(grpc.unary(Check(status), request).await)
            })
        }
    }

    async fn serve(status: i32) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Health(status))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        port
    }

    #[tokio::test]
    async fn grpc_probes_ask_the_health_service() {
        let serving = serve(1).await;
        assert_eq!(grpc_check("127.0.0.1", serving, String::new()).await, Ok(()));
        let failing = serve(2).await;
        let err = grpc_check("127.0.0.1", failing, "db".into()).await.unwrap_err();
        assert!(err.contains("NOT_SERVING"), "{err}");
        let closed =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = grpc_check("127.0.0.1", closed, String::new()).await.unwrap_err();
        assert!(err.contains("failed to connect"), "{err}");
    }

    /// Answers every connection with `status`, over TLS with a self-signed certificate
    /// when `tls`.
    async fn http_server(status: u16, tls: bool) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tls.then(|| {
            let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
            let cert = rustls::pki_types::CertificateDer::from(made.cert.der().to_vec());
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
                rustls::pki_types::PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()),
            );
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
            tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
        });
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    let mut buffer = [0u8; 1024];
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(mut tls) = acceptor.accept(stream).await {
                                let _ = tls.read(&mut buffer).await;
                                let _ = tls.write_all(answer.as_bytes()).await;
                                let _ = tls.shutdown().await;
                            }
                        }
                        None => {
                            let mut stream = stream;
                            let _ = stream.read(&mut buffer).await;
                            let _ = stream.write_all(answer.as_bytes()).await;
                        }
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probes_speak_http_and_https() {
        let second = Duration::from_secs(2);
        let plain = http_server(200, false).await;
        assert_eq!(http_check("127.0.0.1", plain, "/", false, &[], second).await, Ok(()));
        let secure = http_server(204, true).await;
        assert_eq!(http_check("127.0.0.1", secure, "/healthz", true, &[], second).await, Ok(()));
        let failing = http_server(503, true).await;
        let err = http_check("127.0.0.1", failing, "/", true, &[], second).await.unwrap_err();
        assert!(err.contains("statuscode: 503"), "{err}");
        // Plain HTTP to a TLS server is no answer.
        assert!(http_check("127.0.0.1", secure, "/", false, &[], second).await.is_err());
    }
}
