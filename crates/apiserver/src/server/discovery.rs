//! What clients read before they name a resource: health, `/version`, the discovery
//! documents (`/api`, `/apis`, `/apis/G`, `/api/v1`, `/apis/G/V`, legacy and aggregated),
//! OpenAPI v3, `/metrics`, and service-account issuer discovery.

use super::*;

/// Answers that need no identity: health, version, and the cluster CA (`/cacerts`, as
/// k3s serves it: a joining agent checks it against the hash its token carries).
pub(super) fn unauthenticated(state: &State, path: &str) -> Option<Response<Body>> {
    match path {
        "/cacerts" => Some(Response::new(full(Bytes::from(state.webhooks.cluster_ca.clone())))),
        "/healthz" | "/livez" | "/readyz" => Some(text_response(200, "ok")),
        "/version" => Some(json_response(
            200,
            &json!({
                "major": "1", "minor": "32", "gitVersion": "v1.32.0-berth",
                "gitCommit": env!("CARGO_PKG_VERSION"), "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "rust", "compiler": "rustc",
                "platform": format!("linux/{}", std::env::consts::ARCH),
            }),
        )),
        _ => None,
    }
}

fn discovery(value: Value, aggregated: bool) -> Response<Body> {
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
}

/// The documents any authenticated caller may read, by path; `None` for a path that is
/// not one of them.
pub(super) async fn serve(
    state: &State,
    user: &crate::rbac::User,
    path: &str,
    route: &route::Route,
    request: &hyper::http::request::Parts,
) -> Option<Response<Body>> {
    let accept = request.headers.get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    // Service-account token issuer discovery (OIDC).
    if path == "/.well-known/openid-configuration" {
        // HTTP/2 names the host in the URI's authority, HTTP/1.1 in the Host header.
        let host = request
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers
                    .get(hyper::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "kubernetes.default.svc".to_owned());
        return Some(json_response(
            200,
            &json!({"issuer": crate::tokens::ISSUER, "jwks_uri": format!("https://{host}/openid/v1/jwks"),
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"]}),
        ));
    }
    if path == "/openid/v1/jwks" {
        return Some(json_response(200, &state.signer.jwks()));
    }
    if path == "/metrics" {
        // A non-resource URL: ClusterRoles grant it with `nonResourceURLs`.
        let attributes = crate::rbac::Attributes {
            verb: "get".into(),
            path: path.to_owned(),
            ..Default::default()
        };
        if !state.authorize(user, &attributes).await {
            return Some(error_response(&ApiError::new(
                403,
                "Forbidden",
                crate::rbac::forbidden_message(user, &attributes),
            )));
        }
        let mut response = Response::new(full(state.metrics.render()));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        return Some(response);
    }
    let wants_aggregated = accept.contains("as=APIGroupDiscoveryList") && accept.contains("v=v2");
    match path {
        "/api" if wants_aggregated => return Some(discovery(resources::aggregated(true), true)),
        "/api" => return Some(discovery(resources::api_versions(), false)),
        "/apis" if wants_aggregated => return Some(discovery(resources::aggregated(false), true)),
        "/apis" => return Some(discovery(resources::api_group_list(), false)),
        "/openapi/v3" => return Some(json_response(200, &resources::openapi_index())),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/openapi/v3/") {
        return Some(openapi(rest));
    }
    match route {
        route::Route::Group { group } => Some(
            match resources::api_group_list()["groups"]
                .as_array()
                .and_then(|g| g.iter().find(|g| g["name"] == group.as_str()))
            {
                Some(g) => {
                    let mut g = g.clone();
                    g["kind"] = json!("APIGroup");
                    g["apiVersion"] = json!("v1");
                    json_response(200, &g)
                }
                None => error_response(&ApiError::no_such_path()),
            },
        ),
        route::Route::GroupVersion { group, version } => {
            Some(match resources::resource_list(group, version) {
                Some(list) => json_response(200, &list),
                None => error_response(&ApiError::no_such_path()),
            })
        }
        _ => None,
    }
}

/// An OpenAPI v3 document, made once per group-version and kept serialized: kubectl
/// fetches one for every `apply` and `create -f` it validates.
fn openapi(rest: &str) -> Response<Body> {
    static DOCUMENTS: std::sync::Mutex<BTreeMap<String, Option<Bytes>>> =
        std::sync::Mutex::new(BTreeMap::new());
    // Custom resources come and go: their documents are kept per table generation.
    let rest = &format!("{}#{rest}", berth_api::kinds::custom_generation());
    let cached = DOCUMENTS.lock().ok().and_then(|d| d.get(rest).cloned());
    let document = match cached {
        Some(document) => document,
        None => {
            let path = rest.split_once('#').map(|(_, p)| p).unwrap_or(rest);
            let parts: Vec<&str> = path.split('/').collect();
            let made = match parts.as_slice() {
                ["api", version] => resources::openapi_document("", version),
                ["apis", group, version] => resources::openapi_document(group, version),
                _ => None,
            }
            .and_then(|d| serde_json::to_vec(&d).ok())
            .map(Bytes::from);
            if let Ok(mut documents) = DOCUMENTS.lock() {
                // Documents of earlier generations are of no more use.
                let generation = rest.split('#').next().unwrap_or("");
                documents.retain(|k, _| k.starts_with(&format!("{generation}#")));
                if made.is_some() {
                    documents.insert(rest.to_owned(), made.clone());
                }
            }
            made
        }
    };
    match document {
        Some(document) => {
            let mut response = Response::new(full(document));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        None => error_response(&ApiError::no_such_path()),
    }
}
