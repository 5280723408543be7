//! The HTTPS server: authentication, routing of Kubernetes API paths, and the verbs over
//! `berth-store` (`resourceVersion` is the store's revision of the object).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use berth_store::{EventKind, KeyValue, Store};

use crate::objects::{self, ApiError};
use crate::patch;
use crate::resources::{self, Resource, RESOURCES};
use crate::selector::{FieldSelector, LabelSelector};
use crate::{tls, Error};

/// Largest request body accepted (Kubernetes' limit is 3 MiB).
mod accounts;
mod cascade;
mod pods;

const MAX_BODY: usize = 3 << 20;

/// `berth server`'s settings, with k3s's flag names.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub bind_address: String,
    pub port: u16,
    /// `http://host:2379` for etcd; none for the embedded SQLite store.
    pub datastore_endpoint: Option<String>,
    pub token: Option<String>,
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
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
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
    }
}

/// Starts the server and serves until the process ends. `ready` hears the bound port.
pub async fn run(
    config: Config,
    ready: Option<tokio::sync::oneshot::Sender<u16>>,
) -> Result<(), Error> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Setup(format!("cannot create {}: {e}", config.data_dir.display())))?;
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
        None => Arc::new(
            berth_store::SqliteStore::open(&config.data_dir.join("state.db")).map_err(|e| Error::Setup(e.to_string()))?,
        ),
    };
    let key = crate::encryption::load_key(&config.data_dir)?;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let store: Arc<dyn Store> = Arc::new(crate::metrics::Measured::new(store, metrics.clone()));
    let store: Arc<dyn Store> = Arc::new(crate::encryption::Encrypted::new(store, &key)?);
    let tls_dir = config.data_dir.join("tls");
    let pki = tls::ensure(&tls_dir, std::slice::from_ref(&config.bind_address))?;
    let token = tls::token(&config.data_dir, config.token.as_deref())?;
    let listener = tokio::net::TcpListener::bind((config.bind_address.as_str(), config.port))
        .await
        .map_err(|e| {
            Error::Setup(format!("cannot listen on {}:{}: {e}", config.bind_address, config.port))
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
        audit
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Setup(format!("cannot restrict {}: {e}", audit_path.display())))?;
    }
    let mut users = vec![(token, crate::rbac::User::admin())];
    if let Ok(text) = std::fs::read_to_string(config.data_dir.join("tokens.csv")) {
        users.extend(crate::rbac::parse_tokens(&text));
    }
    let signer = crate::tokens::Signer::load(&tls_dir)?;
    let state = Arc::new(State {
        signer,
        store,
        users,
        service_allocation: tokio::sync::Mutex::new(()),
        audit: std::sync::Mutex::new(Some(audit)),
        metrics,
    });
    bootstrap(&state).await?;
    tokio::spawn(compact_periodically(state.store.clone()));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&pki)?);
    tracing::info!(port, "serving the API");
    if let Some(ready) = ready {
        let _ = ready.send(port);
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("accept: {err}");
                continue;
            }
        };
        // Small responses must not wait for a delayed ACK (Nagle): 40 ms per request.
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            // A client certificate the CA signed names the connection's user.
            let certified = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(tls::client_identity)
                .map(|(name, mut groups)| {
                    groups.push("system:authenticated".into());
                    Arc::new(crate::rbac::User { name, groups })
                });
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                let certified = certified.clone();
                async move { Ok::<_, Infallible>(handle(state, certified, request).await) }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
        });
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
    // The API's own service, holding the first address of the service range.
    let services =
        resources::find("", "v1", "services").ok_or_else(|| Error::Setup("no services".into()))?;
    let key = services.key(Some("default"), "kubernetes");
    if state.store.get(&key).await.map_err(|e| Error::Setup(e.to_string()))?.is_none() {
        let mut object = json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.43.0.1", "clusterIPs": ["10.43.0.1"], "sessionAffinity": "None",
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

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// What a path names.
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// Serves a request and records it in the metrics.
async fn handle(
    state: Arc<State>,
    certified: Option<Arc<crate::rbac::User>>,
    request: Request<Incoming>,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let watch = request.uri().query().is_some_and(|q| {
        q.split('&').any(|p| p.strip_prefix("watch=").and_then(parse_bool).unwrap_or(false))
    });
    let verb = match *request.method() {
        Method::GET if watch => "watch",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    };
    let segments: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
    let after_version = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    };
    let resource = match after_version {
        Some(["namespaces", _, resource, ..]) => (*resource).to_owned(),
        Some([resource, ..]) => (*resource).to_owned(),
        _ => "none".to_owned(),
    };
    let metrics = state.metrics.clone();
    let response = route(state, certified, request).await;
    metrics.observe(verb, &resource, response.status().as_u16(), started.elapsed());
    response
}

async fn route(
    state: Arc<State>,
    certified: Option<Arc<crate::rbac::User>>,
    request: Request<Incoming>,
) -> Response<Body> {
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let path = if path.is_empty() { "/".to_owned() } else { path };
    let accept =
        request.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return text_response(200, "ok"),
        "/version" => {
            return json_response(
                200,
                &json!({
                    "major": "1", "minor": "32", "gitVersion": "v1.32.0-berth",
                    "gitCommit": env!("CARGO_PKG_VERSION"), "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "rust", "compiler": "rustc",
                    "platform": format!("linux/{}", std::env::consts::ARCH),
                }),
            )
        }
        _ => {}
    }
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    // A bearer token, when given, must be known; otherwise the client certificate speaks.
    let user = match token {
        // As Kubernetes' authenticators do, either credential suffices: a certificate
        // user stands even beside a token nobody knows.
        Some(token) => match state.users.iter().find(|(known, _)| *known == token) {
            Some((_, user)) => Some(user.clone()),
            None => match state.service_account_user(&token).await {
                Some(user) => Some(user),
                None => certified.as_deref().cloned(),
            },
        },
        None => certified.as_deref().cloned(),
    };
    let Some(user) = user else {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    };
    let authenticated = user.clone();
    let user = match impersonate(&state, user, request.headers()).await {
        Ok(user) => user,
        Err(err) => return error_response(&err),
    };
    // Who wrote, for the audit log: the user acting, and who impersonated them.
    let impersonator = (authenticated != user).then_some(&authenticated);
    let discovery = |value: Value, aggregated: bool| {
        let mut response = json_response(200, &value);
        if aggregated {
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
                ),
            );
        }
        response
    };
    // Service-account token issuer discovery (OIDC), for any authenticated caller.
    if path == "/.well-known/openid-configuration" {
        // HTTP/2 names the host in the URI's authority, HTTP/1.1 in the Host header.
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers()
                    .get(hyper::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "kubernetes.default.svc".to_owned());
        return json_response(
            200,
            &json!({"issuer": crate::tokens::ISSUER, "jwks_uri": format!("https://{host}/openid/v1/jwks"),
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"]}),
        );
    }
    if path == "/openid/v1/jwks" {
        return json_response(200, &state.signer.jwks());
    }
    if path == "/metrics" {
        // A non-resource URL: ClusterRoles grant it with `nonResourceURLs`.
        let attributes = crate::rbac::Attributes {
            verb: "get".into(),
            path: path.clone(),
            ..Default::default()
        };
        if !state.authorize(&user, &attributes).await {
            return error_response(&ApiError::new(
                403,
                "Forbidden",
                crate::rbac::forbidden_message(&user, &attributes),
            ));
        }
        let mut response = Response::new(full(state.metrics.render()));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        return response;
    }
    let wants_aggregated = accept.contains("as=APIGroupDiscoveryList") && accept.contains("v=v2");
    match path.as_str() {
        "/api" if wants_aggregated => return discovery(resources::aggregated(true), true),
        "/api" => return discovery(resources::api_versions(), false),
        "/apis" if wants_aggregated => return discovery(resources::aggregated(false), true),
        "/apis" => return discovery(resources::api_group_list(), false),
        _ => {}
    }
    if path == "/openapi/v3" {
        return json_response(200, &resources::openapi_index());
    }
    if let Some(rest) = path.strip_prefix("/openapi/v3/") {
        // Made once per group-version and kept serialized: kubectl fetches one for every
        // `apply` and `create -f` it validates.
        static DOCUMENTS: std::sync::Mutex<BTreeMap<String, Option<Bytes>>> =
            std::sync::Mutex::new(BTreeMap::new());
        let cached = DOCUMENTS.lock().ok().and_then(|d| d.get(rest).cloned());
        let document = match cached {
            Some(document) => document,
            None => {
                let parts: Vec<&str> = rest.split('/').collect();
                let made = match parts.as_slice() {
                    ["api", version] => resources::openapi_document("", version),
                    ["apis", group, version] => resources::openapi_document(group, version),
                    _ => None,
                }
                .map(|d| Bytes::from(serde_json::to_vec(&d).unwrap_or_default()));
                if let Ok(mut documents) = DOCUMENTS.lock() {
                    if made.is_some() {
                        documents.insert(rest.to_owned(), made.clone());
                    }
                }
                made
            }
        };
        return match document {
            Some(document) => {
                let mut response = Response::new(full(document));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            None => error_response(&ApiError::no_such_path()),
        };
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        ["apis", group] => {
            return match resources::api_group_list()["groups"]
                .as_array()
                .and_then(|g| g.iter().find(|g| g["name"] == *group))
            {
                Some(g) => {
                    let mut g = g.clone();
                    g["kind"] = json!("APIGroup");
                    g["apiVersion"] = json!("v1");
                    json_response(200, &g)
                }
                None => error_response(&ApiError::no_such_path()),
            }
        }
        _ => return error_response(&ApiError::no_such_path()),
    };
    if rest.is_empty() {
        return match resources::resource_list(group, version) {
            Some(list) => json_response(200, &list),
            None => error_response(&ApiError::no_such_path()),
        };
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(percent_decode(ns)), rest),
        _ => (None, rest),
    };
    let Some(resource) = resources::find(group, version, rest[0]) else {
        return error_response(&ApiError::no_such_path());
    };
    if rest.len() > 3 {
        return error_response(&ApiError::no_such_path());
    }
    let target = Target {
        resource,
        namespace: if resource.namespaced { namespace } else { None },
        name: rest.get(1).map(|n| percent_decode(n)),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    };
    if let Some(sub) = &target.subresource {
        if !resource.subresources.iter().any(|s| s.name == sub) {
            return error_response(&ApiError::no_such_path());
        }
    }
    let params = query(&request);
    for name in BOOLEAN_PARAMETERS {
        if let Some(value) = params.get(*name).filter(|v| parse_bool(v).is_none()) {
            return error_response(&ApiError::bad_request(format!(
                "invalid value {value:?} for the query parameter {name}: use true or false"
            )));
        }
    }
    let method = request.method().clone();
    let content_type =
        request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = if matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                return error_response(&ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    "the request body is too large (over 3 MiB)",
                ))
            }
        }
    } else {
        Bytes::new()
    };
    // Reviews are answered about the caller, never stored.
    if matches!(resource.kind, "SelfSubjectReview" | "SelfSubjectAccessReview") {
        if method != Method::POST {
            return error_response(&ApiError::new(
                405,
                "MethodNotAllowed",
                "only create is allowed",
            ));
        }
        let mut review = match decode_body(&content_type, &body) {
            Ok(review) => review,
            Err(err) => return error_response(&err),
        };
        if resource.kind == "SelfSubjectReview" {
            return json_response(
                201,
                &json!({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": null},
                    "status": {"userInfo": {"username": user.name, "groups": user.groups}}}),
            );
        }
        let spec = &review["spec"]["resourceAttributes"];
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        let non_resource = &review["spec"]["nonResourceAttributes"];
        let attributes = if non_resource.is_object() {
            crate::rbac::Attributes {
                verb: text(&non_resource["verb"]),
                path: text(&non_resource["path"]),
                ..Default::default()
            }
        } else {
            crate::rbac::Attributes {
                verb: text(&spec["verb"]),
                group: text(&spec["group"]),
                resource: text(&spec["resource"]),
                subresource: text(&spec["subresource"]),
                namespace: text(&spec["namespace"]),
                name: text(&spec["name"]),
                ..Default::default()
            }
        };
        let allowed = state.authorize(&user, &attributes).await;
        review["status"] = json!({"allowed": allowed});
        return json_response(201, &review);
    }
    let verb = match (
        &method,
        target.name.is_some(),
        params.get("watch").and_then(|w| parse_bool(w)).unwrap_or(false),
    ) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, true, _) => "get",
        (&Method::GET, false, _) => "list",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, true, _) => "delete",
        (&Method::DELETE, false, _) => "deletecollection",
        _ => "unknown",
    };
    let attributes = crate::rbac::Attributes {
        verb: verb.to_owned(),
        group: target.resource.group.to_owned(),
        resource: target.resource.name.to_owned(),
        subresource: target.subresource.clone().unwrap_or_default(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
        ..Default::default()
    };
    if !state.authorize(&user, &attributes).await {
        return error_response(&ApiError::new(
            403,
            "Forbidden",
            crate::rbac::forbidden_message(&user, &attributes),
        ));
    }
    let api = Api {
        state: state.clone(),
        target,
        params,
        accept,
        warnings: Default::default(),
        duplicates: Default::default(),
    };
    // Bindings and subresources other than status answer for themselves.
    let special = match (api.resource().kind, api.target.subresource.as_deref()) {
        ("Binding", _) => Some(api.create_binding(&method, &content_type, &body).await),
        (_, Some("token")) => Some(
            api.token_request(&method, &content_type, &body)
                .await
                .map(|(code, value)| json_response(code, &value)),
        ),
        (_, Some("scale")) => Some(
            api.scale(&method, &content_type, &body).await.map(|value| json_response(200, &value)),
        ),
        (
            _,
            Some(action @ ("log" | "exec" | "attach" | "portforward" | "binding" | "eviction")),
        ) => Some(api.pod_action(action, &method, &body).await),
        _ => None,
    };
    if let Some(result) = special {
        if method != Method::GET {
            let code = result.as_ref().map(|r| r.status().as_u16()).unwrap_or_else(|e| e.code);
            state.audit(&user, impersonator, verb, &api.target, None, code);
        }
        return result.unwrap_or_else(|err| error_response(&err));
    }
    let result = match (method, api.target.name.is_some()) {
        (Method::GET, false) if api.flag("watch") => return api.watch().await,
        (Method::GET, false) => api.list().await,
        (Method::GET, true) if api.flag("watch") => return api.watch().await,
        (Method::GET, true) => api.get().await,
        (Method::POST, false) => api.create(&content_type, &body).await,
        (Method::PUT, true) => api.update(&content_type, &body).await,
        (Method::PATCH, true) => api.patch(&content_type, &body).await,
        (Method::DELETE, true) => api.delete(&content_type, &body).await,
        (Method::DELETE, false) => api.delete_collection(&content_type, &body).await,
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    };
    let code = match &result {
        Ok((code, _)) => *code,
        Err(err) => err.code,
    };
    if !matches!(verb, "get" | "list" | "watch") {
        let created = match &result {
            Ok((_, value)) if verb == "create" => Some(objects::name_of(value).to_owned()),
            _ => None,
        };
        state.audit(&user, impersonator, verb, &api.target, created.as_deref(), code);
    }
    let mut response = match result {
        Ok((code, value)) => json_response(code, &api.outward(value)),
        Err(err) => error_response(&err),
    };
    for warning in api.warnings.lock().map(|w| w.clone()).unwrap_or_default() {
        // RFC 7234 warning: code 299, no agent, the text quoted.
        let text = format!("299 - {}", Value::String(warning));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append("warning", value);
        }
    }
    response
}

/// `kubectl --as USER --as-group GROUP`: acting as someone else, for those whom RBAC
/// allows to `impersonate` that user and those groups.
async fn impersonate(
    state: &State,
    user: crate::rbac::User,
    headers: &hyper::HeaderMap,
) -> Result<crate::rbac::User, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
    };
    let (names, groups) = (values("impersonate-user"), values("impersonate-group"));
    let Some(name) = names.first() else {
        if groups.is_empty() {
            return Ok(user);
        }
        return Err(ApiError::bad_request("requested impersonation of groups without a user"));
    };
    // A service account is impersonated as one (`impersonate serviceaccounts` in its
    // namespace) and gets its groups, as its token would.
    let account = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()));
    let first = match &account {
        Some((ns, sa)) => ("serviceaccounts", ns.clone(), sa.clone()),
        None => ("users", String::new(), name.clone()),
    };
    let targets =
        std::iter::once(first).chain(groups.iter().map(|g| ("groups", String::new(), g.clone())));
    for (resource, namespace, target) in targets {
        let attributes = crate::rbac::Attributes {
            verb: "impersonate".into(),
            group: String::new(),
            resource: resource.into(),
            subresource: String::new(),
            namespace,
            name: target.clone(),
            ..Default::default()
        };
        if !state.authorize(&user, &attributes).await {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("{resource} {target:?} is forbidden: User {:?} cannot impersonate resource {resource:?} in API group \"\" at the cluster scope", user.name),
            ));
        }
    }
    let mut groups = groups;
    if let Some((ns, _)) = &account {
        for group in ["system:serviceaccounts".to_owned(), format!("system:serviceaccounts:{ns}")] {
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
    }
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    Ok(crate::rbac::User { name: name.clone(), groups })
}

impl State {
    /// RBAC: the admin may do everything; others what their bindings grant.
    async fn authorize(
        &self,
        user: &crate::rbac::User,
        attributes: &crate::rbac::Attributes,
    ) -> bool {
        if user.is_master() {
            return true;
        }
        let list = |resource: &str| {
            let store = self.store.clone();
            let prefix = resources::find("rbac.authorization.k8s.io", "v1", resource)
                .map(|r| r.prefix(None))
                .unwrap_or_default();
            async move {
                // An authorizer that cannot read its rules denies (and says why in the log).
                match store.list(&prefix, None, 0, 0).await {
                    Ok(page) => page
                        .items
                        .iter()
                        .filter_map(|kv| {
                            decode(kv)
                                .map_err(|e| tracing::warn!("RBAC rule skipped: {}", e.message))
                                .ok()
                        })
                        .collect::<Vec<_>>(),
                    Err(err) => {
                        tracing::warn!("cannot read RBAC rules ({prefix}): {err}");
                        Vec::new()
                    }
                }
            }
        };
        let (cluster_roles, roles, cluster_bindings, bindings) = (
            list("clusterroles").await,
            list("roles").await,
            list("clusterrolebindings").await,
            list("rolebindings").await,
        );
        crate::rbac::allowed(user, attributes, &cluster_roles, &roles, &cluster_bindings, &bindings)
    }

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
        if let Ok(mut file) = self.audit.lock() {
            if let Some(file) = file.as_mut() {
                use std::io::Write;
                if let Err(err) = writeln!(file, "{line}") {
                    tracing::warn!("audit log: a line is lost: {err}");
                }
            }
        }
    }
}

fn text_response(code: u16, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

struct Api {
    state: Arc<State>,
    target: Target,
    params: HashMap<String, String>,
    accept: String,
    /// `Warning` headers for the response (unknown fields under `fieldValidation=Warn`).
    warnings: std::sync::Mutex<Vec<String>>,
    /// Keys the request body repeated, by path.
    duplicates: std::sync::Mutex<Vec<String>>,
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

fn with_revision(mut object: Value, revision: i64) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
    object
}

impl Api {
    fn flag(&self, name: &str) -> bool {
        self.params.get(name).and_then(|v| parse_bool(v)).unwrap_or(false)
    }

    fn resource(&self) -> &'static Resource {
        self.target.resource
    }

    fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or("")
    }

    fn key(&self) -> String {
        self.resource().key(self.target.namespace.as_deref(), self.name())
    }

    /// `fieldValidation`: fields the kind's schema does not know, and keys the body
    /// repeats, fail the request (`Strict`), or are dropped (the last of a repeated key
    /// kept) with a warning (`Warn`, the default) or silently (`Ignore`).
    fn check_fields(&self, object: &mut Value) -> Result<(), ApiError> {
        let resource = self.resource();
        let mode = self.params.get("fieldValidation").map(String::as_str).unwrap_or("Warn");
        let gvk = (resource.group, resource.version, resource.kind);
        let duplicates: Vec<String> = self
            .duplicates
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
            .into_iter()
            .map(|f| format!("duplicate field {f:?}"))
            .collect();
        match mode {
            "Strict" => {
                let unknown = crate::schema::unknown_fields(gvk, object, false);
                if !unknown.is_empty() || !duplicates.is_empty() {
                    let mut list: Vec<String> =
                        unknown.iter().map(|f| format!("unknown field {f:?}")).collect();
                    list.extend(duplicates);
                    return Err(ApiError::bad_request(format!(
                        "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
                        list.join(", "),
                        kind = resource.kind,
                        version = resource.version,
                    )));
                }
            }
            "Warn" | "Ignore" | "" => {
                let unknown = crate::schema::unknown_fields(gvk, object, true);
                if mode == "Warn" {
                    if let Ok(mut warnings) = self.warnings.lock() {
                        warnings.extend(unknown.iter().map(|f| format!("unknown field {f:?}")));
                        warnings.extend(duplicates);
                    }
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation must be one of Strict, Warn or Ignore, not {other:?}"
                )))
            }
        }
        Ok(())
    }

    /// The resource objects of this one are stored as (autoscaling/v2 for v1 autoscalers;
    /// itself otherwise).
    fn stored(&self) -> &'static Resource {
        let r = self.resource();
        crate::convert::storage_version(r.group, r.version, r.kind)
            .and_then(|version| resources::find(r.group, version, r.name))
            .unwrap_or(r)
    }

    /// A request's object, in the stored version.
    fn inward(&self, object: Value) -> Value {
        let r = self.resource();
        crate::convert::to_storage(r.group, r.version, r.kind, object)
    }

    /// A stored object or list, in the request's version.
    fn outward(&self, value: Value) -> Value {
        let r = self.resource();
        crate::convert::from_storage(r.group, r.version, r.kind, value)
    }

    fn dry_run(&self) -> bool {
        self.params.get("dryRun").is_some_and(|v| v == "All")
    }

    fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels = LabelSelector::parse(
            self.params.get("labelSelector").map(String::as_str).unwrap_or(""),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(
            self.params.get("fieldSelector").map(String::as_str).unwrap_or(""),
            self.resource().field_selectors,
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok((labels, fields))
    }

    async fn current(&self) -> Result<Value, ApiError> {
        match self.state.store.get(&self.key()).await {
            Ok(Some(kv)) => decode(&kv),
            Ok(None) => Err(ApiError::not_found(self.resource(), self.name())),
            Err(err) => Err(storage_error(self.resource(), self.name(), err)),
        }
    }

    async fn get(&self) -> Result<(u16, Value), ApiError> {
        let object = self.current().await?;
        if self.accept.contains("as=Table") {
            let revision = object["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let include = self.params.get("includeObject").is_some_and(|v| v == "Object");
            return Ok((
                200,
                objects::table(self.resource(), std::slice::from_ref(&object), revision, include),
            ));
        }
        Ok((200, object))
    }

    async fn list(&self) -> Result<(u16, Value), ApiError> {
        let resource = self.resource();
        let (labels, fields) = self.selectors()?;
        let limit: usize = self.params.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
        let (start_after, revision) = match self.params.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => decode_continue(token)?,
            None => {
                let rv = self
                    .params
                    .get("resourceVersion")
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0);
                let exact = self.params.get("resourceVersionMatch").is_some_and(|m| m == "Exact");
                (None, if exact { rv } else { 0 })
            }
        };
        let prefix = resource.prefix(self.target.namespace.as_deref());
        let page = self
            .state
            .store
            .list(&prefix, start_after.as_deref(), limit, revision)
            .await
            .map_err(|e| storage_error(resource, "", e))?;
        let items: Vec<Value> = page
            .items
            .iter()
            .map(decode)
            .collect::<Result<Vec<Value>, ApiError>>()?
            .into_iter()
            .filter(|o| {
                labels.matches(
                    objects::meta(o).and_then(|m| m.get("labels")).and_then(Value::as_object),
                ) && fields.matches(o)
            })
            .collect();
        let continue_token = if page.more {
            page.items.last().map(|k| encode_continue(&k.key, page.revision)).unwrap_or_default()
        } else {
            String::new()
        };
        if self.accept.contains("as=Table") {
            let include = self.params.get("includeObject").is_some_and(|v| v == "Object");
            let mut table = objects::table(resource, &items, page.revision, include);
            if !continue_token.is_empty() {
                table["metadata"]["continue"] = json!(continue_token);
            }
            return Ok((200, table));
        }
        let mut metadata = json!({"resourceVersion": page.revision.to_string()});
        if !continue_token.is_empty() {
            metadata["continue"] = json!(continue_token);
        }
        Ok((
            200,
            json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.group_version(), "metadata": metadata, "items": items}),
        ))
    }

    async fn namespace_ready(&self) -> Result<(), ApiError> {
        let Some(ns) = &self.target.namespace else { return Ok(()) };
        let namespaces = resources::find("", "v1", "namespaces")
            .ok_or_else(|| ApiError::new(500, "InternalError", "no namespaces"))?;
        match self.state.store.get(&namespaces.key(None, ns)).await {
            Ok(Some(kv)) => {
                let object = decode(&kv)?;
                if object["status"]["phase"] == "Terminating" {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!("{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated", objects::resource_name(self.resource()), self.name()),
                    ));
                }
                Ok(())
            }
            Ok(None) => Err(ApiError::not_found(namespaces, ns)),
            Err(err) => Err(storage_error(namespaces, ns, err)),
        }
    }

    /// The request's object or patch; keys a JSON body repeats are kept for
    /// `check_fields` (duplicates are strict validation's business too).
    fn parse_body(&self, content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
        if content_type.contains("protobuf") || content_type.contains("yaml") {
            return decode_body(content_type, body);
        }
        let (value, duplicates) = crate::schema::parse_noting_duplicates(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?;
        if let Ok(mut noted) = self.duplicates.lock() {
            noted.extend(duplicates);
        }
        Ok(value)
    }
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

impl Api {
    async fn create(&self, content_type: &str, body: &[u8]) -> Result<(u16, Value), ApiError> {
        let mut object = self.parse_body(content_type, body)?;
        self.check_fields(&mut object)?;
        let mut object = self.inward(object);
        let resource = self.stored();
        let name =
            objects::prepare_create(resource, &mut object, self.target.namespace.as_deref())?;
        objects::validate(resource, &object)?;
        self.record_manager(None, &mut object);
        self.namespace_ready().await?;
        let key = resource.key(self.target.namespace.as_deref(), &name);
        let _allocating = if resource.kind == "Service" {
            let guard = self.state.service_allocation.lock().await;
            self.allocate_service_addresses(&mut object).await?;
            Some(guard)
        } else {
            None
        };
        if self.dry_run() {
            if self
                .state
                .store
                .get(&key)
                .await
                .map_err(|e| storage_error(resource, &name, e))?
                .is_some()
            {
                return Err(ApiError::already_exists(resource, &name));
            }
            return Ok((201, object));
        }
        let revision = self
            .state
            .store
            .create(&key, sized(resource, &name, encode(&object))?)
            .await
            .map_err(|e| storage_error(resource, &name, e))?;
        Ok((201, with_revision(object, revision)))
    }

    /// Service defaults and addresses: a cluster IP from 10.43.0.0/16 (k3s's range;
    /// 10.43.0.1 is the API's own), node ports from 30000-32767 for NodePort and
    /// LoadBalancer services, TCP and targetPort defaults on ports.
    async fn allocate_service_addresses(&self, object: &mut Value) -> Result<(), ApiError> {
        let resource = self.resource();
        let spec = object.get_mut("spec").and_then(Value::as_object_mut);
        let Some(spec) = spec else { return Ok(()) };
        let kind = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_owned();
        spec.insert("type".into(), json!(kind));
        spec.entry("sessionAffinity").or_insert(json!("None"));
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for port in ports.iter_mut() {
                if port.get("protocol").is_none() {
                    port["protocol"] = json!("TCP");
                }
                if port.get("targetPort").is_none() {
                    port["targetPort"] = port["port"].clone();
                }
            }
        }
        if kind == "ExternalName" {
            return Ok(());
        }
        let all = self
            .state
            .store
            .list(&resource.prefix(None), None, 0, 0)
            .await
            .map_err(|e| storage_error(resource, "", e))?;
        let services: Vec<Value> = all.items.iter().map(decode).collect::<Result<_, _>>()?;
        let used_ips: std::collections::HashSet<String> = services
            .iter()
            .filter_map(|s| s["spec"]["clusterIP"].as_str().map(str::to_owned))
            .collect();
        let wanted = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("").to_owned();
        let ip = match wanted.as_str() {
            "None" => "None".to_owned(),
            "" => (2u32..65_534)
                .map(|n| format!("10.43.{}.{}", n / 256, n % 256))
                .find(|ip| !used_ips.contains(ip))
                .ok_or_else(|| {
                    ApiError::new(500, "InternalError", "the service IP range 10.43.0.0/16 is full")
                })?,
            given => {
                let inside = given
                    .parse::<std::net::Ipv4Addr>()
                    .ok()
                    .is_some_and(|a| a.octets()[0] == 10 && a.octets()[1] == 43);
                if !inside {
                    return Err(ApiError::invalid(resource, objects::name_of(object), "spec.clusterIPs", &format!("Invalid value: {given:?}: provided IP is not in the valid range. The range of valid IPs is 10.43.0.0/16")));
                }
                if used_ips.contains(given) {
                    return Err(ApiError::invalid(
                        resource,
                        objects::name_of(object),
                        "spec.clusterIPs",
                        &format!("Invalid value: {given:?}: provided IP is already allocated"),
                    ));
                }
                given.to_owned()
            }
        };
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
        if ip != "None" {
            spec.insert("ipFamilies".into(), json!(["IPv4"]));
            spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
        }
        if kind == "NodePort" || kind == "LoadBalancer" {
            let mut used_ports: std::collections::HashSet<i64> = services
                .iter()
                .flat_map(|s| s["spec"]["ports"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p["nodePort"].as_i64())
                .collect();
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports.iter_mut() {
                    if let Some(given) = port["nodePort"].as_i64() {
                        if !(30000..=32767).contains(&given) || !used_ports.insert(given) {
                            return Err(ApiError::new(422, "Invalid", format!("Service is invalid: spec.ports.nodePort: Invalid value: {given}: provided port is already allocated or outside 30000-32767")));
                        }
                        continue;
                    }
                    let free =
                        (30000..=32767).find(|p| !used_ports.contains(p)).ok_or_else(|| {
                            ApiError::new(500, "InternalError", "no node port left in 30000-32767")
                        })?;
                    used_ports.insert(free);
                    port["nodePort"] = json!(free);
                }
            }
        }
        Ok(())
    }

    /// Writes `object` over the current one (which had `revision`), keeping what an update
    /// may not change and bumping `generation` when the spec changes.
    async fn replace(
        &self,
        current: &Value,
        mut object: Value,
        revision: i64,
    ) -> Result<(u16, Value), ApiError> {
        let resource = self.stored();
        let name = self.name().to_owned();
        let status_only = self.target.subresource.as_deref() == Some("status");
        if status_only {
            let mut merged = current.clone();
            merged["status"] = object.get("status").cloned().unwrap_or(Value::Null);
            object = merged;
        } else if resource.subresources.iter().any(|s| s.name == "status")
            && resource.kind != "Namespace"
        {
            // Status changes go through /status.
            match current.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    if let Some(map) = object.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
        }
        if object.get("kind").and_then(Value::as_str).is_some_and(|k| k != resource.kind) {
            return Err(ApiError::bad_request("the kind of the object cannot change"));
        }
        object["kind"] = json!(resource.kind);
        object["apiVersion"] = json!(resource.group_version());
        if objects::name_of(&object) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                objects::name_of(&object)
            )));
        }
        for field in ["uid", "creationTimestamp", "namespace", "deletionTimestamp", "generation"] {
            match current["metadata"].get(field) {
                Some(v) => object["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = object["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        if !status_only {
            objects::default_fields(resource, &mut object);
        }
        if current.get("spec") != object.get("spec") {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
        // A Service keeps its address when an update leaves it out.
        if resource.kind == "Service"
            && object["spec"].is_object()
            && object["spec"]["clusterIP"].is_null()
        {
            object["spec"]["clusterIP"] = current["spec"]["clusterIP"].clone();
            object["spec"]["clusterIPs"] = current["spec"]["clusterIPs"].clone();
        }
        if !status_only {
            objects::validate(resource, &object)?;
            objects::validate_update(resource, current, &object)?;
        }
        // The last finalizer gone from an object being deleted: it goes.
        // (Only an object that had finalizers: a pod in its grace period has none, and an
        // update to it must not end that period.)
        let had_finalizers =
            current["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        let deleting = current["metadata"].get("deletionTimestamp").is_some() && had_finalizers;
        let finalizers_left =
            object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if self.dry_run() {
            return Ok((200, object));
        }
        if deleting && !finalizers_left {
            // Its deletion was held back by finalizers, and with it the cascade.
            let namespace = self.target.namespace.as_deref();
            self.state.cascade(current, namespace, "Background").await?;
            let revision = match self.state.store.get(&self.key()).await {
                Ok(Some(kv)) => kv.mod_revision,
                Ok(None) => return Ok((200, object)),
                Err(err) => return Err(storage_error(resource, &name, err)),
            };
            let gone = self
                .state
                .store
                .delete(&self.key(), Some(revision))
                .await
                .map_err(|e| storage_error(resource, &name, e))?;
            return Ok((200, with_revision(object, gone.mod_revision)));
        }
        if encode(current) == encode(&object) {
            return Ok((200, with_revision(object, revision)));
        }
        let new = self
            .state
            .store
            .update(&self.key(), sized(resource, &name, encode(&object))?, revision)
            .await
            .map_err(|e| storage_error(resource, &name, e))?;
        Ok((200, with_revision(object, new)))
    }

    async fn update(&self, content_type: &str, body: &[u8]) -> Result<(u16, Value), ApiError> {
        let mut object = self.parse_body(content_type, body)?;
        self.check_fields(&mut object)?;
        let mut object = self.inward(object);
        let current = self.current().await?;
        let current_revision: i64 = current["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let given = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
        let revision = if given.is_empty() {
            current_revision
        } else {
            given
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {given:?}")))?
        };
        if revision != current_revision {
            return Err(ApiError::conflict(self.resource(), self.name()));
        }
        self.record_manager(Some(&current), &mut object);
        self.replace(&current, object, revision).await
    }

    fn field_manager(&self) -> Option<&str> {
        self.params.get("fieldManager").map(String::as_str).filter(|m| !m.is_empty())
    }

    /// With a `fieldManager`, records in `managedFields` what this write changed.
    fn record_manager(&self, current: Option<&Value>, object: &mut Value) {
        if let Some(manager) = self.field_manager() {
            let version = self.resource().group_version();
            crate::apply::record_update(current, object, manager, &version);
        }
    }

    /// Server-side apply (`application/apply-patch+yaml`): see `crate::apply`.
    async fn server_side_apply(&self, config: &Value) -> Result<(u16, Value), ApiError> {
        let resource = self.resource();
        let manager = self
            .field_manager()
            .ok_or_else(|| {
                ApiError::new(422, "Invalid", "fieldManager is required for apply patch")
            })?
            .to_owned();
        let force = self.flag("force");
        let gv = resource.group_version();
        // An applied configuration is typed against the schema whatever fieldValidation says.
        let unknown = crate::schema::unknown_fields(
            (resource.group, resource.version, resource.kind),
            &mut config.clone(),
            false,
        );
        if let Some(first) = unknown.first() {
            let namespace =
                self.target.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default();
            return Err(ApiError::bad_request(format!(
                "failed to create typed patch object ({namespace}{name}; {gv}, Kind={kind}): .{first}: field not declared in schema",
                name = self.name(),
                kind = resource.kind,
            )));
        }
        if config.get("kind").and_then(Value::as_str).is_some_and(|k| k != resource.kind) {
            return Err(ApiError::bad_request(
                "the kind of the applied configuration does not match the resource",
            ));
        }
        for _ in 0..10 {
            let live = self
                .state
                .store
                .get(&self.key())
                .await
                .map_err(|e| storage_error(resource, self.name(), e))?;
            let stored = live.as_ref().map(decode).transpose()?;
            // Applied in the request's version, stored in the stored one.
            let live = stored.clone().map(|object| self.outward(object));
            let merged = crate::apply::apply(live.as_ref(), config, &manager, force, &gv).map_err(|conflicts| {
                let list: Vec<String> = conflicts.iter().map(|c| format!("conflict with {:?}: {}", c.manager, c.field)).collect();
                let mut err = ApiError::new(
                    409,
                    "Conflict",
                    format!("Apply failed with {} conflict{}: {}", conflicts.len(), if conflicts.len() == 1 { "" } else { "s" }, list.join("\n")),
                );
                err.details = json!({"name": self.name(), "group": resource.group, "kind": resource.name,
                    "causes": conflicts.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {:?}", c.manager), "field": c.field})).collect::<Vec<_>>()});
                err
            })?;
            let merged = self.inward(merged);
            let Some(live) = stored else {
                let mut object = merged;
                let resource = self.stored();
                let name = objects::prepare_create(
                    resource,
                    &mut object,
                    self.target.namespace.as_deref(),
                )?;
                if name != self.name() {
                    return Err(ApiError::bad_request(
                        "the name of the applied configuration does not match the name on the URL",
                    ));
                }
                objects::validate(resource, &object)?;
                self.namespace_ready().await?;
                if self.dry_run() {
                    return Ok((201, object));
                }
                let bytes = sized(resource, self.name(), encode(&object))?;
                match self.state.store.create(&self.key(), bytes).await {
                    Ok(revision) => return Ok((201, with_revision(object, revision))),
                    Err(berth_store::Error::AlreadyExists { .. }) => continue,
                    Err(err) => return Err(storage_error(resource, self.name(), err)),
                }
            };
            let revision: i64 = live["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            match self.replace(&live, merged, revision).await {
                Err(err)
                    if err.reason == "Conflict"
                        && err.code == 409
                        && err.details.get("causes").is_none() =>
                {
                    continue
                }
                other => return other,
            }
        }
        Err(ApiError::conflict(resource, self.name()))
    }

    async fn patch(&self, content_type: &str, body: &[u8]) -> Result<(u16, Value), ApiError> {
        let patch_doc = self.parse_body(content_type, body)?;
        if content_type.starts_with("application/apply-patch") {
            return self.server_side_apply(&patch_doc).await;
        }
        // Conflicts between reading and writing are retried: a patch applies to the latest.
        for _ in 0..10 {
            let current = self.current().await?;
            let revision: i64 = current["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // The patch applies to the object in the request's version.
            let view = self.outward(current.clone());
            let mut patched = view.clone();
            if content_type.starts_with("application/json-patch+json") {
                patched = patch::json_patch(&view, &patch_doc)
                    .map_err(|e| ApiError::new(422, "Invalid", e))?;
            } else if content_type.starts_with("application/merge-patch+json") {
                patch::merge_patch(&mut patched, &patch_doc);
            } else if content_type.starts_with("application/strategic-merge-patch+json") {
                patch::strategic_merge(&mut patched, &patch_doc);
            } else {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
                ));
            }
            self.check_fields(&mut patched)?;
            let mut patched = self.inward(patched);
            // A patch that names a resourceVersion is a precondition.
            if let Some(wanted) = patch_doc["metadata"]["resourceVersion"].as_str() {
                if wanted != revision.to_string() {
                    return Err(ApiError::conflict(self.resource(), self.name()));
                }
            }
            self.record_manager(Some(&current), &mut patched);
            match self.replace(&current, patched, revision).await {
                Err(err) if err.reason == "Conflict" => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(self.resource(), self.name()))
    }

    /// The `scale` subresource: a `Scale` view of `spec.replicas`.
    async fn scale(
        &self,
        method: &Method,
        content_type: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let view = |object: &Value| {
            let selector = object["spec"]["selector"]["matchLabels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            json!({
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {
                    "name": object["metadata"]["name"], "namespace": object["metadata"]["namespace"],
                    "uid": object["metadata"]["uid"], "resourceVersion": object["metadata"]["resourceVersion"],
                    "creationTimestamp": object["metadata"]["creationTimestamp"],
                },
                "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
                "status": {"replicas": object["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
            })
        };
        for _ in 0..10 {
            let current = self.current().await?;
            let revision: i64 = current["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let wanted = match *method {
                Method::GET => return Ok(view(&current)),
                Method::PUT => self.parse_body(content_type, body)?,
                Method::PATCH => {
                    let doc = self.parse_body(content_type, body)?;
                    let mut scale = view(&current);
                    if content_type.starts_with("application/json-patch+json") {
                        scale = patch::json_patch(&scale, &doc)
                            .map_err(|e| ApiError::new(422, "Invalid", e))?;
                    } else {
                        patch::merge_patch(&mut scale, &doc);
                    }
                    scale
                }
                _ => {
                    return Err(ApiError::new(
                        405,
                        "MethodNotAllowed",
                        "scale supports get, update and patch",
                    ))
                }
            };
            let Some(replicas) = wanted["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
                return Err(ApiError::invalid(
                    self.resource(),
                    self.name(),
                    "spec.replicas",
                    "must be greater than or equal to 0",
                ));
            };
            if let Some(rv) =
                wanted["metadata"]["resourceVersion"].as_str().filter(|v| !v.is_empty())
            {
                if rv != revision.to_string() {
                    return Err(ApiError::conflict(self.resource(), self.name()));
                }
            }
            let mut updated = current.clone();
            updated["spec"]["replicas"] = json!(replicas);
            match self.replace(&current, updated, revision).await {
                Err(err) if err.reason == "Conflict" => continue,
                Err(err) => return Err(err),
                Ok((_, object)) => return Ok(view(&object)),
            }
        }
        Err(ApiError::conflict(self.resource(), self.name()))
    }

    async fn delete(&self, content_type: &str, body: &[u8]) -> Result<(u16, Value), ApiError> {
        let resource = self.resource();
        let options = delete_options(content_type, body)?;
        let current = self.current().await?;
        let revision: i64 = current["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if let Some(uid) = options["preconditions"]["uid"].as_str() {
            if current["metadata"]["uid"].as_str() != Some(uid) {
                return Err(ApiError::conflict(resource, self.name()));
            }
        }
        if let Some(rv) = options["preconditions"]["resourceVersion"].as_str() {
            if rv != revision.to_string() {
                return Err(ApiError::conflict(resource, self.name()));
            }
        }
        let policy = self.propagation_policy(&options)?;
        if self.dry_run() {
            return Ok((200, current));
        }
        if let Some(grace) = self.pod_grace_period(&current, &options) {
            // A pod that a node runs is stopped there first: it is marked with its grace
            // period and the node agent removes it (with grace 0) once its containers are
            // gone. A shorter period may replace a longer one.
            let old_grace = current["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if old_grace.is_some_and(|old| old <= grace) {
                return Ok((200, current));
            }
            let mut marked = current.clone();
            marked["metadata"]["deletionTimestamp"] =
                json!(objects::format_time(objects::unix_now() + grace));
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            let new = self
                .state
                .store
                .update(&self.key(), encode(&marked), revision)
                .await
                .map_err(|e| storage_error(resource, self.name(), e))?;
            return Ok((200, with_revision(marked, new)));
        }
        let finalizers =
            current["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        let mut revision = revision;
        if !finalizers && resource.kind != "Namespace" {
            self.state.cascade(&current, self.target.namespace.as_deref(), policy).await?;
            // Dependents are gone; the owner may have been written meanwhile (a status
            // update): delete what is there now, if it is still the same object.
            match self.state.store.get(&self.key()).await {
                Ok(Some(kv)) if decode(&kv)?["metadata"]["uid"] == current["metadata"]["uid"] => {
                    revision = kv.mod_revision;
                }
                Ok(_) => return Ok((200, current)),
                Err(err) => return Err(storage_error(resource, self.name(), err)),
            }
        }
        if resource.kind == "Namespace" || finalizers {
            if current["metadata"].get("deletionTimestamp").is_some() {
                return Ok((200, current));
            }
            let mut marked = current.clone();
            marked["metadata"]["deletionTimestamp"] = json!(objects::now());
            if resource.kind == "Namespace" {
                marked["status"]["phase"] = json!("Terminating");
            }
            let new = self
                .state
                .store
                .update(&self.key(), encode(&marked), revision)
                .await
                .map_err(|e| storage_error(resource, self.name(), e))?;
            if resource.kind == "Namespace" {
                let state = self.state.clone();
                let name = self.name().to_owned();
                tokio::spawn(async move { finish_namespace(state, name).await });
            }
            return Ok((200, with_revision(marked, new)));
        }
        let gone = self
            .state
            .store
            .delete(&self.key(), Some(revision))
            .await
            .map_err(|e| storage_error(resource, self.name(), e))?;
        Ok((200, with_revision(current, gone.mod_revision)))
    }

    async fn delete_collection(
        &self,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Value), ApiError> {
        let resource = self.resource();
        let options = delete_options(content_type, body)?;
        let policy = self.propagation_policy(&options)?;
        let (labels, fields) = self.selectors()?;
        let prefix = resource.prefix(self.target.namespace.as_deref());
        let page = self
            .state
            .store
            .list(&prefix, None, 0, 0)
            .await
            .map_err(|e| storage_error(resource, "", e))?;
        let mut deleted = Vec::new();
        for kv in &page.items {
            let object = decode(kv)?;
            if !labels.matches(
                objects::meta(&object).and_then(|m| m.get("labels")).and_then(Value::as_object),
            ) || !fields.matches(&object)
            {
                continue;
            }
            if self.dry_run() {
                deleted.push(object);
                continue;
            }
            // Finalizers hold an object back here too: it is marked, not removed.
            if object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
                if object["metadata"].get("deletionTimestamp").is_none() {
                    let mut marked = object.clone();
                    marked["metadata"]["deletionTimestamp"] = json!(objects::now());
                    let _ =
                        self.state.store.update(&kv.key, encode(&marked), kv.mod_revision).await;
                }
                deleted.push(object);
                continue;
            }
            let namespace = objects::meta(&object)
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            self.state.cascade(&object, namespace.as_deref(), policy).await?;
            match self.state.store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) | Err(berth_store::Error::NotFound { .. }) => deleted.push(object),
                Err(err) => return Err(storage_error(resource, objects::name_of(&object), err)),
            }
        }
        Ok((
            200,
            json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.group_version(), "metadata": {}, "items": deleted}),
        ))
    }

    /// A watch: chunked JSON events, one per line. From `resourceVersion` if given (410
    /// when compacted), else the current objects as ADDED first.
    async fn watch(&self) -> Response<Body> {
        let resource = self.resource();
        let (labels, fields) = match self.selectors() {
            Ok(s) => s,
            Err(err) => return error_response(&err),
        };
        let name_filter = self.target.name.clone();
        let prefix = resource.prefix(self.target.namespace.as_deref());
        let rv = self.params.get("resourceVersion").cloned().unwrap_or_default();
        let timeout = self
            .params
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs);
        let bookmarks = self.flag("allowWatchBookmarks");
        let store = self.state.store.clone();
        let (mut initial, from) = if rv.is_empty() || rv == "0" {
            match store.list(&prefix, None, 0, 0).await {
                Ok(page) => {
                    let decoded: Result<Vec<Value>, ApiError> = page
                        .items
                        .iter()
                        .map(|kv| Ok(json!({"type": "ADDED", "object": decode(kv)?})))
                        .collect();
                    match decoded {
                        Ok(events) => (events, page.revision),
                        Err(err) => return error_response(&err),
                    }
                }
                Err(err) => return error_response(&storage_error(resource, "", err)),
            }
        } else {
            match rv.parse::<i64>() {
                Ok(v) => (Vec::new(), v),
                Err(_) => {
                    return error_response(&ApiError::bad_request(format!(
                        "invalid resourceVersion {rv:?}"
                    )))
                }
            }
        };
        let matches = move |object: &Value| {
            labels.matches(
                objects::meta(object).and_then(|m| m.get("labels")).and_then(Value::as_object),
            ) && fields.matches(object)
                && name_filter.as_deref().is_none_or(|n| objects::name_of(object) == n)
        };
        initial.retain(|e| matches(&e["object"]));
        let stream = store.watch(&prefix, from).await;
        let (mut sender, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(64);
        let kind = resource.kind;
        let api_version = resource.group_version();
        let as_table = self.accept.contains("as=Table");
        let include = self.params.get("includeObject").is_some_and(|v| v == "Object");
        // With a Table asked for, each event carries a one-row table of the object.
        let shape = move |mut event: Value| {
            if event["object"]["kind"] == kind {
                let object = std::mem::take(&mut event["object"]);
                event["object"] =
                    crate::convert::from_storage(resource.group, resource.version, kind, object);
            }
            if as_table {
                let revision = event["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                event["object"] = objects::table(
                    resource,
                    std::slice::from_ref(&event["object"]),
                    revision,
                    include,
                );
            }
            event
        };
        let initial: Vec<Value> = initial.into_iter().map(shape).collect();
        let metrics = self.state.metrics.clone();
        tokio::spawn(async move {
            struct Open(Arc<crate::metrics::Metrics>);
            impl Drop for Open {
                fn drop(&mut self) {
                    self.0.watch_ended();
                }
            }
            metrics.watch_started();
            let _open = Open(metrics);
            let line = |value: &Value| {
                let mut bytes = serde_json::to_vec(value).unwrap_or_default();
                bytes.push(b'\n');
                Bytes::from(bytes)
            };
            for event in &initial {
                if sender.send(Frame::data(line(event))).await.is_err() {
                    return;
                }
            }
            let mut stream = match stream {
                Ok(stream) => stream,
                Err(err) => {
                    let status = storage_error(resource, "", err).status();
                    let _ = sender
                        .send(Frame::data(line(&json!({"type": "ERROR", "object": status}))))
                        .await;
                    return;
                }
            };
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let mut last = from;
            loop {
                let tick =
                    tokio::time::sleep(Duration::from_secs(if bookmarks { 30 } else { 3600 }));
                let until_deadline = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    event = stream.recv() => {
                        let Some(event) = event else { return };
                        let event = match event {
                            Ok(event) => event,
                            Err(err) => {
                                let status = storage_error(resource, "", err).status();
                                let _ = sender.send(Frame::data(line(&json!({"type": "ERROR", "object": status})))).await;
                                return;
                            }
                        };
                        last = event.revision();
                        let object = match decode(&event.kv) {
                            Ok(object) => object,
                            Err(err) => {
                                let _ = sender.send(Frame::data(line(&json!({"type": "ERROR", "object": err.status()})))).await;
                                return;
                            }
                        };
                        if !matches(&object) {
                            continue;
                        }
                        let kind = match event.kind {
                            EventKind::Delete => "DELETED",
                            EventKind::Put if event.prev.is_none() => "ADDED",
                            EventKind::Put => "MODIFIED",
                        };
                        if sender.send(Frame::data(line(&shape(json!({"type": kind, "object": object}))))).await.is_err() {
                            return;
                        }
                    }
                    _ = tick, if bookmarks => {
                        let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last.to_string()}}});
                        if sender.send(Frame::data(line(&bookmark))).await.is_err() {
                            return;
                        }
                    }
                    _ = until_deadline => return,
                }
            }
        });
        let mut response = Response::new(body.boxed());
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

fn encode_continue(key: &str, revision: i64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!({"start": key, "rv": revision})).unwrap_or_default())
}

fn decode_continue(token: &str) -> Result<(Option<String>, i64), ApiError> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("invalid continue token");
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok((value["start"].as_str().map(str::to_owned), value["rv"].as_i64().ok_or_else(bad)?))
}

/// Revisions of history kept for watches to resume from (as kine keeps 1000).
const HISTORY: i64 = 1000;

/// Compacts the store every minute, keeping the last `HISTORY` revisions, so the store does
/// not grow with every write ever made.
async fn compact_periodically(store: Arc<dyn Store>) {
    let mut done = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let Ok(current) = store.revision().await else { continue };
        let target = current - HISTORY;
        if target <= done {
            continue;
        }
        match store.compact(target).await {
            Ok(()) | Err(berth_store::Error::Compacted { .. }) => done = target,
            Err(err) => tracing::warn!("compaction to {target}: {err}"),
        }
    }
}

/// A terminating namespace: delete everything in it, then the namespace itself.
async fn finish_namespace(state: Arc<State>, name: String) {
    let mut prefixes: Vec<String> =
        RESOURCES.iter().filter(|r| r.namespaced).map(|r| r.prefix(Some(&name))).collect();
    prefixes.dedup();
    for prefix in prefixes {
        let Ok(page) = state.store.list(&prefix, None, 0, 0).await else { continue };
        for kv in page.items {
            let _ = state.store.delete(&kv.key, None).await;
        }
    }
    if let Some(namespaces) = resources::find("", "v1", "namespaces") {
        let _ = state.store.delete(&namespaces.key(None, &name), None).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_percent_decoded_without_panicking() {
        assert_eq!(super::percent_decode("app%3Dweb%2Ctier+in+%28a%29"), "app=web,tier in (a)");
        assert_eq!(super::percent_decode("%zz%"), "%zz%");
        assert_eq!(super::percent_decode("%\u{e9}\u{e9}"), "%\u{e9}\u{e9}");
        let token = super::encode_continue("/registry/core/pods/a", 7);
        assert_eq!(
            super::decode_continue(&token).unwrap(),
            (Some("/registry/core/pods/a".to_owned()), 7)
        );
        assert!(super::decode_continue("not-a-token!").is_err());
    }
}
