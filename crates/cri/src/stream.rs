//! The CRI streaming server: `Exec` and `Attach` answer with a one-time URL on this
//! loopback server, and whoever holds it (the kubelet's API, `crictl`) upgrades a GET of that URL to a
//! WebSocket speaking Kubernetes' channel protocol (`v5.channel.k8s.io`, or
//! `v4.channel.k8s.io`): every binary message starts with a channel byte (0 stdin,
//! 1 stdout, 2 stderr, 3 the final status, 4 terminal resize; v5's 255 closes a channel).
//! The command runs through `berth-runc exec` with the container's process settings, on
//! pipes or on a pty whose master the runtime hands over a console socket. An attach joins
//! the container's own stdio through its supervisor (`berth_task::shim::attach`).
//! The same URLs also take a GET upgraded to SPDY/3.1 with `v4.channel.k8s.io` (what
//! `crictl exec` and `attach` speak by default): a stream per channel, opened by the
//! client with its `streamtype` (error, stdin, stdout, stderr, resize), the status JSON
//! on the error stream. `PortForward` URLs take SPDY/3.1 too (`forward`).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::node::Node;

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// How long an URL handed out by Exec stays good.
const URL_LIFETIME: Duration = Duration::from_secs(60);

const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// An exec waiting for its client.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An attach waiting for its client.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub container_id: String,
    pub stdin: bool,
    pub tty: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// What a one-time URL is for.
#[derive(Debug, Clone)]
pub enum Session {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(crate::forward::ForwardRequest),
}

impl Session {
    fn path(&self) -> &'static str {
        match self {
            Session::Exec(_) => "exec",
            Session::Attach(_) => "attach",
            Session::PortForward(_) => "portforward",
        }
    }
}

/// The server: its address and the URLs handed out.
#[derive(Debug)]
pub struct Streams {
    address: std::net::SocketAddr,
    pending: Mutex<HashMap<String, (Session, Instant)>>,
}

impl Streams {
    /// Binds 127.0.0.1 on a free port and serves until `shutdown`.
    pub async fn start(
        node: Arc<Node>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Streams>, String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("the streaming server cannot listen: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let streams = Arc::new(Streams { address, pending: Mutex::new(HashMap::new()) });
        let served = streams.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = shutdown.cancelled() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (streams, node) = (served.clone(), node.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (streams, node) = (streams.clone(), node.clone());
                        async move { Ok::<_, std::convert::Infallible>(streams.handle(node, request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(streams)
    }

    /// A one-time URL for `session`.
    pub fn register(&self, session: Session) -> Result<String, tonic::Status> {
        let token = berth_stdx::random::hex(16)
            .map_err(|e| tonic::Status::internal(format!("random bytes: {e}")))?;
        let path = session.path();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, (_, made)| made.elapsed() < URL_LIFETIME);
        pending.insert(token.clone(), (session, Instant::now()));
        Ok(format!("http://{}/{path}/{token}", self.address))
    }

    fn take(&self, token: &str) -> Option<Session> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (request, made) = pending.remove(token)?;
        (made.elapsed() < URL_LIFETIME).then_some(request)
    }

    fn handle(
        &self,
        node: Arc<Node>,
        mut request: Request<hyper::body::Incoming>,
    ) -> Response<Body> {
        let text = |code: StatusCode, message: String| {
            let mut response = Response::new(Full::new(Bytes::from(message)).boxed());
            *response.status_mut() = code;
            response
        };
        let path = request.uri().path().to_owned();
        let Some((kind, token)) = path.trim_start_matches('/').split_once('/') else {
            return text(StatusCode::NOT_FOUND, format!("{path}: no such stream"));
        };
        let Some(exec) = self.take(token).filter(|s| s.path() == kind) else {
            return text(
                StatusCode::NOT_FOUND,
                "this stream URL is unknown or expired; ask Exec or Attach for a new one".into(),
            );
        };
        let header = |name: &str| {
            request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
        };
        if let Session::PortForward(forward) = exec {
            if header("upgrade").eq_ignore_ascii_case("websocket") {
                return websocket_port_forward(node, request, forward);
            }
            return port_forward(node, request, forward);
        }
        if header("upgrade").eq_ignore_ascii_case("SPDY/3.1") {
            return spdy_upgrade(node, request, exec);
        }
        if !header("upgrade").eq_ignore_ascii_case("websocket") {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "berth's streaming server speaks WebSocket ({}) and SPDY/3.1 ({SPDY_PROTOCOL}); upgrade to one of them",
                    PROTOCOLS.join(", ")
                ),
            );
        }
        let offered = header("sec-websocket-protocol");
        let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
        let Some(protocol) = PROTOCOLS.iter().find(|p| offered.contains(p)) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("no supported subprotocol offered; berth speaks {}", PROTOCOLS.join(", ")),
            );
        };
        let key = header("sec-websocket-key");
        if key.is_empty() {
            return text(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing".into());
        }
        let upgrade = hyper::upgrade::on(&mut request);
        let protocol = (*protocol).to_owned();
        let v5 = protocol.starts_with("v5");
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    session(node, hyper_util::rt::TokioIo::new(upgraded), exec, v5).await
                }
                Err(err) => tracing::debug!("exec upgrade failed: {err}"),
            }
        });
        websocket_accepted(&key, &protocol)
    }
}

/// A port forward: the GET upgraded to SPDY/3.1 with the `portforward.k8s.io` protocol.
fn port_forward(
    node: Arc<Node>,
    mut request: Request<hyper::body::Incoming>,
    forward: crate::forward::ForwardRequest,
) -> Response<Body> {
    const PROTOCOL: &str = "portforward.k8s.io";
    let text = |code: StatusCode, message: String| {
        let mut response = Response::new(Full::new(Bytes::from(message)).boxed());
        *response.status_mut() = code;
        response
    };
    let header = |name: &str| {
        request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    };
    if !header("upgrade").eq_ignore_ascii_case("SPDY/3.1") {
        return text(
            StatusCode::BAD_REQUEST,
            "port forwarding speaks SPDY/3.1: upgrade to it (Upgrade: SPDY/3.1)".into(),
        );
    }
    let offered = header("x-stream-protocol-version");
    if !offered.is_empty() && !offered.split(',').any(|p| p.trim() == PROTOCOL) {
        return text(
            StatusCode::FORBIDDEN,
            format!("unable to upgrade: no common protocol: berth speaks {PROTOCOL}, the client offered {offered}"),
        );
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                crate::forward::session(node, hyper_util::rt::TokioIo::new(upgraded), forward).await
            }
            Err(err) => tracing::debug!("port-forward upgrade failed: {err}"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("SPDY/3.1"));
    headers.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("Upgrade"));
    headers.insert("x-stream-protocol-version", hyper::header::HeaderValue::from_static(PROTOCOL));
    response
}

/// The remote command protocol over SPDY that berth speaks (`crictl exec` and `attach`
/// use SPDY by default): the final status is a JSON `Status` on the error stream.
const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";

/// How long a SPDY client has to open the streams its request needs.
const STREAM_CREATION: Duration = Duration::from_secs(30);

/// Exec or attach: the GET upgraded to SPDY/3.1 with `v4.channel.k8s.io`.
fn spdy_upgrade(
    node: Arc<Node>,
    mut request: Request<hyper::body::Incoming>,
    session: Session,
) -> Response<Body> {
    let text = |code: StatusCode, message: String| {
        let mut response = Response::new(Full::new(Bytes::from(message)).boxed());
        *response.status_mut() = code;
        response
    };
    // The client names each protocol it speaks in a header of its own.
    let offered: Vec<String> = request
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    if !offered.iter().any(|p| p == SPDY_PROTOCOL) {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: no common protocol: berth speaks {SPDY_PROTOCOL} over SPDY, the client offered {}",
                offered.join(", ")
            ),
        );
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                spdy_session(node, hyper_util::rt::TokioIo::new(upgraded), session).await
            }
            Err(err) => tracing::debug!("exec upgrade failed: {err}"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("SPDY/3.1"));
    headers.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("Upgrade"));
    headers.insert(
        "x-stream-protocol-version",
        hyper::header::HeaderValue::from_static(SPDY_PROTOCOL),
    );
    response
}

/// What goes on the SPDY connection, in order (replies share the header compression).
enum Wire {
    Reply(u32),
    Raw(Vec<u8>),
}

/// The streams a remote command opens over SPDY, by their `streamtype`.
#[derive(Default, Debug, Clone, Copy)]
struct CommandStreams {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

/// One exec or attach over SPDY: the client opens its streams (error, then stdin, stdout,
/// stderr or resize as the request asked), the command runs with them, and its status
/// ends the error stream; every stream then ends (FIN) and the connection closes.
async fn spdy_session<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    node: Arc<Node>,
    io: S,
    session: Session,
) {
    use crate::spdy::{self, Frame};
    let (reader, mut writer) = tokio::io::split(io);
    let (wire, mut wire_rx) = tokio::sync::mpsc::channel::<Wire>(64);
    let writing = tokio::spawn(async move {
        let mut compress = spdy::Writer::default();
        while let Some(out) = wire_rx.recv().await {
            let bytes = match out {
                Wire::Reply(stream) => compress.syn_reply(stream, 0, &[]),
                Wire::Raw(bytes) => bytes,
            };
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let (stdin, stdout, stderr, tty) = match &session {
        Session::Exec(e) => (e.stdin, e.stdout, e.stderr, e.tty),
        Session::Attach(a) => (a.stdin, a.stdout, a.stderr, a.tty),
        Session::PortForward(_) => return,
    };
    let mut reader = spdy::Reader::new(reader);
    let mut streams = CommandStreams::default();
    let complete = |s: &CommandStreams| {
        s.error.is_some()
            && (!stdin || s.stdin.is_some())
            && (!stdout || s.stdout.is_some())
            && (!stderr || tty || s.stderr.is_some())
            && (!tty || s.resize.is_some())
    };
    let deadline = tokio::time::Instant::now() + STREAM_CREATION;
    while !complete(&streams) {
        let frame = match tokio::time::timeout_at(deadline, reader.next()).await {
            Ok(Ok(frame)) => frame,
            _ => {
                tracing::debug!("a SPDY exec client did not open its streams: {streams:?}");
                let _ = wire.send(Wire::Raw(spdy::goaway(0))).await;
                drop(wire);
                let _ = writing.await;
                return;
            }
        };
        match frame {
            Frame::SynStream { stream, headers, .. } => {
                let kind = headers
                    .iter()
                    .find(|(k, _)| k == "streamtype")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("");
                let slot = match kind {
                    "error" => &mut streams.error,
                    "stdin" => &mut streams.stdin,
                    "stdout" => &mut streams.stdout,
                    "stderr" => &mut streams.stderr,
                    "resize" => &mut streams.resize,
                    _ => {
                        let _ = wire
                            .send(Wire::Raw(spdy::rst_stream(stream, spdy::REFUSED_STREAM)))
                            .await;
                        continue;
                    }
                };
                *slot = Some(stream);
                let _ = wire.send(Wire::Reply(stream)).await;
            }
            Frame::Ping { id } => {
                let _ = wire.send(Wire::Raw(spdy::ping(id))).await;
            }
            Frame::GoAway { .. } => {
                drop(wire);
                let _ = writing.await;
                return;
            }
            _ => {}
        }
    }
    // The client's frames as events.
    let (event_tx, mut events) = tokio::sync::mpsc::channel::<Event>(64);
    let pings = wire.clone();
    let reading = tokio::spawn(async move {
        let mut resize_buffer = Vec::new();
        loop {
            let Ok(frame) = reader.next().await else { return };
            match frame {
                Frame::Data { stream, flags, data } if Some(stream) == streams.stdin => {
                    if !data.is_empty() && event_tx.send(Event::Stdin(data)).await.is_err() {
                        return;
                    }
                    if flags & spdy::FLAG_FIN != 0
                        && event_tx.send(Event::CloseStdin).await.is_err()
                    {
                        return;
                    }
                }
                Frame::Data { stream, data, .. } if Some(stream) == streams.resize => {
                    resize_buffer.extend_from_slice(&data);
                    for (rows, cols) in take_sizes(&mut resize_buffer) {
                        if event_tx.send(Event::Resize(rows, cols)).await.is_err() {
                            return;
                        }
                    }
                }
                Frame::RstStream { stream, .. } if Some(stream) == streams.stdin => {
                    let _ = event_tx.send(Event::CloseStdin).await;
                }
                Frame::Ping { id } => {
                    let _ = pings.send(Wire::Raw(spdy::ping(id))).await;
                }
                Frame::GoAway { .. } => return,
                _ => {}
            }
        }
    });
    // The command's output onto the streams.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Out>(64);
    let framing = {
        let wire = wire.clone();
        tokio::spawn(async move {
            let mut status_sent = false;
            while let Some(out) = rx.recv().await {
                let frame = match out {
                    Out::Data(1, data) => streams.stdout.map(|s| spdy::data(s, 0, &data)),
                    Out::Data(2, data) => streams.stderr.map(|s| spdy::data(s, 0, &data)),
                    Out::Data(3, status) => {
                        // Output first ends, then the status ends the error stream.
                        for stream in [streams.stdout, streams.stderr].into_iter().flatten() {
                            let _ =
                                wire.send(Wire::Raw(spdy::data(stream, spdy::FLAG_FIN, &[]))).await;
                        }
                        status_sent = true;
                        streams.error.map(|s| spdy::data(s, spdy::FLAG_FIN, &status))
                    }
                    _ => None,
                };
                if let Some(frame) = frame {
                    if wire.send(Wire::Raw(frame)).await.is_err() {
                        return;
                    }
                }
            }
            if !status_sent {
                for stream in [streams.stdout, streams.stderr, streams.error].into_iter().flatten()
                {
                    let _ = wire.send(Wire::Raw(spdy::data(stream, spdy::FLAG_FIN, &[]))).await;
                }
            }
        })
    };
    let status = match &session {
        Session::Exec(exec) => run(node, exec, &tx, &mut events).await,
        Session::Attach(attach) => join(node, attach, &tx, &mut events).await,
        Session::PortForward(_) => String::new(),
    };
    let _ = tx.send(Out::Data(3, status.into_bytes())).await;
    drop(tx);
    let _ = framing.await;
    reading.abort();
    let _ = reading.await;
    drop(wire);
    let _ = writing.await;
}

/// Terminal sizes from the resize stream: JSON objects one after another, perhaps split
/// across frames; what is not yet a whole object stays in the buffer.
fn take_sizes(buffer: &mut Vec<u8>) -> Vec<(u16, u16)> {
    let mut sizes = Vec::new();
    let mut consumed = 0;
    let mut objects = serde_json::Deserializer::from_slice(buffer).into_iter::<serde_json::Value>();
    while let Some(Ok(value)) = objects.next() {
        consumed = objects.byte_offset();
        let rows = value["Height"].as_u64().and_then(|h| u16::try_from(h).ok()).unwrap_or(24);
        let cols = value["Width"].as_u64().and_then(|w| u16::try_from(w).ok()).unwrap_or(80);
        sizes.push((rows, cols));
    }
    buffer.drain(..consumed);
    sizes
}

/// Port forwarding over WebSocket, as the kubelet serves it to clients that ask for it
/// (the Python client does): the ports are the query's `port` (or `ports`) values, each
/// port has a data channel (2i) and an error channel (2i+1) of `v4.channel.k8s.io`, and
/// each channel's first message is its port number (two bytes, little-endian). kubectl's
/// SPDY-in-WebSocket tunnel (`SPDY/3.1+portforward.k8s.io`, what kubectl 1.31 and later
/// ask first) is served too: see `spdy_tunnel`.
fn websocket_port_forward(
    node: Arc<Node>,
    mut request: Request<hyper::body::Incoming>,
    forward: crate::forward::ForwardRequest,
) -> Response<Body> {
    let text = |code: StatusCode, message: String| {
        let mut response = Response::new(Full::new(Bytes::from(message)).boxed());
        *response.status_mut() = code;
        response
    };
    let header = |name: &str| {
        request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    };
    let offered = header("sec-websocket-protocol");
    if offered.split(',').any(|p| p.trim() == TUNNEL_PROTOCOL) {
        let key = header("sec-websocket-key");
        if key.is_empty() {
            return text(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing".into());
        }
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    spdy_tunnel(node, hyper_util::rt::TokioIo::new(upgraded), forward).await
                }
                Err(err) => tracing::debug!("port-forward tunnel upgrade failed: {err}"),
            }
        });
        return websocket_accepted(&key, TUNNEL_PROTOCOL);
    }
    if !offered.split(',').any(|p| p.trim() == "v4.channel.k8s.io") {
        return text(
            StatusCode::BAD_REQUEST,
            format!("port forwarding over WebSocket speaks v4.channel.k8s.io (offered: {offered:?}); or upgrade to SPDY/3.1"),
        );
    }
    let key = header("sec-websocket-key");
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing".into());
    }
    let mut ports = Vec::new();
    for pair in request.uri().query().unwrap_or("").split('&') {
        let Some((name, value)) = pair.split_once('=') else { continue };
        if name != "port" && name != "ports" {
            continue;
        }
        for value in value.split([',', ' ']).filter(|v| !v.is_empty()) {
            match value.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return text(StatusCode::BAD_REQUEST, format!("{value:?} is not a port")),
            }
        }
    }
    if ports.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "port forwarding over WebSocket needs the ports in the query (?port=8080)".into(),
        );
    }
    if ports.len() > 64 {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{} ports asked: at most 64 per connection; open another", ports.len()),
        );
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                forward_channels(node, hyper_util::rt::TokioIo::new(upgraded), forward, ports).await
            }
            Err(err) => tracing::debug!("port-forward upgrade failed: {err}"),
        }
    });
    websocket_accepted(&key, "v4.channel.k8s.io")
}

/// The 101 that accepts a WebSocket upgrade (RFC 6455) with `protocol`.
fn websocket_accepted(key: &str, protocol: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("websocket"));
    headers.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("Upgrade"));
    if let Ok(value) = hyper::header::HeaderValue::from_str(&accept_key(key)) {
        headers.insert("sec-websocket-accept", value);
    }
    if let Ok(value) = hyper::header::HeaderValue::from_str(protocol) {
        headers.insert("sec-websocket-protocol", value);
    }
    response
}

/// kubectl's WebSocket subprotocol for port forwarding over SPDY in a WebSocket.
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// SPDY tunnelled in WebSocket, as Kubernetes' tunnelling connection carries it: the
/// SPDY connection's bytes in binary messages, in order, either way. The SPDY side is
/// the port-forward session every SPDY client gets (`forward::session`), over a pipe.
async fn spdy_tunnel<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    node: Arc<Node>,
    io: S,
    request: crate::forward::ForwardRequest,
) {
    let (inner, outer) = tokio::io::duplex(64 * 1024);
    let session = tokio::spawn(crate::forward::session(node, inner, request));
    let (mut client_reader, mut client_writer) = tokio::io::split(io);
    let (mut pipe_reader, mut pipe_writer) = tokio::io::split(outer);
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    // Client to session: binary messages' payloads into the pipe; pings answered.
    let inbound = async move {
        loop {
            match read_message(&mut client_reader).await {
                Ok((0x2 | 0x0, payload)) => {
                    if pipe_writer.write_all(&payload).await.is_err() {
                        return;
                    }
                }
                Ok((0x9, payload)) => {
                    if pong_tx.send(payload).await.is_err() {
                        return;
                    }
                }
                Ok((0x8, _)) | Err(_) => {
                    let _ = pipe_writer.shutdown().await;
                    return;
                }
                Ok(_) => {} // text frames and pongs carry nothing here
            }
        }
    };
    // Session to client: what the pipe gives, a binary message per read; then a close.
    let outbound = async move {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                read = pipe_reader.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if write_frame(&mut client_writer, 0x2, &buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                },
                Some(ping) = pong_rx.recv() => {
                    if write_frame(&mut client_writer, 0xA, &ping).await.is_err() {
                        return;
                    }
                }
            }
        }
        // A normal closure (1000).
        let _ = write_frame(&mut client_writer, 0x8, &1000u16.to_be_bytes()).await;
        let _ = client_writer.shutdown().await;
    };
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
    session.abort();
    let _ = session.await;
}

async fn forward_channels<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    node: Arc<Node>,
    io: S,
    request: crate::forward::ForwardRequest,
    ports: Vec<u16>,
) {
    let (mut reader, writer) = tokio::io::split(io);
    let (tx, rx) = tokio::sync::mpsc::channel::<Out>(64);
    let writer_task = tokio::spawn(write_channels(writer, rx));
    // A sandbox that is gone ends the session: never the host's loopback in its place.
    let netns = match node.sandbox(&request.sandbox_id) {
        Ok(sandbox) => sandbox.namespaces.net,
        Err(_) => {
            drop(tx);
            let _ = writer_task.await;
            return;
        }
    };
    let mut inputs = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        for channel in [data, error] {
            let _ = tx.send(Out::Data(channel, port.to_le_bytes().to_vec())).await;
        }
        let (input, mut received) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        inputs.push(input);
        let (tx, netns, sandbox) = (tx.clone(), netns.clone(), request.sandbox_id.clone());
        tasks.spawn(async move {
            let socket = match crate::forward::connect(netns, port).await {
                Ok(socket) => socket,
                Err(err) => {
                    let message = format!("error forwarding port {port} to pod {sandbox}: failed to connect to localhost:{port} inside the pod's network namespace: {err}");
                    let _ = tx.send(Out::Data(error, message.into_bytes())).await;
                    return;
                }
            };
            let (mut from_pod, mut to_pod) = socket.into_split();
            let out = tx.clone();
            let mut upstream = tokio::spawn(async move {
                let mut buffer = vec![0u8; 32 * 1024];
                while let Ok(n) = from_pod.read(&mut buffer).await {
                    if n == 0 || out.send(Out::Data(data, buffer[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            });
            // Until the pod closes its side or the client stops sending.
            loop {
                tokio::select! {
                    _ = &mut upstream => break,
                    chunk = received.recv() => match chunk {
                        Some(chunk) => {
                            if to_pod.write_all(&chunk).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
            upstream.abort();
            let _ = to_pod.shutdown().await;
        });
    }
    // The client's messages go to the ports' inputs from a task of their own, so no
    // frame is ever cut in half by the session's end.
    let pongs = tx.clone();
    let mut reading = tokio::spawn(async move {
        loop {
            let Ok((opcode, payload)) = read_message(&mut reader).await else { return };
            match opcode {
                0x8 => return,
                0x9 => {
                    let _ = pongs.send(Out::Pong(payload)).await;
                }
                0x1 | 0x2 if !payload.is_empty() => {
                    let channel = usize::from(payload[0]);
                    // Data channels carry the client's bytes; error channels nothing.
                    if channel % 2 == 0 {
                        if let Some(input) = inputs.get(channel / 2) {
                            let _ = input.send(payload[1..].to_vec()).await;
                        }
                    }
                }
                _ => {}
            }
        }
    });
    // The session ends when every port's connection has ended (as the kubelet closes it)
    // or when the client leaves.
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {}
        _ = &mut reading => {}
    }
    reading.abort();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let _ = writer_task.await;
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// One WebSocket frame as read: opcode and (unmasked) payload. Fragments are joined.
async fn read_message<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut message = Vec::new();
    let mut first_opcode = None;
    loop {
        let mut head = [0u8; 2];
        reader.read_exact(&mut head).await?;
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let mut length = u64::from(head[1] & 0x7f);
        if length == 126 {
            let mut ext = [0u8; 2];
            reader.read_exact(&mut ext).await?;
            length = u64::from(u16::from_be_bytes(ext));
        } else if length == 127 {
            let mut ext = [0u8; 8];
            reader.read_exact(&mut ext).await?;
            length = u64::from_be_bytes(ext);
        }
        if length > 16 << 20 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a WebSocket frame over 16 MiB",
            ));
        }
        let mut mask = [0u8; 4];
        if masked {
            reader.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; usize::try_from(length).unwrap_or(0)];
        reader.read_exact(&mut payload).await?;
        if masked {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
        }
        if opcode >= 0x8 {
            // Control frames come whole, even between fragments.
            return Ok((opcode, payload));
        }
        if first_opcode.is_none() {
            first_opcode = Some(opcode);
        }
        message.extend_from_slice(&payload);
        if fin {
            return Ok((first_opcode.unwrap_or(opcode), message));
        }
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | opcode);
    let length = payload.len();
    if length < 126 {
        frame.push(length as u8);
    } else if length <= usize::from(u16::MAX) {
        frame.push(126);
        frame.extend_from_slice(&(length as u16).to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(length as u64).to_be_bytes());
    }
    frame.extend_from_slice(payload);
    writer.write_all(&frame).await?;
    writer.flush().await
}

enum Out {
    Data(u8, Vec<u8>),
    Pong(Vec<u8>),
}

/// A channel-protocol WebSocket's writing side: each message as a binary frame led by its
/// channel byte, pongs as they are asked for, and a close frame once every sender is gone.
async fn write_channels<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: tokio::sync::mpsc::Receiver<Out>,
) {
    while let Some(out) = rx.recv().await {
        let written = match out {
            Out::Data(channel, data) => {
                let mut payload = Vec::with_capacity(data.len() + 1);
                payload.push(channel);
                payload.extend_from_slice(&data);
                write_frame(&mut writer, 0x2, &payload).await
            }
            Out::Pong(data) => write_frame(&mut writer, 0xA, &data).await,
        };
        if written.is_err() {
            return;
        }
    }
    let _ = write_frame(&mut writer, 0x8, &1000u16.to_be_bytes()).await;
    let _ = writer.shutdown().await;
}

/// What the client sends, whatever carries it.
enum Event {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize(u16, u16),
}

/// The WebSocket client's messages as events (pings answered here); the sender drops,
/// ending the events, when the client closes or goes away.
async fn websocket_events<R: AsyncRead + Unpin>(
    mut reader: R,
    events: tokio::sync::mpsc::Sender<Event>,
    tx: tokio::sync::mpsc::Sender<Out>,
    v5: bool,
) {
    loop {
        let Ok((opcode, payload)) = read_message(&mut reader).await else { return };
        let event = match opcode {
            0x8 => return,
            0x9 => {
                let _ = tx.send(Out::Pong(payload)).await;
                continue;
            }
            0x1 | 0x2 if !payload.is_empty() => match payload[0] {
                0 => Event::Stdin(payload[1..].to_vec()),
                4 => match terminal_size(&payload[1..]) {
                    Some((rows, cols)) => Event::Resize(rows, cols),
                    None => continue,
                },
                255 if v5 && payload.get(1) == Some(&0) => Event::CloseStdin,
                _ => continue,
            },
            _ => continue,
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// Where stdin goes.
enum Input {
    Pipe(tokio::process::ChildStdin),
    Pty(std::fs::File),
    None,
}

async fn session<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    node: Arc<Node>,
    io: S,
    session: Session,
    v5: bool,
) {
    let (reader, writer) = tokio::io::split(io);
    let (tx, rx) = tokio::sync::mpsc::channel::<Out>(64);
    let tx_for_pongs = tx.clone();
    let writer_task = tokio::spawn(write_channels(writer, rx));
    let (event_tx, mut events) = tokio::sync::mpsc::channel::<Event>(64);
    let reading =
        tokio::spawn(async move { websocket_events(reader, event_tx, tx_for_pongs, v5).await });
    let status = match &session {
        Session::Exec(exec) => run(node, exec, &tx, &mut events).await,
        Session::Attach(attach) => join(node, attach, &tx, &mut events).await,
        Session::PortForward(_) => status_message(Err("port forwarding speaks SPDY".into())),
    };
    // The reader holds a sender for its pongs: it goes first, so the writer can end.
    reading.abort();
    let _ = reading.await;
    let _ = tx.send(Out::Data(3, status.into_bytes())).await;
    drop(tx);
    let _ = writer_task.await;
}

/// The final status message of channel 3, as the kubelet writes it.
fn status_message(code: Result<i32, String>) -> String {
    match code {
        Ok(0) => r#"{"metadata":{},"status":"Success"}"#.to_owned(),
        Ok(code) => serde_json::json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
        })
        .to_string(),
        Err(message) => serde_json::json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"}).to_string(),
    }
}

async fn run(
    node: Arc<Node>,
    exec: &ExecRequest,
    tx: &tokio::sync::mpsc::Sender<Out>,
    events: &mut tokio::sync::mpsc::Receiver<Event>,
) -> String {
    if let Err(status) = node.running_container(&exec.container_id) {
        return status_message(Err(status.message().to_owned()));
    }
    let console = if exec.tty {
        let dir = std::env::temp_dir();
        let path =
            dir.join(format!("berth-exec-{}.sock", berth_stdx::random::hex(8).unwrap_or_default()));
        match std::os::unix::net::UnixListener::bind(&path) {
            Ok(listener) => Some((listener, path)),
            Err(err) => return status_message(Err(format!("console socket: {err}"))),
        }
    } else {
        None
    };
    let prepared = node.exec_command(
        &exec.container_id,
        &exec.cmd,
        exec.tty,
        console.as_ref().map(|(_, p)| p.as_path()),
    );
    let (command, file) = match prepared {
        Ok(prepared) => prepared,
        Err(status) => return status_message(Err(status.message().to_owned())),
    };
    let mut command = tokio::process::Command::from(command);
    let piped =
        |on: bool| if on { std::process::Stdio::piped() } else { std::process::Stdio::null() };
    if exec.tty {
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
    } else {
        command.stdin(piped(exec.stdin)).stdout(piped(exec.stdout)).stderr(piped(exec.stderr));
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let _ = std::fs::remove_file(&file);
            return status_message(Err(format!("run berth-runc exec: {err}")));
        }
    };
    let mut pumps = Vec::new();
    let mut master: Option<OwnedFd> = None;
    let mut input = Input::None;
    if let Some((listener, path)) = console {
        let accepted = tokio::task::spawn_blocking(move || {
            let _ = listener.set_nonblocking(false);
            let got = listener.accept().map_err(|e| e.to_string()).and_then(|(stream, _)| {
                berth_runtime::receive_master(&OwnedFd::from(stream)).map_err(|e| e.to_string())
            });
            let _ = std::fs::remove_file(&path);
            got
        });
        match tokio::time::timeout(Duration::from_secs(30), accepted).await {
            Ok(Ok(Ok(fd))) => master = Some(fd),
            _ => {
                let _ = child.kill().await;
                let _ = std::fs::remove_file(&file);
                return status_message(Err("the runtime did not hand over the terminal".into()));
            }
        }
        if let Some(fd) = &master {
            let (Ok(read_side), Ok(write_side)) = (fd.try_clone(), fd.try_clone()) else {
                let _ = child.kill().await;
                return status_message(Err("cannot duplicate the terminal".into()));
            };
            input =
                if exec.stdin { Input::Pty(std::fs::File::from(write_side)) } else { Input::None };
            let tx = tx.clone();
            pumps.push(tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut file = std::fs::File::from(read_side);
                let mut buffer = vec![0u8; 32 * 1024];
                // A pty whose other side closed says EIO: that is the end.
                while let Ok(n) = file.read(&mut buffer) {
                    if n == 0 || tx.blocking_send(Out::Data(1, buffer[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }));
        }
    } else {
        if let Some(stdin) = child.stdin.take() {
            input = Input::Pipe(stdin);
        }
        for (channel, stream) in [
            (1u8, child.stdout.take().map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>)),
            (2u8, child.stderr.take().map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>)),
        ] {
            let Some(mut stream) = stream else { continue };
            let tx = tx.clone();
            pumps.push(tokio::spawn(async move {
                let mut buffer = vec![0u8; 32 * 1024];
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 || tx.send(Out::Data(channel, buffer[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }));
        }
    }
    // The client's input until the command ends.
    let code = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(|e| e.to_string()),
            event = events.recv() => match event {
                // The client went away: the command goes too.
                None => {
                    let _ = child.kill().await;
                    break child.wait().await.map_err(|e| e.to_string());
                }
                Some(Event::Stdin(data)) => match &mut input {
                    Input::Pipe(stdin) => { let _ = stdin.write_all(&data).await; }
                    Input::Pty(file) => { use std::io::Write; let _ = file.write_all(&data); }
                    Input::None => {}
                },
                Some(Event::Resize(rows, cols)) => {
                    if let Some(fd) = &master {
                        let _ = berth_sys::tty::set_window_size(fd.as_fd(), berth_sys::tty::WindowSize { rows, cols });
                    }
                }
                Some(Event::CloseStdin) => input = Input::None,
            },
        }
    };
    drop(input);
    for mut pump in pumps {
        // A pipe a background process still holds open never ends: its pump goes, so
        // nothing is sent after the status.
        if tokio::time::timeout(Duration::from_secs(5), &mut pump).await.is_err() {
            pump.abort();
        }
    }
    let _ = std::fs::remove_file(&file);
    match code {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            status_message(Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(9))))
        }
        Err(message) => status_message(Err(message)),
    }
}

/// A resize message's size (`{"Width": 80, "Height": 24}`) as rows and columns.
fn terminal_size(payload: &[u8]) -> Option<(u16, u16)> {
    let size = serde_json::from_slice::<serde_json::Value>(payload).ok()?;
    let rows = size["Height"].as_u64().and_then(|h| u16::try_from(h).ok()).unwrap_or(24);
    let cols = size["Width"].as_u64().and_then(|w| u16::try_from(w).ok()).unwrap_or(80);
    Some((rows, cols))
}

/// An attach: the container's own output to the client, the client's input and terminal
/// sizes to the container, through its supervisor, until the container ends (Success) or
/// the client leaves.
async fn join(
    node: Arc<Node>,
    request: &AttachRequest,
    tx: &tokio::sync::mpsc::Sender<Out>,
    events: &mut tokio::sync::mpsc::Receiver<Event>,
) -> String {
    use berth_task::shim::frame;
    let (id, stdin) = (request.container_id.clone(), request.stdin);
    let connected = tokio::task::spawn_blocking(move || node.attach(&id, stdin)).await;
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(status)) => return status_message(Err(status.message().to_owned())),
        Err(err) => return status_message(Err(err.to_string())),
    };
    let stream = match stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(stream))
    {
        Ok(stream) => stream,
        Err(err) => return status_message(Err(format!("attach: {err}"))),
    };
    let (mut from_task, mut to_task) = stream.into_split();
    let (stdout, stderr, out) = (request.stdout, request.stderr, tx.clone());
    let mut pump = tokio::spawn(async move {
        loop {
            let mut head = [0u8; frame::HEADER];
            if from_task.read_exact(&mut head).await.is_err() {
                return;
            }
            let Ok((kind, length)) = frame::header(head) else { return };
            let mut data = vec![0u8; length];
            if from_task.read_exact(&mut data).await.is_err() {
                return;
            }
            let wanted = (kind == frame::STDOUT && stdout) || (kind == frame::STDERR && stderr);
            if wanted && out.send(Out::Data(kind, data)).await.is_err() {
                return;
            }
        }
    });
    loop {
        tokio::select! {
            _ = &mut pump => break,
            event = events.recv() => {
                let bytes: Vec<u8> = match event {
                    None => break,
                    // In frames the supervisor accepts (a message may be larger).
                    Some(Event::Stdin(data)) => data
                        .chunks(frame::MAX)
                        .flat_map(|chunk| frame::encode(frame::STDIN, chunk))
                        .collect(),
                    Some(Event::Resize(rows, cols)) => {
                        frame::encode(frame::RESIZE, &frame::size(rows, cols))
                    }
                    Some(Event::CloseStdin) => frame::encode(frame::CLOSE_STDIN, &[]),
                };
                if to_task.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        }
    }
    pump.abort();
    status_message(Ok(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sizes_are_whole_json_objects_across_frames() {
        let mut buffer = br#"{"Width":80,"Height":24}{"Width":1"#.to_vec();
        assert_eq!(take_sizes(&mut buffer), vec![(24, 80)]);
        assert_eq!(buffer, br#"{"Width":1"#.to_vec());
        buffer.extend_from_slice(br#"00,"Height":30}"#);
        assert_eq!(take_sizes(&mut buffer), vec![(30, 100)]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn the_accept_key_of_rfc_6455() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn statuses_name_the_exit_code() {
        assert!(status_message(Ok(0)).contains("Success"));
        let failed: serde_json::Value = serde_json::from_str(&status_message(Ok(3))).unwrap();
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
    }

    #[tokio::test]
    async fn frames_round_trip_masked_and_fragmented() {
        // A masked text frame "hi" split into two fragments, then a ping.
        let mask = [1u8, 2, 3, 4];
        let masked = |data: &[u8]| -> Vec<u8> {
            data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect()
        };
        let mut wire = vec![0x01, 0x81];
        wire.extend_from_slice(&mask);
        wire.extend(masked(b"h"));
        wire.extend([0x80, 0x81]);
        wire.extend_from_slice(&mask);
        wire.extend(masked(b"i"));
        wire.extend([0x89, 0x00]);
        let mut reader = &wire[..];
        assert_eq!(read_message(&mut reader).await.unwrap(), (0x1, b"hi".to_vec()));
        assert_eq!(read_message(&mut reader).await.unwrap(), (0x9, Vec::new()));
        let mut out = Vec::new();
        write_frame(&mut out, 0x2, &vec![7u8; 300]).await.unwrap();
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
    }
}
