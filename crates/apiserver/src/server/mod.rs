//! The API server: [`Server::prepare`] opens the store and the credentials, [`Handler`] is
//! the API as a `tower::Service` over `http::Request` (reached in-process or through the
//! TLS [`listener`]), and [`Server::serve`] runs until its shutdown token fires, then
//! drains.
//!
//! - `listener`: TLS accept loop, client-certificate identities, graceful drain;
//! - `handler`: the `Service`, metrics, and dispatch of a parsed route;
//! - `route`: what a request names (pure: also labels metrics);
//! - `authn` / `authz`: who is asking (tokens, certificates, impersonation) and RBAC
//!   over a cache of the RBAC objects;
//! - `discovery`: `/version`, `/api`, `/apis`, OpenAPI, service-account issuer discovery;
//! - `verbs`: get, list, watch, create, update, patch, delete, deletecollection over
//!   `berth-store` (`resourceVersion` is the store's revision of the object);
//! - `admission`: mutating and validating admission webhooks;
//! - `pods`, `accounts`: pod subresources and service-account tokens;
//! - `compaction`: the store's history trimmed, as a supervised task;
//! - `mirror`: a watched copy of a store prefix (RBAC objects, custom resource
//!   definitions); `crds`: the definitions served and cleaned up.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Frame;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use berth_store::{EventKind, KeyValue, Store};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::objects::{self, ApiError};
use crate::patch;
use crate::resources::{self, Resource, StorageKeys};
use crate::selector::{FieldSelector, LabelSelector};
use crate::{tls, Error};

mod accounts;
mod admission;
mod authn;
mod authz;
mod certificates;
mod compaction;
mod components;
mod conversion;
mod crds;
mod discovery;
mod handler;
mod kubelet;
mod listener;
mod memo;
mod mirror;
mod pods;
mod quotas;
mod request;
mod reviews;
mod route;
mod usage;
mod verbs;

pub use handler::Handler;
use route::Target;
use verbs::Api;

/// Largest request body accepted (Kubernetes' limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;

/// `berth server`'s settings, with k3s's flag names.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub bind_address: String,
    /// More names and addresses for the serving certificate (k3s's `--tls-san`): the
    /// advertised address, the host's name, what clients elsewhere dial.
    pub tls_san: Vec<String>,
    pub port: u16,
    /// `http://host:2379` for etcd; none for the embedded SQLite store.
    pub datastore_endpoint: Option<String>,
    pub token: Option<String>,
    /// How long a stopping server waits for requests and watches to end.
    pub shutdown_grace: Duration,
    /// The embedded store's quota in bytes (etcd's `--quota-backend-bytes`); `None` for
    /// the default (2 GiB, less on a small filesystem). etcd keeps its own.
    pub quota_backend_bytes: Option<u64>,
    /// How often the store's history is trimmed.
    pub compaction_interval: Duration,
    /// The control plane's parts running beside the API (`scheduler`,
    /// `controller-manager`), as ComponentStatus reports them.
    pub components: Vec<String>,
    /// The seconds every pod tolerates a not-ready and an unreachable node unless it says
    /// otherwise (kube-apiserver's DefaultTolerationSeconds admission; 300 each).
    pub default_toleration_seconds: (i64, i64),
    /// How often nodes' usage is read for the metrics API (metrics-server's
    /// `--metric-resolution`).
    pub metric_resolution: Duration,
    /// The longest a service-account token issued here lives, whatever was asked
    /// (kube-apiserver's `--service-account-max-token-expiration`); `None`: as asked.
    pub service_account_max_token_expiration: Option<Duration>,
}

type Body = BoxBody<Bytes, Infallible>;

struct State {
    store: Arc<dyn Store>,
    /// Bearer tokens and who they name: the admin's, and `<data-dir>/tokens.csv`.
    users: Vec<(String, crate::rbac::User)>,
    /// Held while a Service's addresses are chosen, so two creates cannot pick the same.
    service_allocation: tokio::sync::Mutex<()>,
    /// `<data-dir>/audit.log`: one JSON line per write.
    audit: std::sync::Mutex<Option<std::fs::File>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Signs and checks service-account tokens.
    signer: crate::tokens::Signer,
    /// RBAC objects, kept current by a watch on the store.
    rbac: Arc<authz::RbacCache>,
    /// CustomResourceDefinitions, kept current by a watch; they make the custom resources.
    crds: Arc<crds::CrdCache>,
    /// Admission webhook configurations, kept current by a watch.
    webhooks: Arc<admission::Webhooks>,
    /// ResourceQuotas and LimitRanges, kept current by watches.
    quotas: Arc<quotas::Quotas>,
    /// Signs approved CertificateSigningRequests (the built-in signers).
    _signer: Arc<certificates::Signer>,
    /// The control plane's parts this process runs (ComponentStatus).
    components: Vec<String>,
    /// Not-ready and unreachable toleration seconds given to pods.
    default_toleration_seconds: (i64, i64),
    /// The longest lifetime of an issued service-account token, in seconds.
    max_token_seconds: Option<i64>,
    /// Nodes' and pods' resource usage, for the metrics API.
    usage: usage::Usage,
    /// Fires when the server stops: watches end, loops return.
    shutdown: CancellationToken,
    /// How the server reaches node agents (logs, exec, attach, port-forward).
    kubelet_tls: Arc<rustls::ClientConfig>,
    /// Decoded objects and encoded lines of recent events, shared by the watches.
    watch_memo: Arc<memo::WatchMemo>,
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(crate::wire::to_vec(value)));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text_response(code: u16, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn error_response(err: &ApiError) -> Response<Body> {
    json_response(err.code, &err.status())
}

fn storage_error(resource: &Resource, name: &str, err: berth_store::Error) -> ApiError {
    match err {
        berth_store::Error::NotFound { .. } => ApiError::not_found(resource, name),
        berth_store::Error::AlreadyExists { .. } => ApiError::already_exists(resource, name),
        berth_store::Error::Conflict { .. } => ApiError::conflict(resource, name),
        berth_store::Error::Compacted { .. } => {
            ApiError::new(410, "Expired", "too old resource version")
        }
        berth_store::Error::FutureRevision { .. } => ApiError::new(
            504,
            "Timeout",
            "Too large resource version: the store has not reached it yet",
        ),
        berth_store::Error::Backend(message) => {
            ApiError::new(500, "InternalError", format!("storage: {message}"))
        }
        quota @ berth_store::Error::QuotaExceeded { .. } => {
            ApiError::new(500, "InternalError", quota.to_string())
        }
    }
}

/// A prepared server: its store open, credentials ready, its port bound.
pub struct Server {
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    port: u16,
    tasks: TaskTracker,
    grace: Duration,
}

impl Server {
    /// Opens the store (SQLite in the data directory, or etcd), makes or loads the CA,
    /// serving certificate, admin token and signing key, writes the admin kubeconfig,
    /// creates what every cluster has, and binds the port. Nothing is served yet.
    pub async fn prepare(config: Config, shutdown: CancellationToken) -> Result<Server, Error> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Setup(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        // Everything in it (the store, keys, the audit log) is for the server's user only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| {
                    Error::Setup(format!("cannot restrict {}: {e}", config.data_dir.display()))
                })?;
        }
        let store: Arc<dyn Store> = match &config.datastore_endpoint {
            Some(endpoint) if endpoint.starts_with("http://") || endpoint.starts_with("https://") => {
                Arc::new(berth_store::EtcdStore::connect(endpoint).await.map_err(|e| Error::Setup(e.to_string()))?)
            }
            Some(other) => {
                return Err(Error::Setup(format!(
                    "--datastore-endpoint {other:?}: use http://HOST:PORT for etcd, or leave it out for the embedded store"
                )))
            }
            None => {
                let path = config.data_dir.join("state.db");
                let store = berth_store::SqliteStore::open(&path).map_err(|e| Error::Setup(e.to_string()))?;
                let quota = config
                    .quota_backend_bytes
                    .unwrap_or_else(|| berth_store::SqliteStore::default_quota(&path));
                tracing::info!(quota, "embedded store quota");
                Arc::new(store.with_quota(quota))
            }
        };
        let key = crate::encryption::load_key(&config.data_dir)?;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let store: Arc<dyn Store> = Arc::new(crate::metrics::Measured::new(store, metrics.clone()));
        let store: Arc<dyn Store> = Arc::new(crate::encryption::Encrypted::new(store, &key)?);
        let tls_dir = config.data_dir.join("tls");
        let mut hosts = vec![config.bind_address.clone()];
        hosts.extend(config.tls_san.iter().cloned());
        let pki = tls::ensure(&tls_dir, &hosts)?;
        let token = tls::token(&config.data_dir, config.token.as_deref())?;
        let listener = tokio::net::TcpListener::bind((config.bind_address.as_str(), config.port))
            .await
            .map_err(|e| {
                Error::Setup(format!(
                    "cannot listen on {}:{}: {e}",
                    config.bind_address, config.port
                ))
            })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(config.port);
        write_kubeconfig(&config, &pki.ca_pem, &token, port)?;
        let audit_path = config.data_dir.join("audit.log");
        let audit = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&audit_path)
            .map_err(|e| Error::Setup(format!("cannot open {}: {e}", audit_path.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            audit.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| {
                Error::Setup(format!("cannot restrict {}: {e}", audit_path.display()))
            })?;
        }
        let mut users = vec![(token, crate::rbac::User::admin())];
        if let Ok(text) = std::fs::read_to_string(config.data_dir.join("tokens.csv")) {
            users.extend(crate::rbac::parse_tokens(&text));
        }
        let signer = crate::tokens::Signer::load(&tls_dir)?;
        let kubelet_tls = tls::kubelet_client_config(&tls_dir, &pki.ca_pem)?;
        let tasks = TaskTracker::new();
        let rbac = authz::RbacCache::start(store.clone(), &tasks, shutdown.clone()).await?;
        let crds = crds::CrdCache::start(store.clone(), &tasks, shutdown.clone()).await?;
        let webhooks =
            admission::Webhooks::start(store.clone(), pki.ca_pem.clone(), &tasks, shutdown.clone())
                .await?;
        let quotas = quotas::Quotas::start(store.clone(), &tasks, shutdown.clone()).await?;
        let csr_signer = certificates::Signer::start(
            store.clone(),
            tls_dir.clone(),
            rbac.clone(),
            &tasks,
            shutdown.clone(),
        )
        .await?;
        let state = Arc::new(State {
            signer,
            store,
            users,
            service_allocation: tokio::sync::Mutex::new(()),
            audit: std::sync::Mutex::new(Some(audit)),
            metrics,
            rbac,
            crds,
            webhooks,
            quotas,
            _signer: csr_signer,
            components: config.components.clone(),
            default_toleration_seconds: config.default_toleration_seconds,
            max_token_seconds: config
                .service_account_max_token_expiration
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1)),
            usage: usage::Usage::default(),
            shutdown,
            kubelet_tls,
            watch_memo: Arc::default(),
        });
        bootstrap(&state).await?;
        node_token(&state, &config.data_dir, &pki.ca_pem).await?;
        tasks.spawn(usage::collect(state.clone(), config.metric_resolution));
        tasks.spawn(compaction::run(
            state.store.clone(),
            config.compaction_interval,
            state.shutdown.clone(),
        ));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&pki)?);
        Ok(Server { state, listener, acceptor, port, tasks, grace: config.shutdown_grace })
    }

    /// The port the API listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The API as a `tower::Service`, for in-process callers.
    pub fn handler(&self) -> Handler {
        Handler::new(self.state.clone())
    }

    /// Serves until the shutdown token fires; then stops accepting, ends watches, lets
    /// requests in flight finish for up to the grace period, and returns.
    pub async fn serve(self) -> Result<(), Error> {
        let Server { state, listener, acceptor, port, tasks, grace } = self;
        tracing::info!(port, "serving the API");
        listener::run(
            listener,
            acceptor,
            Handler::new(state.clone()),
            state.shutdown.clone(),
            grace,
        )
        .await;
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("background tasks did not stop within {grace:?}");
        }
        Ok(())
    }
}

fn write_kubeconfig(config: &Config, ca_pem: &str, token: &str, port: u16) -> Result<(), Error> {
    use base64::Engine as _;
    let host = if config.bind_address == "0.0.0.0" || config.bind_address == "::" {
        "127.0.0.1"
    } else {
        &config.bind_address
    };
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: https://{host}:{port}\n  name: berth\ncontexts:\n- context:\n    cluster: berth\n    user: admin\n  name: berth\ncurrent-context: berth\nusers:\n- name: admin\n  user:\n    token: {token}\n"
    );
    let path = config.data_dir.join("kubeconfig");
    berth_stdx::fs::write_atomic(&path, text.as_bytes(), 0o600)
        .map_err(|e| Error::Setup(format!("cannot write {}: {e}", path.display())))
}

/// The namespaces every cluster has.
/// The token agents join with, written to `DATA_DIR/node-token` as
/// `K10<sha256 of the CA's PEM>::<id>.<secret>` (k3s's shape: the hash lets the agent check
/// the CA it fetches before trusting it); the `ID.SECRET` part is a Kubernetes bootstrap
/// token, its Secret in kube-system made once and kept (the file is remade from it).
async fn node_token(state: &State, data_dir: &std::path::Path, ca_pem: &str) -> Result<(), Error> {
    use base64::Engine as _;
    let setup = |e: String| Error::Setup(e);
    let secrets = resources::find("", "v1", "secrets").ok_or_else(|| setup("no secrets".into()))?;
    let path = data_dir.join("node-token");
    let decode64 = |v: &Value| {
        v.as_str()
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    // The token of an earlier start, if its Secret still exists.
    let earlier = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| text.trim().rsplit_once("::").map(|(_, token)| token.to_owned()));
    let mut token = None;
    if let Some((id, secret)) = earlier.as_deref().and_then(|t| t.split_once('.')) {
        let key = secrets.key(Some("kube-system"), &format!("bootstrap-token-{id}"));
        if let Ok(Some(kv)) = state.store.get(&key).await {
            let object = decode(&kv).map_err(|e| setup(e.message))?;
            if decode64(&object["data"]["token-secret"]).as_deref() == Some(secret) {
                token = Some(format!("{id}.{secret}"));
            }
        }
    }
    let token = match token {
        Some(token) => token,
        None => {
            // Lowercase hex is within the token alphabet ([a-z0-9]).
            let random = |bytes: usize| {
                berth_stdx::random::hex(bytes).map_err(|e| setup(format!("random bytes: {e}")))
            };
            let (id, secret) = (random(3)?, random(8)?);
            let encode64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
            let mut object = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
                "type": "bootstrap.kubernetes.io/token",
                "data": {
                    "description": encode64("berth server: agents join with it (DATA_DIR/node-token)"),
                    "token-id": encode64(&id),
                    "token-secret": encode64(&secret),
                    "usage-bootstrap-authentication": encode64("true"),
                    "usage-bootstrap-signing": encode64("true"),
                },
            });
            objects::prepare_create(secrets, &mut object, Some("kube-system"))
                .map_err(|e| setup(e.message))?;
            let key = secrets.key(Some("kube-system"), &format!("bootstrap-token-{id}"));
            state
                .store
                .create(&key, serde_json::to_vec(&object).unwrap_or_default())
                .await
                .map_err(|e| setup(e.to_string()))?;
            format!("{id}.{secret}")
        }
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes());
    let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let text = format!("K10{hash}::{token}\n");
    // Owner-only, whatever an older file's mode was.
    berth_stdx::fs::write_atomic(&path, text.as_bytes(), 0o600)
        .map_err(|e| setup(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}

async fn bootstrap(state: &State) -> Result<(), Error> {
    let namespaces = resources::find("", "v1", "namespaces")
        .ok_or_else(|| Error::Setup("no namespaces".into()))?;
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = namespaces.key(None, name);
        if state.store.get(&key).await.map_err(|e| Error::Setup(e.to_string()))?.is_some() {
            continue;
        }
        let mut object =
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}});
        objects::prepare_create(namespaces, &mut object, None)
            .map_err(|e| Error::Setup(e.message))?;
        match state.store.create(&key, serde_json::to_vec(&object).unwrap_or_default()).await {
            Ok(_) | Err(berth_store::Error::AlreadyExists { .. }) => {}
            Err(err) => return Err(Error::Setup(err.to_string())),
        }
    }
    // The priority classes every cluster has.
    let priority = |name: &str, value: i64| {
        (
            "priorityclasses",
            json!({"metadata": {"name": name}, "value": value,
            "description": "Used for system critical pods that must not be moved from their current node."}),
        )
    };
    let policy =
        crate::policy::bootstrap().into_iter().map(|(plural, object)| (plural, object, true));
    let services =
        resources::builtin_api_services().into_iter().map(|object| ("apiservices", object, false));
    let policy = policy.chain(services);
    let objects = [
        (priority("system-node-critical", 2_000_001_000), false),
        (priority("system-cluster-critical", 2_000_000_000), false),
    ]
    .into_iter()
    .map(|((plural, object), reconciled)| (plural, object, reconciled))
    .chain(policy);
    for (plural, object, reconciled) in objects {
        let resource = resources::find("rbac.authorization.k8s.io", "v1", plural)
            .or_else(|| resources::find("scheduling.k8s.io", "v1", plural))
            .or_else(|| resources::find("apiregistration.k8s.io", "v1", plural))
            .ok_or_else(|| Error::Setup(format!("no {plural}")))?;
        let key = resource.key(None, objects::name_of(&object));
        let setup = |e: berth_store::Error| Error::Setup(e.to_string());
        if let Some(kv) = state.store.get(&key).await.map_err(setup)? {
            // RBAC defaults are kept reconciled (rules and subjects added), as Kubernetes does.
            let current = decode(&kv).map_err(|e| Error::Setup(e.message))?;
            if let Some(merged) =
                reconciled.then(|| crate::policy::reconcile(&current, &object)).flatten()
            {
                match state.store.update(&key, encode(&merged), kv.mod_revision).await {
                    Ok(_) | Err(berth_store::Error::Conflict { .. }) => {}
                    Err(err) => return Err(setup(err)),
                }
            }
            continue;
        }
        let mut object = object;
        objects::prepare_create(resource, &mut object, None)
            .map_err(|e| Error::Setup(e.message))?;
        let bytes = serde_json::to_vec(&object).map_err(|e| Error::Setup(e.to_string()))?;
        match state.store.create(&key, bytes).await {
            Ok(_) | Err(berth_store::Error::AlreadyExists { .. }) => {}
            Err(err) => return Err(setup(err)),
        }
    }
    // The API's own service, holding the first address of the service range.
    let services =
        resources::find("", "v1", "services").ok_or_else(|| Error::Setup("no services".into()))?;
    let key = services.key(Some("default"), "kubernetes");
    if state.store.get(&key).await.map_err(|e| Error::Setup(e.to_string()))?.is_none() {
        let mut object = json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": tls::FIRST_SERVICE_ADDRESS, "clusterIPs": [tls::FIRST_SERVICE_ADDRESS], "sessionAffinity": "None",
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
        });
        objects::prepare_create(services, &mut object, Some("default"))
            .map_err(|e| Error::Setup(e.message))?;
        match state.store.create(&key, serde_json::to_vec(&object).unwrap_or_default()).await {
            Ok(_) | Err(berth_store::Error::AlreadyExists { .. }) => {}
            Err(err) => return Err(Error::Setup(err.to_string())),
        }
    }
    Ok(())
}

impl State {
    /// Appends one line to the audit log; a full disk loses the line (with a warning in
    /// the server's log), not the request.
    fn audit(
        &self,
        user: &crate::rbac::User,
        impersonator: Option<&crate::rbac::User>,
        verb: &str,
        target: &Target,
        name: Option<&str>,
        code: u16,
    ) {
        let mut line = json!({
            "time": objects::now(),
            "user": {"username": user.name, "groups": user.groups},
            "verb": verb,
            "group": target.resource.group,
            "resource": target.resource.name,
            "subresource": target.subresource,
            "namespace": target.namespace,
            "name": name.or(target.name.as_deref()),
            "code": code,
        });
        if let Some(impersonator) = impersonator {
            line["impersonatedBy"] =
                json!({"username": impersonator.name, "groups": impersonator.groups});
        }
        // One write per line: formatting straight into the file would make a system call
        // of every token.
        let mut text = line.to_string();
        text.push('\n');
        if let Ok(mut file) = self.audit.lock() {
            if let Some(file) = file.as_mut() {
                use std::io::Write;
                if let Err(err) = file.write_all(text.as_bytes()) {
                    tracing::warn!("audit log: a line is lost: {err}");
                }
            }
        }
    }
}

/// The stored form of an object: JSON without `resourceVersion` (the store's revision is).
/// Bytes that do not decode are a server error naming the key, never an empty object.
fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(&kv.value).map_err(|err| {
        ApiError::new(
            500,
            "InternalError",
            format!("the stored object at {} cannot be decoded: {err}", kv.key),
        )
    })?;
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    }
    Ok(object)
}

/// Go's `strconv.ParseBool`, which Kubernetes uses for query parameters (`watch=True`).
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Query parameters Kubernetes reads as booleans.
const BOOLEAN_PARAMETERS: &[&str] =
    &["watch", "allowWatchBookmarks", "force", "sendInitialEvents", "pretty"];

/// A request's `DeleteOptions` (JSON or protobuf); no body means the defaults. A body that
/// does not decode is refused rather than read as "no preconditions".
fn delete_options(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let options = decode_body(content_type, body).map_err(|err| {
        ApiError::bad_request(format!(
            "the DeleteOptions in the request body are malformed: {}",
            err.message
        ))
    })?;
    if !options.is_object() {
        return Err(ApiError::bad_request(
            "the DeleteOptions in the request body must be an object",
        ));
    }
    Ok(options)
}

fn encode(object: &Value) -> Vec<u8> {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&object).unwrap_or_default()
}

/// The largest object stored: etcd's default request limit, kept on both backends so an
/// object that SQLite would hold is not one etcd would refuse.
const MAX_OBJECT: usize = 1536 * 1024;

fn sized(resource: &Resource, name: &str, bytes: Vec<u8>) -> Result<Vec<u8>, ApiError> {
    if bytes.len() > MAX_OBJECT {
        let message = format!(
            "{} {name:?} is too large to store: {} KiB, the limit is {} KiB",
            objects::resource_name(resource),
            bytes.len() / 1024,
            MAX_OBJECT / 1024
        );
        return Err(ApiError::about(resource, name, 413, "RequestEntityTooLarge", message));
    }
    Ok(bytes)
}

/// The store revision an object was read at (`metadata.resourceVersion`); 0 for none.
fn revision_of(object: &Value) -> i64 {
    object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn with_revision(mut object: Value, revision: i64) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
    object
}

/// Decodes a request body by its content type: JSON (objects and patches) or Kubernetes
/// protobuf. The entry point of the decoders' fuzz target.
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if content_type.contains("protobuf") {
        return crate::proto::decode(body)
            .map_err(|e| ApiError::new(415, "UnsupportedMediaType", e.to_string()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_percent_decoded_without_panicking() {
        assert_eq!(
            super::request::percent_decode("app%3Dweb%2Ctier+in+%28a%29"),
            "app=web,tier in (a)"
        );
        assert_eq!(super::request::percent_decode("%zz%"), "%zz%");
        assert_eq!(super::request::percent_decode("%\u{e9}\u{e9}"), "%\u{e9}\u{e9}");
        let token = super::verbs::encode_continue("/registry/core/pods/a", 7);
        assert_eq!(
            super::verbs::decode_continue(&token).unwrap(),
            (Some("/registry/core/pods/a".to_owned()), 7)
        );
        assert!(super::verbs::decode_continue("not-a-token!").is_err());
    }
}
