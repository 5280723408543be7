//! Port forwarding (`kubectl port-forward`) as the kubelet serves it, over SPDY/3.1
//! (`portforward.k8s.io`): for each connection it forwards, the client opens an `error`
//! stream and a `data` stream with the same `requestid` and the `port`; each is answered
//! with a SYN_REPLY; once both are there berth connects to the port on the loopback address
//! inside the pod's network namespace and copies bytes between the data stream and that
//! connection. A connection that cannot be made is reported as text on the error stream.
//! When the pod's side ends, the data stream and then the error stream end (FIN), which is
//! what the client waits for; when the client ends the data stream, the pod's side sees
//! the end of its input.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::node::Node;
use crate::spdy::{self, Frame};

/// Streams waiting for their pair, and forwarded connections, one session may hold.
const MAX_PENDING: usize = 64;
const MAX_FORWARDS: usize = 256;

/// A port forward waiting for its client.
#[derive(Debug, Clone)]
pub struct ForwardRequest {
    pub sandbox_id: String,
}

/// What the connection's writer sends, in order (header blocks share one compression
/// context, so replies are compressed there).
enum Out {
    Raw(Vec<u8>),
    Reply(u32),
}

/// A pair of streams being assembled for one forwarded connection.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

/// Serves one upgraded connection until the client leaves.
pub async fn session<S>(node: Arc<Node>, io: S, request: ForwardRequest)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (reader, mut writer) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Out>(64);
    let writing = tokio::spawn(async move {
        let mut spdy = spdy::Writer::default();
        while let Some(out) = rx.recv().await {
            let bytes = match out {
                Out::Raw(bytes) => bytes,
                Out::Reply(stream) => spdy.syn_reply(stream, 0, &[]),
            };
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    // The sandbox's network namespace (none: it uses the host's network). A sandbox that
    // is gone ends the session: never the host's loopback in its place.
    let netns = match node.sandbox(&request.sandbox_id) {
        Ok(sandbox) => sandbox.namespaces.net,
        Err(status) => {
            tracing::debug!("port forward to a sandbox that is gone: {}", status.message());
            let _ = tx.send(Out::Raw(spdy::goaway(0))).await;
            drop(tx);
            let _ = writing.await;
            return;
        }
    };
    let mut reader = spdy::Reader::new(reader);
    let mut inputs: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = Vec::new();
    loop {
        let Ok(frame) = reader.next().await else { break };
        match frame {
            Frame::SynStream { stream, .. }
                if pairs.len() >= MAX_PENDING || inputs.len() >= MAX_FORWARDS =>
            {
                // Bounded: a client may not make unbounded streams or connections.
                let _ = tx.send(Out::Raw(spdy::rst_stream(stream, spdy::REFUSED_STREAM))).await;
            }
            Frame::SynStream { stream, headers, .. } => {
                let get = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let (kind, port, id) = (get("streamtype"), get("port"), get("requestid"));
                let Ok(port) = port.parse::<u16>() else {
                    let _ = tx.send(Out::Raw(spdy::rst_stream(stream, spdy::REFUSED_STREAM))).await;
                    continue;
                };
                if tx.send(Out::Reply(stream)).await.is_err() {
                    break;
                }
                let pair = pairs.entry(id.clone()).or_default();
                pair.port = port;
                match kind.as_str() {
                    "error" => pair.error = Some(stream),
                    "data" => pair.data = Some(stream),
                    _ => {
                        let _ =
                            tx.send(Out::Raw(spdy::rst_stream(stream, spdy::REFUSED_STREAM))).await;
                        continue;
                    }
                }
                if let (Some(error), Some(data)) = (pair.error, pair.data) {
                    let port = pair.port;
                    pairs.remove(&id);
                    let (input, received) = mpsc::channel(64);
                    inputs.insert(data, input);
                    let streams = Streams { error, data, port };
                    forwards.push(tokio::spawn(forward(
                        netns.clone(),
                        request.sandbox_id.clone(),
                        streams,
                        received,
                        tx.clone(),
                    )));
                }
            }
            Frame::Data { stream, flags, data } => {
                if let Some(input) = inputs.get(&stream) {
                    if !data.is_empty() && input.send(data).await.is_err() {
                        inputs.remove(&stream);
                    }
                }
                if flags & spdy::FLAG_FIN != 0 {
                    // The end of the client's input: the pod's side sees its end.
                    inputs.remove(&stream);
                }
            }
            Frame::RstStream { stream, .. } => {
                inputs.remove(&stream);
            }
            Frame::Ping { id } => {
                let _ = tx.send(Out::Raw(spdy::ping(id))).await;
            }
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    for forward in forwards {
        forward.abort();
    }
    drop(tx);
    let _ = writing.await;
}

struct Streams {
    error: u32,
    data: u32,
    port: u16,
}

async fn forward(
    netns: Option<PathBuf>,
    sandbox: String,
    streams: Streams,
    mut input: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<Out>,
) {
    let Streams { error, data, port } = streams;
    let socket = match connect(netns, port).await {
        Ok(socket) => socket,
        Err(err) => {
            let message = format!(
                "error forwarding port {port} to pod {sandbox}: failed to connect to localhost:{port} inside the pod's network namespace: {err}"
            );
            let _ = tx.send(Out::Raw(spdy::data(error, spdy::FLAG_FIN, message.as_bytes()))).await;
            let _ = tx.send(Out::Raw(spdy::data(data, spdy::FLAG_FIN, &[]))).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = socket.into_split();
    let out = tx.clone();
    let upstream = tokio::spawn(async move {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match from_pod.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(Out::Raw(spdy::data(data, 0, &buffer[..n]))).await.is_err() {
                        return;
                    }
                }
            }
        }
        // The pod's side ended: the data stream ends, then the error stream, empty.
        let _ = out.send(Out::Raw(spdy::data(data, spdy::FLAG_FIN, &[]))).await;
        let _ = out.send(Out::Raw(spdy::data(error, spdy::FLAG_FIN, &[]))).await;
    });
    while let Some(chunk) = input.recv().await {
        if to_pod.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = to_pod.shutdown().await;
    let _ = upstream.await;
}

/// A connection to `port` on the loopback address of a network namespace (the host's
/// when there is none), IPv4 first, then IPv6. The socket belongs to the namespace it was
/// made in, whichever thread uses it later.
pub(crate) async fn connect(
    netns: Option<PathBuf>,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let made = tokio::task::spawn_blocking(move || {
        // A thread of its own joins the namespace and ends with the connection made.
        std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
            if let Some(path) = &netns {
                let file = std::fs::File::open(path)?;
                berth_sys::nix::sched::setns(
                    &file,
                    berth_sys::nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)?;
            }
            let timeout = Duration::from_secs(5);
            let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v4, timeout)
                .or_else(|_| std::net::TcpStream::connect_timeout(&v6, timeout))
        })
        .join()
        .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    made.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(made)
}
