//! The API as a `tower::Service`: any transport (the TLS listener, an in-process client)
//! hands it an `http::Request` whose extensions may carry the identity the transport
//! established; it authenticates, authorizes, dispatches and records metrics and audit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::route::Route;
use super::*;

/// The API server's request handler. Cheap to clone: every clone serves the same state.
#[derive(Clone)]
pub struct Handler {
    state: Arc<State>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler")
    }
}

impl Handler {
    pub(super) fn new(state: Arc<State>) -> Handler {
        Handler { state }
    }

    /// Serves one request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = std::time::Instant::now();
        let path = request.uri().path().trim_end_matches('/').to_owned();
        let path = if path.is_empty() { "/".to_owned() } else { path };
        let route = route::parse(&path);
        let watch = request.uri().query().is_some_and(|q| {
            q.split('&').any(|p| p.strip_prefix("watch=").and_then(parse_bool).unwrap_or(false))
        });
        let (verb, resource) = match &route {
            Route::Resource(target) => {
                (route::verb(request.method(), target.name.is_some(), watch), target.resource.name)
            }
            _ => (route::verb(request.method(), true, watch), "none"),
        };
        let span = tracing::debug_span!("request", verb, resource, path = %path, user = tracing::field::Empty);
        let response = tracing::Instrument::instrument(
            dispatch(self.state.clone(), &path, route, request),
            span,
        )
        .await;
        self.state.metrics.observe(verb, resource, response.status().as_u16(), started.elapsed());
        response
    }
}

impl<B> tower::Service<Request<B>> for Handler
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let handler = self.clone();
        Box::pin(async move { Ok(handler.handle(request).await) })
    }
}

async fn dispatch<B>(
    state: Arc<State>,
    path: &str,
    route: Route,
    request: Request<B>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(response) = discovery::unauthenticated(&state, path) {
        return response;
    }
    // Only the parts are held across awaits: a body need not be `Sync`.
    let (mut request, body) = request.into_parts();
    let accept = request.headers.get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let Some(user) = authn::authenticate(&state, &request).await else {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    };
    let authenticated = user.clone();
    let user = match authn::impersonate(&state, user, &request.headers).await {
        Ok(user) => user,
        Err(err) => return error_response(&err),
    };
    tracing::Span::current().record("user", user.name.as_str());
    // Who wrote, for the audit log: the user acting, and who impersonated them.
    let impersonator = (authenticated != user).then_some(&authenticated);
    if let Some(response) = discovery::serve(&state, &user, path, &route, &request).await {
        return response;
    }
    let target = match route {
        Route::Resource(target) => target,
        _ => return error_response(&ApiError::no_such_path()),
    };
    let resource = target.resource;
    let params = request::query(&request.uri);
    for name in BOOLEAN_PARAMETERS {
        if let Some(value) = params.get(*name).filter(|v| parse_bool(v).is_none()) {
            return error_response(&ApiError::bad_request(format!(
                "invalid value {value:?} for the query parameter {name}: use true or false"
            )));
        }
    }
    let method = request.method.clone();
    let content_type =
        request.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = if matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        match Limited::new(body, MAX_BODY).collect().await {
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
    // Reviews are answered, never stored. Asking about oneself needs no grant; asking
    // about others (or about a token) is authorized like any create.
    if reviews::is_review(resource.kind) {
        if method != Method::POST {
            return error_response(&ApiError::new(
                405,
                "MethodNotAllowed",
                "only create is allowed",
            ));
        }
        if !resource.kind.starts_with("Self") {
            let attributes = crate::rbac::Attributes {
                verb: "create".into(),
                group: resource.group.to_owned(),
                resource: resource.name.to_owned(),
                namespace: target.namespace.clone().unwrap_or_default(),
                ..Default::default()
            };
            if !state.authorize(&user, &attributes).await {
                return error_response(&ApiError::new(
                    403,
                    "Forbidden",
                    crate::rbac::forbidden_message(&user, &attributes),
                ));
            }
        }
        let review = match decode_body(&content_type, &body) {
            Ok(review) => review,
            Err(err) => return error_response(&err),
        };
        return match reviews::answer(
            &state,
            &user,
            resource.kind,
            target.namespace.as_deref(),
            review,
        )
        .await
        {
            Ok(answer) => json_response(201, &answer),
            Err(err) => error_response(&err),
        };
    }
    let verb = route::verb(
        &method,
        target.name.is_some(),
        params.get("watch").and_then(|w| parse_bool(w)).unwrap_or(false),
    );
    let attributes = crate::rbac::Attributes {
        verb: verb.to_owned(),
        group: target.resource.group.to_owned(),
        resource: target.resource.name.to_owned(),
        subresource: target.subresource.clone().unwrap_or_default(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
        selected_name: params
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .filter(|n| !n.contains(','))
            .unwrap_or_default()
            .to_owned(),
        ..Default::default()
    };
    if !state.authorize(&user, &attributes).await {
        return error_response(&ApiError::new(
            403,
            "Forbidden",
            crate::rbac::forbidden_message(&user, &attributes),
        ));
    }
    let upgrade =
        if matches!(target.subresource.as_deref(), Some("exec" | "attach" | "portforward")) {
            request.extensions.remove::<hyper::upgrade::OnUpgrade>().map(|on| {
                super::kubelet::Upgrade {
                    on,
                    headers: request.headers.clone(),
                    query: request.uri.query().unwrap_or("").to_owned(),
                }
            })
        } else {
            None
        };
    if resource.group == "metrics.k8s.io" {
        return usage::answer(
            &state,
            &method,
            resource,
            target.namespace.as_deref(),
            target.name.as_deref(),
            &params,
        )
        .await;
    }
    if resource.kind == "ComponentStatus" {
        return components::answer(&state, &method, target.name.as_deref(), &accept).await;
    }
    let api = Api {
        state: state.clone(),
        target,
        params,
        accept,
        user: user.clone(),
        warnings: Default::default(),
        duplicates: Default::default(),
        upgrade: std::sync::Mutex::new(upgrade),
    };
    if let Some(custom) = crate::crd::lookup(api.resource()) {
        if let Some(warning) = &custom.deprecation {
            if let Ok(mut warnings) = api.warnings.lock() {
                warnings.push(warning.clone());
            }
        }
    }
    // Bindings and subresources other than status answer for themselves.
    let special = match (api.resource().kind, api.target.subresource.as_deref()) {
        ("Binding", _) => Some(api.create_binding(&method, &content_type, &body).await),
        (_, Some("token")) => Some(
            api.token_request(&method, &content_type, &body)
                .await
                .map(|(code, value)| json_response(code, &value)),
        ),
        (_, Some("ephemeralcontainers")) => Some(
            api.ephemeral_containers(&method, &content_type, &body)
                .await
                .map(|value| json_response(200, &value)),
        ),
        (_, Some("approval")) => Some(
            api.approval(&method, &content_type, &body)
                .await
                .map(|value| json_response(200, &value)),
        ),
        (_, Some("finalize")) => Some(
            api.finalize(&method, &content_type, &body)
                .await
                .map(|value| json_response(200, &value)),
        ),
        (_, Some("scale")) => Some(
            api.scale(&method, &content_type, &body).await.map(|value| json_response(200, &value)),
        ),
        (
            _,
            Some(action @ ("log" | "exec" | "attach" | "portforward" | "binding" | "eviction")),
        ) => Some(api.pod_action(action, &method, &content_type, &body).await),
        (_, Some("proxy")) if api.target.resource.name == "nodes" => {
            Some(api.node_proxy(&method).await)
        }
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
    // A definition written: its resources are served (or not) before the answer goes.
    if api.resource().kind == "CustomResourceDefinition"
        && !matches!(verb, "get" | "list" | "watch")
    {
        state.crds.refresh().await;
    }
    if !matches!(verb, "get" | "list" | "watch") {
        let created = match &result {
            Ok((_, value)) if verb == "create" => Some(objects::name_of(value).to_owned()),
            _ => None,
        };
        state.audit(&user, impersonator, verb, &api.target, created.as_deref(), code);
    }
    let mut response = match result {
        Ok((code, value)) => match api.to_served(value).await {
            Ok(value) => json_response(code, &value),
            Err(err) => error_response(&err),
        },
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
