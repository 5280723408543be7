//! `berth system service`: the Docker Engine API (1.41, the version Debian 12's Docker
//! speaks, as the minimum; clients that ask for a later version get the same shapes) on a
//! unix socket or a TCP address, over the same state the `berth` commands use: a
//! container made through the API is one `berth ps` shows, and the other way round.
//!
//! This first part serves what `docker version/info/ps/run -d/create/start/stop/kill/
//! restart/wait/rm/logs/inspect/images/pull/network ls/volume ls` need. Handlers are
//! the engine's blocking calls, run on tokio's blocking pool; JSON shapes are those the
//! CLI prints (`inspect` is `berth inspect`'s object).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use berth_engine::container::{Record, Status};
use berth_engine::{Engine, MountSpec, PortSpec, RestartPolicy, RunOptions};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::cli::Global;

mod containers;
mod images;
mod objects;

/// The largest JSON body taken (archives are spooled to disk instead).
const MAX_JSON_BODY: usize = 16 << 20;

/// The API version berth speaks; the oldest it accepts.
const API_VERSION: &str = "1.41";
const MIN_API_VERSION: &str = "1.24";

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// unix:///PATH or tcp://127.0.0.1:PORT (tcp has no authentication: keep it on
    /// loopback).
    #[arg(long, short = 'H', default_value = "unix:///run/berth/docker.sock")]
    pub listen: String,
}

/// An API error: Docker's status code and `{"message": ...}` body.
struct ApiError(StatusCode, String);

impl ApiError {
    fn of(err: berth_engine::Error) -> ApiError {
        use berth_engine::Error as E;
        let status = match &err {
            E::NoSuchContainer(_) | E::NoSuchPath(_) => StatusCode::NOT_FOUND,
            E::Conflict(_) | E::WrongState { .. } => StatusCode::CONFLICT,
            E::Invalid { .. } => StatusCode::BAD_REQUEST,
            E::Image(berth_image::Error::ImageNotFound { .. }) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &err {
            E::NoSuchContainer(name) => format!("No such container: {name}"),
            E::Image(berth_image::Error::ImageNotFound { name, .. }) => {
                format!("No such image: {name}")
            }
            other => other.to_string(),
        };
        ApiError(status, message)
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl From<berth_image::Error> for ApiError {
    fn from(err: berth_image::Error) -> ApiError {
        ApiError::of(berth_engine::Error::Image(err))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> ApiError {
        match err.downcast::<berth_engine::Error>() {
            Ok(engine) => ApiError::of(engine),
            Err(err) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
        }
    }
}

/// Every response body: whole (`Full`) or fed chunk by chunk from a thread ([`Feed`]).
type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

type Reply = Result<Response<Body>, ApiError>;

fn whole(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_reply(status: StatusCode, value: &Value) -> Reply {
    Ok(Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Api-Version", API_VERSION)
        .body(whole(value.to_string()))
        .unwrap_or_default())
}

fn empty(status: StatusCode) -> Reply {
    Ok(Response::builder()
        .status(status)
        .header("Api-Version", API_VERSION)
        .body(whole(Bytes::new()))
        .unwrap_or_default())
}

/// The sending end of a streamed body, for a producer on a thread of its own: `send`
/// says false once the client has gone, which is the producer's cue to stop.
pub(crate) struct Feed(tokio::sync::mpsc::Sender<Bytes>);

impl Feed {
    fn send(&self, chunk: impl Into<Bytes>) -> bool {
        self.0.blocking_send(chunk.into()).is_ok()
    }

    fn line(&self, value: &Value) -> bool {
        self.send(format!("{value}\n"))
    }

    /// Whether the client is still there (a closed connection drops the body).
    fn open(&self) -> bool {
        !self.0.is_closed()
    }
}

/// A body whose chunks come from a [`Feed`]; it ends when the feed is dropped.
struct FedBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for FedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

/// A 200 response with a streamed body, and the feed that writes it. The producer runs
/// on its own thread (`std::thread::spawn`), never on the runtime's.
fn streamed(content_type: &str) -> (Feed, Response<Body>) {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let response = Response::builder()
        .header("Content-Type", content_type)
        .header("Api-Version", API_VERSION)
        .body(FedBody(receiver).boxed())
        .unwrap_or_default();
    (Feed(sender), response)
}

/// The request body as JSON; an empty body is `null`.
fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("invalid JSON in the request body: {e}")))
}

/// Docker's `filters` query parameter: `{"key": ["v", ...]}` (or `{"key": {"v": true}}`
/// from old clients) as key → values.
fn filters(q: &BTreeMap<String, String>) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let Some(text) = q.get("filters").filter(|f| !f.is_empty()) else {
        return Ok(BTreeMap::new());
    };
    let parsed: BTreeMap<String, Value> = serde_json::from_str(text)
        .map_err(|e| ApiError::bad(format!("invalid filters {text:?}: {e}")))?;
    Ok(parsed
        .into_iter()
        .map(|(key, value)| {
            let values = match value {
                Value::Array(list) => {
                    list.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
                }
                Value::Object(map) => map.keys().cloned().collect(),
                _ => Vec::new(),
            };
            (key, values)
        })
        .collect())
}

/// Docker's `RestartPolicy` object (`Name`, `MaximumRetryCount`) as berth's; `None` when
/// it names none.
fn restart_policy(value: &Value) -> Result<Option<RestartPolicy>, ApiError> {
    let Some(name) = value["Name"].as_str().filter(|n| !n.is_empty()) else { return Ok(None) };
    let retries = value["MaximumRetryCount"].as_u64().unwrap_or(0);
    let text = if name == "on-failure" && retries > 0 {
        format!("{name}:{retries}")
    } else {
        name.to_owned()
    };
    RestartPolicy::parse(&text).map(Some).map_err(|e| ApiError::bad(e.to_string()))
}

/// The `until` filter, in seconds since the epoch.
fn until(filters: &BTreeMap<String, Vec<String>>) -> Result<Option<f64>, ApiError> {
    match filters.get("until").and_then(|u| u.first()) {
        Some(text) => crate::containers::parse_time(text)
            .map(Some)
            .map_err(|e| ApiError::bad(format!("until: {e:#}"))),
        None => Ok(None),
    }
}

/// Whether `labels` has every `key` or `key=value` of a `label` filter.
fn labels_match(labels: &BTreeMap<String, String>, wanted: &[String]) -> bool {
    wanted.iter().all(|l| match l.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(l),
    })
}

/// Writes a request body to an unnamed file under `<root>/tmp` (on the root's disk, not
/// a tmpfs), rewound for reading; it is gone when closed.
async fn spool(
    mut body: hyper::body::Incoming,
    root: &std::path::Path,
) -> Result<std::fs::File, String> {
    use std::io::{Seek, Write};
    let dir = root.join("tmp");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let mut file =
        tempfile::tempfile_in(&dir).map_err(|e| format!("cannot spool the upload: {e}"))?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("cannot read the request body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            // Small blocking writes on the runtime: page-cache copies, not waits.
            file.write_all(data).map_err(|e| format!("cannot spool the upload: {e}"))?;
        }
    }
    file.rewind().map_err(|e| format!("cannot spool the upload: {e}"))?;
    Ok(file)
}

/// The query string as a map (`a=1&b=x`), percent-decoded (`+` is a space, as Go's
/// clients encode it).
/// A key given more than once (`t=a&t=b`) keeps every value, joined by NUL.
fn query(request: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in berth_stdx::url::query_pairs(request.uri().query().unwrap_or(""), true) {
        map.entry(key)
            .and_modify(|v| v.extend(['\u{0}'].into_iter().chain(value.chars())))
            .or_insert(value);
    }
    if let Some(auth) = request.headers().get("X-Registry-Auth").and_then(|v| v.to_str().ok()) {
        map.insert(images::REGISTRY_AUTH.to_owned(), auth.to_owned());
    }
    map
}

fn decode(text: &str) -> String {
    berth_stdx::url::decode(text, false)
}

fn truthy(q: &BTreeMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "1" || v == "true" || v == "True")
}

/// The path without its `/v1.41` prefix, as segments.
fn segments(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(decode).collect();
    if parts.first().is_some_and(|p| p.starts_with('v') && p[1..].contains('.')) {
        parts.remove(0);
    }
    parts
}

pub fn service(global: &Global, args: ServiceArgs) -> Result<i32> {
    let engine = Arc::new(
        Engine::open(&global.root)
            .with_context(|| format!("cannot open the berth root {}", global.root.display()))?,
    );
    let global = Arc::new(global.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        if let Some(path) = args.listen.strip_prefix("unix://") {
            let path = std::path::PathBuf::from(path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // A socket left by a service that died is replaced; a live one is not taken.
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                bail!(
                    "a service already listens on {}: stop it, or give another --listen",
                    path.display()
                );
            }
            if let Err(err) = std::fs::remove_file(&path) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    return Err(err).with_context(|| format!("cannot replace {}", path.display()));
                }
            }
            // The socket gives root's powers: root's alone (as Docker's is root:docker
            // 660), from the moment it exists: made under a umask that leaves it 0600.
            use berth_sys::nix::sys::stat::{umask, Mode};
            let before = umask(Mode::from_bits_truncate(0o177));
            let bound = tokio::net::UnixListener::bind(&path);
            umask(before);
            let listener =
                bound.with_context(|| format!("cannot listen on {}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            eprintln!("serving the Docker API on unix://{}", path.display());
            loop {
                let (stream, _) = listener.accept().await?;
                serve(stream, engine.clone(), global.clone());
            }
        } else if let Some(address) = args.listen.strip_prefix("tcp://") {
            // No TLS and no authentication: loopback only.
            let parsed: std::net::SocketAddr = address
                .parse()
                .with_context(|| format!("--listen tcp://{address}: use tcp://127.0.0.1:PORT"))?;
            if !parsed.ip().is_loopback() {
                bail!(
                    "--listen tcp://{address}: berth serves this API without TLS or authentication, so only on a loopback address (127.0.0.1 or [::1]); use a unix socket to share it"
                );
            }
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            eprintln!("serving the Docker API on tcp://{address}");
            loop {
                let (stream, _) = listener.accept().await?;
                serve(stream, engine.clone(), global.clone());
            }
        } else {
            bail!("--listen {:?}: use unix:///PATH or tcp://HOST:PORT", args.listen)
        }
    })
}

fn serve<S>(stream: S, engine: Arc<Engine>, global: Arc<Global>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |request| {
            let (engine, global) = (engine.clone(), global.clone());
            async move { Ok::<_, Infallible>(respond(request, engine, global).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .with_upgrades()
            .await;
    });
}

async fn respond(
    mut request: Request<hyper::body::Incoming>,
    engine: Arc<Engine>,
    global: Arc<Global>,
) -> Response<Body> {
    let method = request.method().clone();
    let parts = segments(request.uri().path());
    let q = query(&request);
    tracing::debug!("{method} {}", request.uri());
    // The hijacked streams: attach, and the start of an exec.
    let hijack = method == Method::POST
        && parts.len() == 3
        && ((parts[0] == "containers" && parts[2] == "attach")
            || (parts[0] == "exec" && parts[2] == "start"));
    // A web page may not drive the API: browsers mark every request a page makes (Origin
    // on cross-origin ones, the Sec-Fetch headers on all). The Content-Type cannot be the
    // test: the docker client sends `docker cp` archives as text/plain.
    let headers = request.headers();
    if headers.contains_key(hyper::header::ORIGIN) || headers.contains_key("sec-fetch-mode") {
        return json_reply(
            StatusCode::FORBIDDEN,
            &json!({"message": "requests from web pages (an Origin or Sec-Fetch-Mode header) are refused"}),
        )
        .unwrap_or_default();
    }
    let on_upgrade = hijack.then(|| hyper::upgrade::on(&mut request));
    // Archives (a build context, an image, a filesystem, `docker cp`'s tar) go to an
    // unnamed file on the root's disk as they arrive; any other body is JSON, held in
    // memory up to a bound.
    let uploads = (method == Method::POST
        && (matches!(parts.as_slice(), [a] if a == "build")
            || matches!(parts.as_slice(), [a, b] if a == "images" && (b == "load" || b == "create"))))
        || (method == Method::PUT && parts.len() == 3 && parts[2] == "archive");
    let (body, upload) = if uploads {
        match spool(request.into_body(), &global.root).await {
            Ok(file) => (Bytes::new(), Some(file)),
            Err(message) => {
                return json_reply(StatusCode::BAD_REQUEST, &json!({ "message": message }))
                    .unwrap_or_default();
            }
        }
    } else {
        match http_body_util::Limited::new(request.into_body(), MAX_JSON_BODY).collect().await {
            Ok(collected) => (collected.to_bytes(), None),
            Err(err) => {
                return json_reply(
                    StatusCode::BAD_REQUEST,
                    &json!({"message": format!("cannot read the request body (at most {} MiB): {err}", MAX_JSON_BODY >> 20)}),
                )
                .unwrap_or_default();
            }
        }
    };
    // A detached exec start is a plain request: no stream to hand over.
    let on_upgrade = on_upgrade.filter(|_| {
        !(parts[0] == "exec"
            && serde_json::from_slice::<Value>(&body)
                .is_ok_and(|b| b["Detach"].as_bool() == Some(true)))
    });
    if method == Method::POST
        && parts.len() == 3
        && parts[0] == "exec"
        && parts[2] == "start"
        && on_upgrade.is_none()
    {
        let (id, global) = (parts[1].clone(), global.clone());
        return tokio::task::spawn_blocking(move || exec_detached(&global, &id))
            .await
            .unwrap_or_else(|_| {
                Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "handler panicked".into()))
            })
            .unwrap_or_else(|ApiError(status, message)| {
                json_reply(status, &json!({ "message": message })).unwrap_or_default()
            });
    }
    let reply = if let Some(on_upgrade) = on_upgrade {
        if parts[0] == "containers" {
            attach(on_upgrade, &engine, &parts[1], &q)
        } else {
            exec_start(on_upgrade, &global, &parts[1], &body)
        }
    } else {
        tokio::task::spawn_blocking(move || {
            route(&method, &parts, &q, &body, upload, &engine, &global)
        })
        .await
        .unwrap_or_else(|_| {
            Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "handler panicked".into()))
        })
    };
    match reply {
        Ok(response) => response,
        Err(ApiError(status, message)) => {
            json_reply(status, &json!({ "message": message })).unwrap_or_default()
        }
    }
}

fn route(
    method: &Method,
    parts: &[String],
    q: &BTreeMap<String, String>,
    body: &Bytes,
    upload: Option<std::fs::File>,
    engine: &Arc<Engine>,
    global: &Arc<Global>,
) -> Reply {
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    // What an upload route reads: the spooled file (an empty one if none came).
    let upload = || -> Result<std::fs::File, ApiError> {
        match upload {
            Some(file) => Ok(file),
            None => tempfile::tempfile().map_err(internal("cannot make a temporary file")),
        }
    };
    match (method, p.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => Ok(Response::builder()
            .header("Api-Version", API_VERSION)
            .header("Docker-Experimental", "false")
            .header("Ostype", "linux")
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(whole(Bytes::from_static(b"OK")))
            .unwrap_or_default()),
        (&Method::GET, ["version"]) => json_reply(StatusCode::OK, &version()),
        (&Method::GET, ["info"]) => json_reply(StatusCode::OK, &info(engine, global)?),
        (&Method::GET, ["containers", "json"]) => list(engine, q),
        (&Method::POST, ["containers", "create"]) => create(engine, q, body),
        (&Method::GET, ["containers", id, "json"]) => {
            let record = engine.lock(id).map_err(ApiError::of)?.record;
            json_reply(StatusCode::OK, &crate::containers::container_json_of(engine, &record))
        }
        (&Method::POST, ["containers", id, "start"]) => {
            let record =
                engine.peek(&engine.resolve_id(id).map_err(ApiError::of)?).map_err(ApiError::of)?;
            if matches!(record.state.status, Status::Running | Status::Paused) {
                return empty(StatusCode::NOT_MODIFIED);
            }
            let started = engine.start(id).map_err(ApiError::of)?;
            // An attach waiting for this start gets the stream that carries the output
            // from its first byte; otherwise the monitor lives on without it.
            // The first gets that stream; any other attach made before the start gets a
            // connection of its own from this moment.
            let waiting = lock(&PENDING).remove(&started.id).unwrap_or_default();
            let mut stream = Some(started.stream);
            for waiter in waiting.into_iter().filter(|w| !w.is_closed()) {
                let given = match stream.take() {
                    Some(first) => Ok(first),
                    None => berth_engine::monitor::connect(&engine.container_dir(&started.id)),
                };
                if let Ok(given) = given {
                    let _ = waiter.send(given);
                }
            }
            empty(StatusCode::NO_CONTENT)
        }
        (&Method::POST, ["containers", id, "stop"]) => {
            let record =
                engine.peek(&engine.resolve_id(id).map_err(ApiError::of)?).map_err(ApiError::of)?;
            if !matches!(record.state.status, Status::Running | Status::Paused | Status::Restarting)
            {
                return empty(StatusCode::NOT_MODIFIED);
            }
            let timeout = q.get("t").and_then(|t| t.parse().ok());
            engine.stop(id, timeout).map_err(ApiError::of)?;
            empty(StatusCode::NO_CONTENT)
        }
        (&Method::POST, ["containers", id, "restart"]) => {
            let timeout = q.get("t").and_then(|t| t.parse().ok());
            engine.stop(id, timeout).map_err(ApiError::of)?;
            drop(engine.start(id).map_err(ApiError::of)?);
            empty(StatusCode::NO_CONTENT)
        }
        (&Method::POST, ["containers", id, "kill"]) => {
            let signal = q.get("signal").cloned().unwrap_or_else(|| "SIGKILL".into());
            engine.kill(id, &signal).map_err(ApiError::of)?;
            empty(StatusCode::NO_CONTENT)
        }
        (&Method::POST, ["containers", id, "wait"]) => wait(engine, id, q),
        (&Method::POST, ["containers", id, "pause"]) => containers::pause(engine, id, true),
        (&Method::POST, ["containers", id, "unpause"]) => containers::pause(engine, id, false),
        (&Method::POST, ["containers", id, "rename"]) => containers::rename(engine, id, q),
        (&Method::GET, ["containers", id, "top"]) => containers::top(engine, id, q),
        (&Method::GET, ["containers", id, "stats"]) => containers::stats(engine, id, q),
        (&Method::GET, ["containers", id, "changes"]) => containers::changes(engine, id),
        (&Method::GET, ["containers", id, "export"]) => containers::export(engine, id),
        (&Method::GET | &Method::HEAD | &Method::PUT, ["containers", id, "archive"]) => {
            containers::archive(engine, method, id, q, upload()?)
        }
        (&Method::POST, ["containers", id, "update"]) => containers::update(engine, id, body),
        (&Method::POST, ["containers", "prune"]) => containers::prune(engine, q),
        (&Method::POST, ["containers", id, "resize"]) => resize(engine, id, q),
        (&Method::POST, ["exec", id, "resize"]) => {
            let terminal = lock(&EXECS).get(*id).map(|e| e.terminal.clone()).ok_or_else(|| {
                ApiError(StatusCode::NOT_FOUND, format!("No such exec instance: {id}"))
            })?;
            let size = |key: &str| q.get(key).and_then(|v| v.parse::<u16>().ok()).unwrap_or(0);
            let (rows, cols) = (size("h"), size("w"));
            if let Some(terminal) = terminal.filter(|_| rows > 0 && cols > 0) {
                use std::os::fd::AsFd;
                berth_sys::tty::set_window_size(
                    terminal.as_fd(),
                    berth_sys::tty::WindowSize { rows, cols },
                )
                .map_err(|e| {
                    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot resize: {e}"))
                })?;
            }
            empty(StatusCode::OK)
        }
        (&Method::POST, ["containers", id, "exec"]) => exec_create(engine, id, body),
        (&Method::GET, ["exec", id, "json"]) => {
            let execs = lock(&EXECS);
            let exec = execs.get(*id).ok_or_else(|| {
                ApiError(StatusCode::NOT_FOUND, format!("No such exec instance: {id}"))
            })?;
            json_reply(
                StatusCode::OK,
                &json!({
                    "ID": id, "ContainerID": exec.container, "Running": exec.running, "ExitCode": exec.exit_code,
                    "Pid": exec.pid, "OpenStdin": exec.stdin, "OpenStdout": true, "OpenStderr": true,
                    "ProcessConfig": {"entrypoint": exec.command.first(), "arguments": exec.command.get(1..).unwrap_or_default(), "tty": exec.tty, "user": exec.user, "privileged": exec.privileged},
                }),
            )
        }
        (&Method::DELETE, ["containers", id]) => {
            let resolved = engine.resolve_id(id).map_err(ApiError::of)?;
            engine.remove(id, truthy(q, "force"), truthy(q, "v")).map_err(ApiError::of)?;
            lock(&PENDING).remove(&resolved);
            empty(StatusCode::NO_CONTENT)
        }
        (&Method::GET, ["containers", id, "logs"]) => logs(engine, id, q),
        (&Method::GET, ["images", "json"]) => list_images(global, q),
        (&Method::GET, ["images", "search"]) => json_reply(StatusCode::OK, &json!([])),
        (&Method::POST, ["images", "create"]) if q.contains_key("fromSrc") => {
            images::import(global, q, upload()?)
        }
        (&Method::POST, ["images", "create"]) => images::pull(global, q),
        (&Method::POST, ["images", "load"]) => images::load(global, upload()?),
        (&Method::POST, ["images", "prune"]) => images::prune(global, q),
        (&Method::GET, ["images", "get"]) => images::save(
            global,
            q.get("names")
                .map(|n| n.split('\u{0}').map(str::to_owned).collect())
                .unwrap_or_default(),
        ),
        (&Method::GET, ["images", rest @ .., "get"]) if !rest.is_empty() => {
            images::save(global, vec![rest.join("/")])
        }
        (&Method::GET, ["images", rest @ .., "history"]) if !rest.is_empty() => {
            images::history(global, &rest.join("/"))
        }
        (&Method::POST, ["images", rest @ .., "tag"]) if !rest.is_empty() => {
            images::tag(global, &rest.join("/"), q)
        }
        (&Method::POST, ["images", rest @ .., "push"]) if !rest.is_empty() => {
            images::push(global, &rest.join("/"), q)
        }
        (&Method::GET, ["images", rest @ .., "json"]) if !rest.is_empty() => {
            let name = rest.join("/");
            let store = crate::images::open_store(global)?;
            let image = store
                .resolve(&name)
                .map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("No such image: {name}")))?;
            json_reply(StatusCode::OK, &crate::images::image_json(&store, &image)?)
        }
        (&Method::DELETE, ["images", rest @ ..]) if !rest.is_empty() => {
            images::remove(global, &rest.join("/"), q)
        }
        (&Method::POST, ["build"]) => images::build(global, q, upload()?),
        (&Method::POST, ["auth"]) => auth(global, body),
        (&Method::GET, ["networks"]) => objects::network_list(engine, q),
        (&Method::POST, ["networks", "create"]) => objects::network_create(engine, body),
        (&Method::POST, ["networks", "prune"]) => objects::network_prune(engine, q),
        (&Method::GET, ["networks", id]) => objects::network_inspect(engine, id),
        (&Method::DELETE, ["networks", id]) => objects::network_remove(engine, id),
        (&Method::POST, ["networks", id, "connect"]) => objects::network_connect(engine, id, body),
        (&Method::POST, ["networks", id, "disconnect"]) => {
            objects::network_disconnect(engine, id, body)
        }
        (&Method::GET, ["volumes"]) => objects::volume_list(engine, q),
        (&Method::POST, ["volumes", "create"]) => objects::volume_create(engine, body),
        (&Method::POST, ["volumes", "prune"]) => objects::volume_prune(engine, q),
        (&Method::GET, ["volumes", name]) => objects::volume_inspect(engine, name),
        (&Method::DELETE, ["volumes", name]) => objects::volume_remove(engine, name, q),
        (&Method::GET, ["events"]) => objects::events(engine, q),
        (&Method::GET, ["system", "df"]) => objects::disk_usage(engine, global),
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("page not found: {method} /{} is not served by berth yet", parts.join("/")),
        )),
    }
}

/// Attaches waiting for their container's start, by container id. Removing the container
/// drops its waiters, which ends their attaches.
static PENDING: std::sync::Mutex<
    BTreeMap<String, Vec<tokio::sync::oneshot::Sender<std::os::unix::net::UnixStream>>>,
> = std::sync::Mutex::new(BTreeMap::new());

/// Exec instances made by `POST /containers/{id}/exec`, by exec id.
static EXECS: std::sync::Mutex<BTreeMap<String, ExecState>> =
    std::sync::Mutex::new(BTreeMap::new());

#[derive(Debug, Clone, Default)]
struct ExecState {
    container: String,
    command: Vec<String>,
    env: Vec<String>,
    user: String,
    workdir: String,
    tty: bool,
    stdin: bool,
    privileged: bool,
    running: bool,
    exit_code: Option<i32>,
    pid: u32,
    /// The pty master of an exec with a terminal, while it runs.
    terminal: Option<Arc<std::os::fd::OwnedFd>>,
    /// The 0600 file that hands the exec its environment (values stay off command
    /// lines, which every user can read); removed when the exec ends.
    env_file: Option<Arc<tempfile::NamedTempFile>>,
}

/// An exec ended: its code is kept, its terminal and environment file go.
fn exec_finished(id: &str, code: i32) {
    if let Some(state) = lock(&EXECS).get_mut(id) {
        state.running = false;
        state.exit_code = Some(code);
        state.terminal = None;
        state.env_file = None;
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The response that hands the connection over to a raw stream.
fn upgraded_response() -> Response<Body> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("Content-Type", "application/vnd.docker.raw-stream")
        .header("Connection", "Upgrade")
        .header("Upgrade", "tcp")
        .header("Api-Version", API_VERSION)
        .body(whole(Bytes::new()))
        .unwrap_or_default()
}

/// One chunk of output as Docker frames it: raw with a terminal, else an 8-byte header
/// (stream, three zeros, big-endian length) before it.
fn docker_frame(stream: u8, data: &[u8], tty: bool) -> Vec<u8> {
    if tty {
        return data.to_vec();
    }
    let mut frame = vec![stream, 0, 0, 0];
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
    frame.extend_from_slice(data);
    frame
}

/// `POST /containers/{id}/attach?stream=1&stdin=1&stdout=1&stderr=1`: the container's
/// output (and input) over the hijacked connection. A container not yet started is
/// attached at its start, from its first byte of output.
fn attach(
    on_upgrade: hyper::upgrade::OnUpgrade,
    engine: &Engine,
    id: &str,
    q: &BTreeMap<String, String>,
) -> Reply {
    let id = engine.resolve_id(id).map_err(ApiError::of)?;
    let record = engine.peek(&id).map_err(ApiError::of)?;
    let (tty, stdin) = (record.options.tty, truthy(q, "stdin"));
    let (want_out, want_err) = (truthy(q, "stdout"), truthy(q, "stderr"));
    let later = if matches!(record.state.status, Status::Running | Status::Paused) {
        let stream =
            berth_engine::monitor::connect(&engine.container_dir(&id)).map_err(ApiError::of)?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let _ = sender.send(stream);
        receiver
    } else {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        lock(&PENDING).entry(id.clone()).or_default().push(sender);
        receiver
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let Ok(stream) = later.await else { return };
        let _ = relay_monitor(
            hyper_util::rt::TokioIo::new(upgraded),
            stream,
            tty,
            stdin,
            want_out,
            want_err,
        )
        .await;
    });
    Ok(upgraded_response())
}

/// Frames from the container's monitor to the client in Docker's framing, and the
/// client's input to the monitor, until the container exits.
async fn relay_monitor(
    client: hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>,
    monitor: std::os::unix::net::UnixStream,
    tty: bool,
    stdin: bool,
    want_out: bool,
    want_err: bool,
) -> std::io::Result<()> {
    use berth_engine::attach;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    monitor.set_nonblocking(true)?;
    let monitor = tokio::net::UnixStream::from_std(monitor)?;
    // (tokio's owned halves would shut the socket down when the input ends, and the
    // monitor would take that for a client gone: these halves do not.)
    let (mut from_monitor, mut to_monitor) = tokio::io::split(monitor);
    let (mut from_client, mut to_client) = tokio::io::split(client);
    if stdin {
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 8192];
            loop {
                let n = from_client.read(&mut buffer).await.unwrap_or(0);
                let mut frame = Vec::new();
                let kind = if n == 0 { attach::STDIN_EOF } else { attach::STDIN };
                let _ = attach::write_frame(&mut frame, kind, &buffer[..n]);
                if to_monitor.write_all(&frame).await.is_err() || n == 0 {
                    return;
                }
            }
        });
    }
    loop {
        let mut header = [0u8; 5];
        if from_monitor.read_exact(&mut header).await.is_err() {
            break;
        }
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut payload = vec![0u8; length];
        from_monitor.read_exact(&mut payload).await?;
        match header[0] {
            attach::STDOUT if want_out => {
                to_client.write_all(&docker_frame(1, &payload, tty)).await?
            }
            attach::STDERR if want_err => {
                to_client.write_all(&docker_frame(2, &payload, tty)).await?
            }
            attach::EXIT => break,
            _ => {}
        }
    }
    to_client.shutdown().await
}

/// `POST /containers/{id}/exec`: an exec instance, run by its start.
fn exec_create(engine: &Engine, id: &str, body: &Bytes) -> Reply {
    let config: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("invalid JSON in the request body: {e}")))?;
    let id = engine.resolve_id(id).map_err(ApiError::of)?;
    let record = engine.peek(&id).map_err(ApiError::of)?;
    if record.state.status != Status::Running {
        return Err(ApiError(StatusCode::CONFLICT, format!("Container {id} is not running")));
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let command = strings(&config["Cmd"]);
    if command.is_empty() {
        return Err(ApiError::bad("No exec command specified"));
    }
    let exec_id = berth_engine::random_id().map_err(ApiError::of)?;
    // Execs go with their container, as Docker's do.
    let containers: std::collections::BTreeSet<String> =
        engine.ids().map_err(ApiError::of)?.into_iter().collect();
    lock(&EXECS).retain(|_, e| e.running || containers.contains(&e.container));
    lock(&EXECS).insert(
        exec_id.clone(),
        ExecState {
            container: id,
            command,
            env: strings(&config["Env"]),
            user: config["User"].as_str().unwrap_or("").to_owned(),
            workdir: config["WorkingDir"].as_str().unwrap_or("").to_owned(),
            tty: config["Tty"].as_bool().unwrap_or(false),
            stdin: config["AttachStdin"].as_bool().unwrap_or(false),
            privileged: config["Privileged"].as_bool().unwrap_or(false),
            ..ExecState::default()
        },
    );
    json_reply(StatusCode::CREATED, &json!({"Id": exec_id}))
}

/// `POST /exec/{id}/start`: runs the exec (berth's own `exec`, as a child with pipes) and
/// relays its output in Docker's frames; its exit code is kept for `GET /exec/{id}/json`.
/// An exec that exists and has not run yet.
fn startable_exec(id: &str) -> Result<ExecState, ApiError> {
    let exec = lock(&EXECS)
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("No such exec instance: {id}")))?;
    if exec.running || exec.exit_code.is_some() {
        return Err(ApiError(StatusCode::CONFLICT, format!("exec {id} has already run")));
    }
    Ok(exec)
}

/// `berth exec` with the exec's settings; the caller gives it its stdio. The environment
/// goes in a 0600 file under `<root>/tmp` (kept in the exec's state until it ends), not on
/// the command line.
fn exec_command(
    global: &Global,
    id: &str,
    exec: &ExecState,
) -> Result<std::process::Command, ApiError> {
    let mut command = std::process::Command::new("/proc/self/exe");
    command.arg("--root").arg(&global.root).arg("exec");
    if exec.stdin {
        command.arg("-i");
    }
    if exec.tty {
        command.arg("-t");
    }
    // A value with a newline cannot be a line of the file: it stays an argument.
    let (lines, multiline): (Vec<&String>, Vec<&String>) =
        exec.env.iter().partition(|e| !e.contains('\n'));
    if !lines.is_empty() {
        use std::io::Write;
        let dir = global.root.join("tmp");
        std::fs::create_dir_all(&dir).map_err(internal("cannot make the root's tmp"))?;
        let mut file = tempfile::Builder::new()
            .prefix("exec-env-")
            .tempfile_in(&dir)
            .map_err(internal("cannot write the exec's environment"))?;
        for line in lines {
            writeln!(file, "{line}").map_err(internal("cannot write the exec's environment"))?;
        }
        command.arg("--env-file").arg(file.path());
        if let Some(state) = lock(&EXECS).get_mut(id) {
            state.env_file = Some(Arc::new(file));
        }
    }
    for e in multiline {
        command.arg("-e").arg(e);
    }
    if !exec.user.is_empty() {
        command.arg("-u").arg(&exec.user);
    }
    if !exec.workdir.is_empty() {
        command.arg("-w").arg(&exec.workdir);
    }
    if exec.privileged {
        command.arg("--privileged");
    }
    command.arg(&exec.container).args(&exec.command);
    Ok(command)
}

/// `POST /exec/{id}/start` with `Detach`: the exec runs with no input or output; this
/// service waits for it, so that its exit code is kept for `GET /exec/{id}/json`.
fn exec_detached(global: &Global, id: &str) -> Reply {
    let mut exec = startable_exec(id)?;
    exec.stdin = false;
    exec.tty = false;
    let mut child = exec_command(global, id, &exec)?
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(internal("cannot run the exec"))?;
    if let Some(state) = lock(&EXECS).get_mut(id) {
        state.running = true;
        state.pid = child.id();
    }
    let id = id.to_owned();
    std::thread::spawn(move || {
        let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
        exec_finished(&id, code);
    });
    empty(StatusCode::OK)
}

fn exec_start(
    on_upgrade: hyper::upgrade::OnUpgrade,
    global: &Global,
    id: &str,
    body: &Bytes,
) -> Reply {
    let _ = body;
    let exec = startable_exec(id)?;
    let command = exec_command(global, id, &exec)?;
    if exec.tty {
        return exec_on_terminal(on_upgrade, id, &exec, command);
    }
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(if exec.stdin { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(false);
    let mut child = command.spawn().map_err(|e| {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot run the exec: {e}"))
    })?;
    {
        let mut execs = lock(&EXECS);
        if let Some(state) = execs.get_mut(id) {
            state.running = true;
            state.pid = child.id().unwrap_or(0);
        }
    }
    let (id, tty) = (id.to_owned(), exec.tty);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upgraded = on_upgrade.await.ok().map(hyper_util::rt::TokioIo::new);
        let (mut from_client, to_client) = match upgraded {
            Some(io) => {
                let (r, w) = tokio::io::split(io);
                (Some(r), Some(w))
            }
            None => (None, None),
        };
        if let (Some(mut input), Some(mut from)) = (child.stdin.take(), from_client.take()) {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut input).await;
                let _ = input.shutdown().await;
            });
        }
        let to_client = std::sync::Arc::new(tokio::sync::Mutex::new(to_client));
        let mut pumps = Vec::new();
        for (stream, pipe) in [
            (
                1u8,
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            ),
            (
                2u8,
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            ),
        ] {
            let Some(mut pipe) = pipe else { continue };
            let to_client = to_client.clone();
            pumps.push(tokio::spawn(async move {
                let mut buffer = vec![0u8; 32 * 1024];
                loop {
                    let n = pipe.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    let mut guard = to_client.lock().await;
                    if let Some(client) = guard.as_mut() {
                        let _ = client.write_all(&docker_frame(stream, &buffer[..n], tty)).await;
                    }
                }
            }));
        }
        for pump in pumps {
            let _ = pump.await;
        }
        let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1);
        exec_finished(&id, code);
        // The exit code is kept before the stream ends: the client asks for it next.
        let mut guard = to_client.lock().await;
        if let Some(client) = guard.as_mut() {
            let _ = client.shutdown().await;
        }
        drop(guard);
    });
    Ok(upgraded_response())
}

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> ApiError + '_ {
    move |e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
}

/// An exec with a terminal (`docker exec -it`): `berth exec -t` runs on a pty whose
/// master this service relays raw to and from the client; `resize` sets its size.
fn exec_on_terminal(
    on_upgrade: hyper::upgrade::OnUpgrade,
    id: &str,
    exec: &ExecState,
    mut command: std::process::Command,
) -> Reply {
    use std::os::fd::AsFd;
    // Both ends are opened close-on-exec (std opens /dev/ptmx so, the peer comes by
    // TIOCGPTPEER with O_CLOEXEC): nothing else this service starts (another exec, a
    // container's monitor) holds this terminal. The child gets the peer as its stdio,
    // which survives its exec.
    let master: std::os::fd::OwnedFd = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(berth_sys::libc::O_NOCTTY)
            .open("/dev/ptmx")
            .map_err(internal("cannot open a terminal"))?
            .into()
    };
    let opened = berth_sys::tty::unlock(master.as_fd())
        .and_then(|()| berth_sys::tty::open_peer(master.as_fd()));
    let peer = opened
        .map_err(|e| internal("cannot open a terminal")(std::io::Error::other(e.to_string())))?;
    struct Pty {
        master: std::os::fd::OwnedFd,
        slave: std::os::fd::OwnedFd,
    }
    let pty = Pty { master, slave: peer };
    let _ = berth_sys::tty::set_window_size(
        pty.master.as_fd(),
        berth_sys::tty::WindowSize { rows: 24, cols: 80 },
    );
    berth_sys::tty::spawn_on_terminal(&mut command, pty.slave)
        .map_err(internal("cannot give the exec a terminal"))?;
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(false);
    let mut child = command.spawn().map_err(internal("cannot run the exec"))?;
    // The peer's copies held for the child close here: the master then reads EIO when
    // the exec ends.
    drop(command);
    let master = Arc::new(pty.master);
    if let Some(state) = lock(&EXECS).get_mut(id) {
        state.running = true;
        state.pid = child.id().unwrap_or(0);
        state.terminal = Some(master.clone());
    }
    let (id, stdin) = (id.to_owned(), exec.stdin);
    let reader = master.try_clone().map_err(internal("cannot use the terminal"))?;
    let writer = master.try_clone().map_err(internal("cannot use the terminal"))?;
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let upgraded = on_upgrade.await.ok().map(hyper_util::rt::TokioIo::new);
        let mut reader = tokio::fs::File::from_std(std::fs::File::from(reader));
        let mut writer = tokio::fs::File::from_std(std::fs::File::from(writer));
        if let Some(client) = upgraded {
            let (mut from_client, mut to_client) = tokio::io::split(client);
            let input = stdin.then(|| {
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut writer).await;
                })
            });
            // Ends with EIO once every holder of the peer is gone, or when the client
            // cannot be written to any more.
            let _ = tokio::io::copy(&mut reader, &mut to_client).await;
            // Every copy of the master goes: a process still on the terminal (its client
            // gone) gets its hangup, as on a closed terminal.
            drop(reader);
            if let Some(input) = input {
                input.abort();
            }
            if let Some(state) = lock(&EXECS).get_mut(&id) {
                state.terminal = None;
            }
            let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1);
            exec_finished(&id, code);
            let _ = to_client.shutdown().await;
        } else {
            // No client to take the output: hang the terminal up.
            drop((reader, writer));
            if let Some(state) = lock(&EXECS).get_mut(&id) {
                state.terminal = None;
            }
            let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1);
            exec_finished(&id, code);
        }
    });
    Ok(upgraded_response())
}

/// `POST /containers/{id}/wait?condition=not-running|next-exit|removed`: the headers at
/// once (the docker client waits for them before it starts the container), the body when
/// the condition is met; the watch ends when the client goes.
fn wait(engine: &Arc<Engine>, id: &str, q: &BTreeMap<String, String>) -> Reply {
    let id = engine.resolve_id(id).map_err(ApiError::of)?;
    let first = engine.peek(&id).map_err(ApiError::of)?;
    let condition = q
        .get("condition")
        .filter(|c| !c.is_empty())
        .cloned()
        .unwrap_or_else(|| "not-running".into());
    if !matches!(condition.as_str(), "not-running" | "next-exit" | "removed") {
        return Err(ApiError::bad(format!(
            "invalid condition: {condition:?}: use not-running, next-exit or removed"
        )));
    }
    let exited = |record: &Record| {
        !matches!(record.state.status, Status::Running | Status::Paused | Status::Restarting)
    };
    let (feed, response) = streamed("application/json");
    let engine = engine.clone();
    std::thread::spawn(move || {
        while feed.open() {
            match engine.peek(&id) {
                Ok(record) => {
                    let ran = record.state.started_at != first.state.started_at
                        || matches!(
                            first.state.status,
                            Status::Running | Status::Paused | Status::Restarting
                        );
                    let done = match condition.as_str() {
                        "next-exit" => ran && exited(&record),
                        "removed" => false,
                        _ => exited(&record),
                    };
                    if done {
                        feed.line(&json!({"StatusCode": record.state.exit_code, "Error": null}));
                        return;
                    }
                }
                // Removed (--rm, or by someone): its code is the last `die` it recorded.
                Err(_) => {
                    let (events, _) = berth_engine::events::history(engine.root());
                    let code = events
                        .iter()
                        .rev()
                        .find(|e| e.actor.id == id && e.action == "die")
                        .and_then(|e| e.actor.attributes.get("exitCode"))
                        .and_then(|c| c.parse::<i32>().ok())
                        .unwrap_or(0);
                    feed.line(&json!({"StatusCode": code, "Error": null}));
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    Ok(response)
}

fn version() -> Value {
    json!({
        "Platform": {"Name": "berth"},
        "Components": [{"Name": "Engine", "Version": env!("CARGO_PKG_VERSION"), "Details": {
            "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
            "Arch": std::env::consts::ARCH, "Os": "linux", "Experimental": "false",
            "GitCommit": "", "GoVersion": "", "BuildTime": "",
            "KernelVersion": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        }}],
        "BuildTime": "",
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": berth_image::manifest::Platform::host().architecture,
        "KernelVersion": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn info(engine: &Engine, global: &Global) -> Result<Value> {
    let records = engine.list()?;
    let running = records.iter().filter(|r| r.state.status == Status::Running).count();
    let paused = records.iter().filter(|r| r.state.status == Status::Paused).count();
    let images = crate::images::open_store(global)?.list()?.len();
    let mut value = json!({
        "ID": "berth",
        "Containers": records.len(),
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": records.len() - running - paused,
        "Images": images,
        "Driver": "overlay2",
        "DockerRootDir": global.root,
        "OperatingSystem": "berth",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "MemTotal": crate::containers::host_memory(),
        "Name": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "KernelVersion": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "2" } else { "1" },
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "Runtimes": {"berth": {"path": "berth"}},
        "DefaultRuntime": "berth",
        "Warnings": [],
    });
    let more = json!({
        // What the machine and berth allow, read where berth reads it.
        "MemoryLimit": true,
        "SwapLimit": true,
        "KernelMemory": false,
        "KernelMemoryTCP": false,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "CPUShares": true,
        "CPUSet": true,
        "PidsLimit": true,
        "OomKillDisable": true,
        "IPv4Forwarding": std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1"),
        "BridgeNfIptables": false,
        "BridgeNfIp6tables": false,
        "Debug": false,
        "NFd": std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0),
        "NGoroutines": std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0),
        "SystemTime": berth_engine::now(),
        "LoggingDriver": "json-file",
        "NEventsListener": 0,
        "OSVersion": "",
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {"InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {}, "Mirrors": []},
        "GenericResources": null,
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Labels": [],
        "ExperimentalBuild": false,
        "LiveRestoreEnabled": true,
        "Isolation": "",
        "InitBinary": "tini",
        "ContainerdCommit": {"ID": "", "Expected": ""},
        "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""},
        "DriverStatus": [["Backing Filesystem", "overlayfs"]],
        "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "none"], "Authorization": null, "Log": ["json-file", "none"]},
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
    });
    if let (Some(all), Value::Object(more)) = (value.as_object_mut(), more) {
        all.extend(more);
    }
    Ok(value)
}

/// `GET /containers/json`: `all`, `limit` (which, as Docker's, lists stopped containers
/// too), and the filters `name`, `id`, `label`, `status`, `ancestor`, `exited`,
/// `network`, `volume`, `health`; any other filter is refused, never ignored.
fn list(engine: &Engine, q: &BTreeMap<String, String>) -> Reply {
    let filters = filters(q)?;
    const KNOWN: &[&str] =
        &["name", "id", "label", "status", "ancestor", "exited", "network", "volume", "health"];
    if let Some(unknown) = filters.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad(format!(
            "invalid filter '{unknown}': berth filters containers by {}",
            KNOWN.join(", ")
        )));
    }
    let none = Vec::new();
    let values = |key: &str| filters.get(key).unwrap_or(&none);
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let all = truthy(q, "all") || limit.is_some();
    let mut records = engine.list().map_err(ApiError::of)?;
    // Newest first, as Docker lists them.
    records.sort_by(|a, b| b.created.cmp(&a.created));
    let mut rows = Vec::new();
    for record in records {
        let running =
            matches!(record.state.status, Status::Running | Status::Paused | Status::Restarting);
        let statuses = values("status");
        if !all && statuses.is_empty() && !running {
            continue;
        }
        if !statuses.is_empty() && !statuses.contains(&record.state.status.to_string()) {
            continue;
        }
        let names = values("name");
        if !names.is_empty()
            && !names.iter().any(|n| record.name.contains(n.trim_start_matches('/')))
        {
            continue;
        }
        let ids = values("id");
        if !ids.is_empty() && !ids.iter().any(|i| record.id.starts_with(i.as_str())) {
            continue;
        }
        if !labels_match(&record.options.labels, values("label")) {
            continue;
        }
        let ancestors = values("ancestor");
        if !ancestors.is_empty()
            && !ancestors.iter().any(|a| {
                let a = a.trim_start_matches("sha256:");
                record.image == *a
                    || record.image_id.trim_start_matches("sha256:").starts_with(a)
                    || reference_matches(&[json!(record.image)], a)
            })
        {
            continue;
        }
        let exited = values("exited");
        let exited_with = |c: &String| c.parse::<i32>().ok() == Some(record.state.exit_code);
        if !exited.is_empty()
            && (record.state.status != Status::Exited || !exited.iter().any(exited_with))
        {
            continue;
        }
        let networks = values("network");
        if !networks.is_empty()
            && !networks.iter().any(|n| record.uses_network(n) || record.options.network == *n)
        {
            continue;
        }
        let volumes = values("volume");
        if !volumes.is_empty()
            && !volumes.iter().any(|v| {
                record.mounts.iter().any(|m| m.name == *v || m.destination == *v || m.source == *v)
            })
        {
            continue;
        }
        let health = values("health");
        if !health.is_empty() {
            let state = record.state.health.as_ref().map_or("none", |h| h.status.as_str());
            if !health.iter().any(|h| h == state) {
                continue;
            }
        }
        rows.push(row(&record));
    }
    if let Some(limit) = limit {
        rows.truncate(limit);
    }
    json_reply(StatusCode::OK, &Value::Array(rows))
}

/// One container as `GET /containers/json` lists it.
pub(super) fn row(record: &Record) -> Value {
    let ports: Vec<Value> = record
        .network
        .iter()
        .flat_map(|n| n.ports.iter())
        .map(|p| json!({"IP": p.host_ip, "PrivatePort": p.container_port, "PublicPort": p.host_port, "Type": p.protocol}))
        .collect();
    let networks: serde_json::Map<String, Value> = record
        .networks()
        .map(|n| (n.network.clone(), json!({"IPAddress": n.ip, "Gateway": n.gateway, "MacAddress": n.mac, "IPPrefixLen": n.prefix_len})))
        .collect();
    let created = berth_image::config::parse_rfc3339(&record.created).unwrap_or(0);
    json!({
        "Id": record.id,
        "Names": [format!("/{}", record.name)],
        "Image": record.image,
        "ImageID": record.image_id,
        "Command": std::iter::once(record.path.clone()).chain(record.args.iter().cloned()).collect::<Vec<_>>().join(" "),
        "Created": created,
        "Ports": ports,
        "Labels": record.options.labels,
        "State": record.state.status.to_string(),
        "Status": crate::containers::status_text(record),
        "HostConfig": {"NetworkMode": record.options.network},
        "NetworkSettings": {"Networks": networks},
        "Mounts": record.mounts.iter().map(crate::containers::mount_json).collect::<Vec<_>>(),
    })
}

/// `POST /containers/create?name=`: Docker's `Config` + `HostConfig` as berth's options.
fn create(engine: &Engine, q: &BTreeMap<String, String>, body: &Bytes) -> Reply {
    let config: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("invalid JSON in the request body: {e}")))?;
    let host = &config["HostConfig"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let image = config["Image"]
        .as_str()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| ApiError::bad("config has no Image"))?
        .to_owned();
    let mut publish = Vec::new();
    if let Some(bindings) = host["PortBindings"].as_object() {
        for (port, list) in bindings {
            for binding in list.as_array().into_iter().flatten() {
                let host_ip = binding["HostIp"].as_str().unwrap_or("");
                let host_port = binding["HostPort"].as_str().unwrap_or("");
                let spec = match (host_ip, host_port) {
                    ("", "") => port.clone(),
                    ("", p) => format!("{p}:{port}"),
                    (ip, p) => format!("{ip}:{p}:{port}"),
                };
                publish.extend(PortSpec::parse(&spec).map_err(|e| ApiError::bad(e.to_string()))?);
            }
        }
    }
    let mut mounts = Vec::new();
    for bind in strings(&host["Binds"]) {
        mounts.push(MountSpec::parse_volume(&bind).map_err(|e| ApiError::bad(e.to_string()))?);
    }
    for anonymous in config["Volumes"].as_object().into_iter().flat_map(|v| v.keys()) {
        if !mounts.iter().any(|m| m.destination == *anonymous) {
            mounts.push(
                MountSpec::parse_volume(anonymous).map_err(|e| ApiError::bad(e.to_string()))?,
            );
        }
    }
    for mount in host["Mounts"].as_array().into_iter().flatten() {
        let mut spec = format!(
            "type={},target={}",
            mount["Type"].as_str().unwrap_or("volume"),
            mount["Target"].as_str().unwrap_or("")
        );
        if let Some(source) = mount["Source"].as_str().filter(|s| !s.is_empty()) {
            spec.push_str(&format!(",source={source}"));
        }
        if mount["ReadOnly"].as_bool() == Some(true) {
            spec.push_str(",readonly");
        }
        mounts.push(MountSpec::parse_mount(&spec).map_err(|e| ApiError::bad(e.to_string()))?);
    }
    for (target, options) in host["Tmpfs"].as_object().into_iter().flatten() {
        let spec = match options.as_str().filter(|o| !o.is_empty()) {
            Some(o) => format!("{target}:{o}"),
            None => target.clone(),
        };
        mounts.push(MountSpec::parse_tmpfs(&spec).map_err(|e| ApiError::bad(e.to_string()))?);
    }
    let restart = restart_policy(&host["RestartPolicy"])?.unwrap_or_default();
    let entrypoint = match &config["Entrypoint"] {
        Value::Array(list) if !list.is_empty() => list[0].as_str().map(str::to_owned),
        Value::Array(_) => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    };
    // An entrypoint with arguments: the rest go before Cmd.
    let mut command = match &config["Entrypoint"] {
        Value::Array(list) if list.len() > 1 => strings(&Value::Array(list[1..].to_vec())),
        _ => Vec::new(),
    };
    let cmd = match &config["Cmd"] {
        Value::String(s) => vec![s.clone()],
        other => strings(other),
    };
    command.extend(cmd);
    let network = host["NetworkMode"]
        .as_str()
        .filter(|n| !n.is_empty() && *n != "default")
        .unwrap_or("bridge")
        .to_owned();
    // The endpoints: aliases and an address on the first network; every other network
    // named is joined too (Compose names its project network here).
    let mut network_aliases = Vec::new();
    let mut ip = None;
    let mut connected = Vec::new();
    let endpoint_of = |endpoint: &Value| {
        (
            strings(&endpoint["Aliases"]),
            endpoint["IPAMConfig"]["IPv4Address"]
                .as_str()
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
        )
    };
    for (name, endpoint) in
        config["NetworkingConfig"]["EndpointsConfig"].as_object().into_iter().flatten()
    {
        let (aliases, address) = endpoint_of(endpoint);
        if *name == network {
            network_aliases = aliases;
            ip = address;
        } else {
            connected.push(berth_engine::options::Connection {
                network: name.clone(),
                aliases,
                ip: address,
            });
        }
    }
    let mut ulimits = Vec::new();
    for limit in host["Ulimits"].as_array().into_iter().flatten() {
        let text = format!(
            "{}={}:{}",
            limit["Name"].as_str().unwrap_or(""),
            limit["Soft"].as_i64().unwrap_or(0),
            limit["Hard"].as_i64().unwrap_or(0)
        );
        ulimits.push(
            berth_engine::options::Ulimit::parse(&text)
                .map_err(|e| ApiError::bad(e.to_string()))?,
        );
    }
    let mut devices = Vec::new();
    for device in host["Devices"].as_array().into_iter().flatten() {
        let on_host = device["PathOnHost"].as_str().unwrap_or("");
        let inside =
            device["PathInContainer"].as_str().filter(|p| !p.is_empty()).unwrap_or(on_host);
        let permissions =
            device["CgroupPermissions"].as_str().filter(|p| !p.is_empty()).unwrap_or("rwm");
        devices.push(
            berth_engine::options::DeviceSpec::parse(&format!("{on_host}:{inside}:{permissions}"))
                .map_err(|e| ApiError::bad(e.to_string()))?,
        );
    }
    let health = &config["Healthcheck"];
    let nanos = |v: &Value| v.as_u64().filter(|n| *n > 0);
    let health_test = strings(&health["Test"]);
    let log_options = &host["LogConfig"]["Config"];
    let options = RunOptions {
        image,
        name: q.get("name").filter(|n| !n.is_empty()).cloned(),
        command,
        entrypoint,
        env: strings(&config["Env"]),
        workdir: config["WorkingDir"].as_str().filter(|w| !w.is_empty()).map(str::to_owned),
        user: config["User"].as_str().filter(|u| !u.is_empty()).map(str::to_owned),
        hostname: config["Hostname"].as_str().filter(|h| !h.is_empty()).map(str::to_owned),
        tty: config["Tty"].as_bool().unwrap_or(false),
        interactive: config["OpenStdin"].as_bool().unwrap_or(false),
        auto_remove: host["AutoRemove"].as_bool().unwrap_or(false),
        publish,
        publish_all: host["PublishAllPorts"].as_bool().unwrap_or(false),
        mounts,
        network,
        memory: host["Memory"].as_i64().filter(|m| *m > 0),
        cpus: host["NanoCpus"].as_i64().filter(|n| *n > 0).map(|n| n as f64 / 1e9),
        pids_limit: host["PidsLimit"].as_i64().filter(|p| *p > 0),
        cap_add: strings(&host["CapAdd"]),
        cap_drop: strings(&host["CapDrop"]),
        privileged: host["Privileged"].as_bool().unwrap_or(false),
        read_only: host["ReadonlyRootfs"].as_bool().unwrap_or(false),
        security_opt: strings(&host["SecurityOpt"]),
        init: host["Init"].as_bool().unwrap_or(false),
        add_hosts: strings(&host["ExtraHosts"]),
        dns: strings(&host["Dns"]),
        labels: config["Labels"]
            .as_object()
            .map(|l| {
                l.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        stop_signal: config["StopSignal"].as_str().map(str::to_owned),
        stop_timeout: config["StopTimeout"].as_u64().map(|t| t as u32),
        restart,
        shm_size: host["ShmSize"].as_i64().filter(|s| *s > 0),
        ipc: host["IpcMode"].as_str().unwrap_or("").to_owned(),
        pid: host["PidMode"].as_str().unwrap_or("").to_owned(),
        cpu_shares: host["CpuShares"].as_u64().filter(|s| *s > 0),
        group_add: strings(&host["GroupAdd"]),
        log_driver: host["LogConfig"]["Type"].as_str().unwrap_or("").to_owned(),
        log_max_size: log_options["max-size"]
            .as_str()
            .map(berth_engine::options::parse_bytes)
            .transpose()
            .map_err(|e| ApiError::bad(e.to_string()))?
            .map(|b| b as u64),
        log_max_files: log_options["max-file"].as_str().and_then(|n| n.parse().ok()),
        no_healthcheck: health_test.first().is_some_and(|t| t == "NONE"),
        health_test: (!health_test.is_empty()).then_some(health_test),
        health_interval: nanos(&health["Interval"]),
        health_timeout: nanos(&health["Timeout"]),
        health_start_period: nanos(&health["StartPeriod"]),
        health_retries: health["Retries"].as_u64().filter(|r| *r > 0).map(|r| r as u32),
        network_aliases,
        ip,
        connected,
        ulimits,
        devices,
        sysctls: config["HostConfig"]["Sysctls"]
            .as_object()
            .map(|m| {
                m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned())).collect()
            })
            .unwrap_or_default(),
        uts: host["UTSMode"].as_str().unwrap_or("").to_owned(),
        cgroupns: host["CgroupnsMode"].as_str().unwrap_or("").to_owned(),
        cpuset_cpus: host["CpusetCpus"].as_str().filter(|c| !c.is_empty()).map(str::to_owned),
        cpuset_mems: host["CpusetMems"].as_str().filter(|c| !c.is_empty()).map(str::to_owned),
        cpu_quota: host["CpuQuota"].as_i64().filter(|q| *q != 0),
        cpu_period: host["CpuPeriod"].as_u64().filter(|p| *p > 0),
        memory_swap: host["MemorySwap"].as_i64().filter(|m| *m != 0),
        memory_reservation: host["MemoryReservation"].as_i64().filter(|m| *m > 0),
        oom_kill_disable: host["OomKillDisable"].as_bool().unwrap_or(false),
        blkio_weight: host["BlkioWeight"].as_u64().filter(|w| *w > 0).map(|w| w as u16),
        mac_address: config["MacAddress"].as_str().filter(|m| !m.is_empty()).map(str::to_owned),
        platform: q.get("platform").filter(|p| !p.is_empty()).cloned(),
        ..RunOptions::default()
    };
    let record = engine.create(options).map_err(ApiError::of)?;
    json_reply(StatusCode::CREATED, &json!({"Id": record.id, "Warnings": []}))
}

/// `GET /containers/{id}/logs`: Docker's multiplexed frames (no tty) or the raw stream;
/// with `follow`, new lines as they come until the container stops.
fn logs(engine: &Arc<Engine>, id: &str, q: &BTreeMap<String, String>) -> Reply {
    use berth_engine::logs::{self, Query, Stream};
    let id = engine.resolve_id(id).map_err(ApiError::of)?;
    let record = engine.peek(&id).map_err(ApiError::of)?;
    if record.options.log_driver == "none" {
        return Err(ApiError::bad("configured logging driver does not support reading"));
    }
    let (want_out, want_err) = (truthy(q, "stdout"), truthy(q, "stderr"));
    if !want_out && !want_err {
        return Err(ApiError::bad("you must choose at least one stream"));
    }
    let seconds = |key: &str| -> Result<Option<f64>, ApiError> {
        match q.get(key).filter(|s| !s.is_empty() && *s != "0") {
            Some(text) => crate::containers::parse_time(text)
                .map(Some)
                .map_err(|e| ApiError::bad(format!("{key}: {e:#}"))),
            None => Ok(None),
        }
    };
    let query = Query {
        tail: q.get("tail").filter(|t| *t != "all").and_then(|t| t.parse().ok()),
        since: seconds("since")?,
        until: seconds("until")?,
    };
    let (tty, timestamps) = (record.options.tty, truthy(q, "timestamps"));
    let frames = move |entries: &[logs::Entry]| -> Vec<u8> {
        let mut out = Vec::new();
        for entry in entries {
            let stream = if entry.stream == Stream::Stdout { 1u8 } else { 2u8 };
            if (stream == 1 && !want_out) || (stream == 2 && !want_err) {
                continue;
            }
            let mut payload = Vec::new();
            if timestamps {
                payload.extend_from_slice(entry.time.as_bytes());
                payload.push(b' ');
            }
            payload.extend_from_slice(&entry.text);
            out.extend(docker_frame(stream, &payload, tty));
        }
        out
    };
    let path = engine.container_dir(&id).join("container.log");
    let (entries, mut offset) = logs::read(&path, &query)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let content_type = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    if !truthy(q, "follow") {
        return Ok(Response::builder()
            .header("Content-Type", content_type)
            .header("Api-Version", API_VERSION)
            .body(whole(frames(&entries)))
            .unwrap_or_default());
    }
    let (feed, response) = streamed(content_type);
    let engine = engine.clone();
    std::thread::spawn(move || {
        if !feed.send(frames(&entries)) {
            return;
        }
        loop {
            let running = engine.peek(&id).is_ok_and(|r| {
                matches!(r.state.status, Status::Running | Status::Paused | Status::Restarting)
            });
            let Ok((mut more, next)) = logs::read_from(&path, offset) else { return };
            offset = next;
            if query.until.is_some() {
                logs::filter(&mut more, &Query { tail: None, ..query.clone() });
            }
            if !more.is_empty() && !feed.send(frames(&more)) {
                return;
            }
            if (!running && more.is_empty()) || !feed.open() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    Ok(response)
}

/// Whether an image named `names` matches a `reference` filter: `repo` (any tag),
/// `repo:tag`, with `*` matching within a path component.
fn reference_matches(names: &[Value], pattern: &str) -> bool {
    let glob = |pattern: &str, text: &str| -> bool {
        let regex = format!("^{}$", regex::escape(pattern).replace("\\*", "[^/]*"));
        regex::Regex::new(&regex).is_ok_and(|r| r.is_match(text))
    };
    names.iter().filter_map(Value::as_str).any(|name| {
        let (repo, tag) =
            name.rsplit_once(':').filter(|(_, t)| !t.contains('/')).unwrap_or((name, "latest"));
        let short = repo
            .strip_prefix("docker.io/library/")
            .or_else(|| repo.strip_prefix("docker.io/"))
            .unwrap_or(repo);
        match pattern.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((p_repo, p_tag)) => {
                (glob(p_repo, repo) || glob(p_repo, short)) && glob(p_tag, tag)
            }
            None => glob(pattern, repo) || glob(pattern, short),
        }
    })
}

/// `GET /images/json?filters=`: `reference`, `label`, `dangling`.
fn list_images(global: &Global, q: &BTreeMap<String, String>) -> Reply {
    let filters = filters(q)?;
    let none = Vec::new();
    let store = crate::images::open_store(global)?;
    let mut rows = Vec::new();
    for image in store.list()? {
        let full = crate::images::image_json(&store, &image)?;
        let tags = full["RepoTags"].as_array().cloned().unwrap_or_default();
        let references = filters.get("reference").unwrap_or(&none);
        if !references.is_empty() && !references.iter().any(|r| reference_matches(&tags, r)) {
            continue;
        }
        if let Some(dangling) = filters.get("dangling").and_then(|d| d.first()) {
            if (dangling == "true" || dangling == "1") != tags.is_empty() {
                continue;
            }
        }
        let labels: BTreeMap<String, String> =
            serde_json::from_value(full["Config"]["Labels"].clone()).unwrap_or_default();
        if !labels_match(&labels, filters.get("label").unwrap_or(&none)) {
            continue;
        }
        rows.push(json!({
            "Id": full["Id"],
            "ParentId": "",
            "RepoTags": full["RepoTags"],
            "RepoDigests": full["RepoDigests"],
            "Created": berth_image::config::parse_rfc3339(full["Created"].as_str().unwrap_or("")).unwrap_or(0),
            "Size": full["Size"],
            "VirtualSize": full["Size"],
            "SharedSize": -1,
            "Labels": full["Config"]["Labels"],
            "Containers": -1,
        }));
    }
    json_reply(StatusCode::OK, &Value::Array(rows))
}

/// `POST /auth`: checks the credentials against the registry (the client keeps them).
fn auth(global: &Global, body: &Bytes) -> Reply {
    let config = json_body(body)?;
    let username = config["username"].as_str().unwrap_or("");
    let password = config["password"].as_str().unwrap_or("");
    let server = config["serveraddress"].as_str().unwrap_or("");
    let registry = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .filter(|r| !r.is_empty() && *r != "index.docker.io")
        .unwrap_or("docker.io");
    if username.is_empty() || password.is_empty() {
        return Err(ApiError::bad("a username and a password are needed"));
    }
    let client = berth_image::registry::RegistryClient::new(
        registry,
        &berth_image::registry::ClientOptions {
            insecure: global.insecure_registries.clone(),
            credentials: Some(berth_image::credentials::Credentials {
                username: username.to_owned(),
                password: password.to_owned(),
            }),
        },
    );
    client.ping().map_err(|e| {
        ApiError(StatusCode::UNAUTHORIZED, format!("login to {registry} failed: {e}"))
    })?;
    json_reply(StatusCode::OK, &json!({"Status": "Login Succeeded", "IdentityToken": ""}))
}

/// `POST /containers/{id}/resize?h=&w=`: the container's terminal size.
fn resize(engine: &Engine, id: &str, q: &BTreeMap<String, String>) -> Reply {
    let id = engine.resolve_id(id).map_err(ApiError::of)?;
    let mut record = engine.peek(&id).map_err(ApiError::of)?;
    let size = |key: &str| q.get(key).and_then(|v| v.parse::<u16>().ok()).unwrap_or(0);
    let (rows, columns) = (size("h"), size("w"));
    if !record.options.tty || rows == 0 || columns == 0 {
        return empty(StatusCode::OK);
    }
    // `docker run -it` resizes right after the start returns, which can be before the
    // monitor has recorded the container as running (under load, longer than the
    // client's retries): a container just started is waited for, a few seconds at most.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while matches!(record.state.status, Status::Created | Status::Restarting)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        record = engine.peek(&id).map_err(ApiError::of)?;
    }
    if record.state.status != Status::Running {
        return Err(ApiError(StatusCode::CONFLICT, format!("Container {id} is not running")));
    }
    let mut stream =
        berth_engine::monitor::connect(&engine.container_dir(&id)).map_err(ApiError::of)?;
    let mut payload = rows.to_be_bytes().to_vec();
    payload.extend_from_slice(&columns.to_be_bytes());
    berth_engine::attach::write_frame(&mut stream, berth_engine::attach::RESIZE, &payload)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot resize: {e}")))?;
    empty(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        assert_eq!(segments("/v1.41/containers/abc/json"), ["containers", "abc", "json"]);
        assert_eq!(segments("/_ping"), ["_ping"]);
        assert_eq!(
            segments("/images/localhost%2Ffixture/json"),
            ["images", "localhost/fixture", "json"]
        );
    }

    #[test]
    fn image_reference_filters() {
        let names = [json!("fixture:v1"), json!("127.0.0.1:5000/shop/api:2")];
        assert!(reference_matches(&names, "fixture"));
        assert!(reference_matches(&names, "fixture:v1"));
        assert!(!reference_matches(&names, "fixture:v2"));
        assert!(!reference_matches(&names, "fix"));
        assert!(reference_matches(&names, "fix*"));
        assert!(reference_matches(&names, "127.0.0.1:5000/shop/api"));
        assert!(reference_matches(&names, "127.0.0.1:5000/shop/*:2"));
        assert!(!reference_matches(&names, "127.0.0.1:5000/*:2"));
        assert!(!reference_matches(&[], "fixture"));
    }
}
