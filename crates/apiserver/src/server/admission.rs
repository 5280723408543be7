//! Admission webhooks (`admissionregistration.k8s.io/v1`), called as kube-apiserver calls
//! them: on create, update and delete of what a webhook's rules match (operations, groups,
//! versions, resources with subresources, scope; namespace and object label selectors),
//! mutating webhooks first, in name order, each seeing the previous ones' patches
//! (`AdmissionReview` v1, a base64 JSON patch applied), then validating webhooks; a
//! refusal is the webhook's message and code; a webhook that cannot be reached or times
//! out (`timeoutSeconds`, 10 by default) fails the request unless its `failurePolicy` is
//! `Ignore`. Dry runs skip webhooks that do not declare `sideEffects: None` (or
//! `NoneOnDryRun`). Webhook configurations themselves are never sent to webhooks, so a
//! broken webhook cannot lock its own fix out.
//!
//! A webhook is reached at its `url`, or through its Service: a ready endpoint of the
//! Service when there is one (the API server need not route cluster IPs), else the
//! cluster IP; TLS is verified against the webhook's `caBundle` (the cluster CA when
//! none is given) and the name `SERVICE.NAMESPACE.svc`.

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::mirror::Mirror;
use super::*;

const PREFIX: &str = "/registry/admissionregistration.k8s.io/";

pub(super) struct Webhooks {
    _mirror: Arc<Mirror>,
    configs: Arc<RwLock<Vec<Value>>>,
    /// The cluster CA, for webhooks that give no `caBundle`.
    pub(super) cluster_ca: String,
}

impl Webhooks {
    pub(super) async fn start(
        store: Arc<dyn Store>,
        cluster_ca: String,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Webhooks>, Error> {
        let configs: Arc<RwLock<Vec<Value>>> = Arc::default();
        let writer = configs.clone();
        let on_change = Box::new(move |objects: &BTreeMap<String, Value>| {
            if let Ok(mut configs) = writer.write() {
                *configs = objects.values().cloned().collect();
            }
        });
        let mirror =
            Mirror::start(store, PREFIX, "webhook configurations", on_change, tasks, shutdown)
                .await?;
        Ok(Arc::new(Webhooks { _mirror: mirror, configs, cluster_ca }))
    }

    /// The webhooks of one kind of configuration (`Mutating...` or `Validating...`), in
    /// the order Kubernetes calls them: configurations by name, webhooks in order.
    fn of(&self, kind: &str) -> Vec<Value> {
        let mut configs: Vec<Value> = self
            .configs
            .read()
            .map(|c| c.iter().filter(|c| c["kind"] == kind).cloned().collect())
            .unwrap_or_default();
        configs.sort_by(|a, b| objects::name_of(a).cmp(objects::name_of(b)));
        configs.iter().flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default()).collect()
    }
}

/// What a request is, for matching and for the review.
struct Request<'a> {
    operation: &'a str,
    resource: &'a Resource,
    subresource: &'a str,
    namespace: &'a str,
    name: &'a str,
}

fn any_of(list: &Value, wanted: &str) -> bool {
    list.as_array().into_iter().flatten().filter_map(Value::as_str).any(|x| x == "*" || x == wanted)
}

/// Whether one of a webhook's rules names this request.
fn rules_match(webhook: &Value, request: &Request) -> bool {
    let resource = request.resource;
    let full = if request.subresource.is_empty() {
        resource.name.to_owned()
    } else {
        format!("{}/{}", resource.name, request.subresource)
    };
    webhook["rules"].as_array().into_iter().flatten().any(|rule| {
        let resources_match =
            rule["resources"].as_array().into_iter().flatten().filter_map(Value::as_str).any(|r| {
                r == "*/*"
                    || r == full
                    || (r == "*" && request.subresource.is_empty())
                    || r.strip_suffix("/*").is_some_and(|base| {
                        base == resource.name && !request.subresource.is_empty()
                    })
                    || r.strip_prefix("*/").is_some_and(|sub| sub == request.subresource)
            });
        let scope = rule["scope"].as_str().unwrap_or("*");
        let scope_match = match scope {
            "Cluster" => !resource.namespaced,
            "Namespaced" => resource.namespaced,
            _ => true,
        };
        any_of(&rule["operations"], request.operation)
            && any_of(&rule["apiGroups"], resource.group)
            && any_of(&rule["apiVersions"], resource.version)
            && resources_match
            && scope_match
    })
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    if !selector.is_object() {
        return true;
    }
    match crate::selector::LabelSelector::from_object(selector) {
        Ok(selector) => selector.matches(labels.as_object()),
        Err(_) => false,
    }
}

impl Api {
    /// Runs the admission webhooks for a write: the object as mutating webhooks leave it
    /// (`None` for deletions), or the refusal.
    pub(super) async fn admit(
        &self,
        operation: &str,
        object: Option<Value>,
        old: Option<&Value>,
    ) -> Result<Option<Value>, ApiError> {
        let resource = self.resource();
        if resource.group == "admissionregistration.k8s.io" {
            return Ok(object);
        }
        let mutating = self.state.webhooks.of("MutatingWebhookConfiguration");
        let validating = self.state.webhooks.of("ValidatingWebhookConfiguration");
        if mutating.is_empty() && validating.is_empty() {
            return Ok(object);
        }
        let name =
            object.as_ref().or(old).map(|o| objects::name_of(o).to_owned()).unwrap_or_default();
        let request = Request {
            operation,
            resource,
            subresource: self.target.subresource.as_deref().unwrap_or(""),
            namespace: self.target.namespace.as_deref().unwrap_or(""),
            name: &name,
        };
        let namespace_labels = self.namespace_labels(&request, object.as_ref()).await;
        let mut object = object;
        for (webhook, mutates) in
            mutating.iter().map(|w| (w, true)).chain(validating.iter().map(|w| (w, false)))
        {
            if !rules_match(webhook, &request) {
                continue;
            }
            // A namespace selector says nothing of cluster-scoped objects (other than
            // namespaces themselves): they are always sent, as Kubernetes does.
            let namespaced_request = !request.namespace.is_empty()
                || (request.resource.group.is_empty() && request.resource.kind == "Namespace");
            if namespaced_request && !labels_match(&webhook["namespaceSelector"], &namespace_labels)
            {
                continue;
            }
            let object_labels = |o: Option<&Value>| {
                o.map(|o| o["metadata"]["labels"].clone()).unwrap_or(Value::Null)
            };
            if !labels_match(&webhook["objectSelector"], &object_labels(object.as_ref()))
                && !labels_match(&webhook["objectSelector"], &object_labels(old))
            {
                continue;
            }
            let side_effect_free =
                matches!(webhook["sideEffects"].as_str(), Some("None" | "NoneOnDryRun"));
            if self.dry_run() && !side_effect_free {
                return Err(ApiError::bad_request(format!(
                    "admission webhook {:?} does not support dry run",
                    webhook["name"].as_str().unwrap_or("")
                )));
            }
            let review = self.review(&request, object.as_ref(), old);
            let hook = webhook["name"].as_str().unwrap_or("").to_owned();
            let answer = match self.state.call_webhook(webhook, &review).await {
                Ok(answer) => answer,
                Err(why) => {
                    if webhook["failurePolicy"] == "Ignore" {
                        tracing::warn!(webhook = %hook, "admission webhook failed and is ignored: {why}");
                        continue;
                    }
                    return Err(ApiError::new(
                        500,
                        "InternalError",
                        format!("Internal error occurred: failed calling webhook {hook:?}: {why}"),
                    ));
                }
            };
            let response = &answer["response"];
            if response["uid"] != review["request"]["uid"] {
                return Err(ApiError::new(500, "InternalError", format!("Internal error occurred: webhook {hook:?} answered for another request (uid {})", response["uid"])));
            }
            if let Some(warnings) = response["warnings"].as_array() {
                if let Ok(mut list) = self.warnings.lock() {
                    list.extend(warnings.iter().filter_map(|w| w.as_str().map(str::to_owned)));
                }
            }
            if response["allowed"] != true {
                let status = &response["status"];
                let code = status["code"]
                    .as_u64()
                    .and_then(|c| u16::try_from(c).ok())
                    .filter(|c| *c >= 400)
                    .unwrap_or(403);
                let message = status["message"].as_str().unwrap_or("");
                let reason: &'static str = if code == 403 { "Forbidden" } else { "BadRequest" };
                let text = if message.is_empty() {
                    format!("admission webhook {hook:?} denied the request without explanation")
                } else {
                    format!("admission webhook {hook:?} denied the request: {message}")
                };
                return Err(ApiError::new(code, reason, text));
            }
            if let (true, Some(patch), Some(current)) =
                (mutates, response["patch"].as_str(), object.as_ref())
            {
                if response["patchType"] != "JSONPatch" {
                    return Err(ApiError::new(500, "InternalError", format!("Internal error occurred: webhook {hook:?} answered a patch of type {} (only JSONPatch is known)", response["patchType"])));
                }
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD.decode(patch).map_err(|e| {
                    ApiError::new(500, "InternalError", format!("Internal error occurred: webhook {hook:?} answered a patch that is not base64: {e}"))
                })?;
                let patch: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::new(500, "InternalError", format!("Internal error occurred: webhook {hook:?} answered a patch that is not JSON: {e}"))
                })?;
                let patched = patch::json_patch(current, &patch).map_err(|e| {
                    ApiError::new(500, "InternalError", format!("Internal error occurred: webhook {hook:?} answered a patch that does not apply: {e}"))
                })?;
                for field in ["name", "namespace", "uid"] {
                    if patched["metadata"][field] != current["metadata"][field] {
                        return Err(ApiError::new(500, "InternalError", format!("Internal error occurred: webhook {hook:?} changed metadata.{field}, which admission may not change")));
                    }
                }
                object = Some(patched);
            }
        }
        Ok(object)
    }

    /// The labels of the namespace a request is in (of the namespace itself, for
    /// namespaces); none for other cluster-scoped kinds.
    async fn namespace_labels(&self, request: &Request<'_>, object: Option<&Value>) -> Value {
        if request.resource.kind == "Namespace" && request.resource.group.is_empty() {
            return object.map(|o| o["metadata"]["labels"].clone()).unwrap_or(Value::Null);
        }
        if request.namespace.is_empty() {
            return Value::Null;
        }
        let Some(namespaces) = resources::find("", "v1", "namespaces") else { return Value::Null };
        match self.state.store.get(&namespaces.key(None, request.namespace)).await {
            Ok(Some(kv)) => {
                decode(&kv).map(|ns| ns["metadata"]["labels"].clone()).unwrap_or(Value::Null)
            }
            _ => Value::Null,
        }
    }

    fn review(&self, request: &Request, object: Option<&Value>, old: Option<&Value>) -> Value {
        let r = request.resource;
        let uid = objects::uuid().unwrap_or_else(|_| format!("{}", objects::unix_now()));
        let user = &self.user;
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": r.group, "version": r.version, "kind": r.kind},
                "resource": {"group": r.group, "version": r.version, "resource": r.name},
                "subResource": if request.subresource.is_empty() { Value::Null } else { json!(request.subresource) },
                "requestKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "requestResource": {"group": r.group, "version": r.version, "resource": r.name},
                "name": request.name,
                "namespace": if request.namespace.is_empty() { Value::Null } else { json!(request.namespace) },
                "operation": request.operation,
                "userInfo": {"username": user.name, "groups": user.groups},
                "object": object.cloned().map(|o| self.outward(o)).unwrap_or(Value::Null),
                "oldObject": old.cloned().map(|o| self.outward(o)).unwrap_or(Value::Null),
                "dryRun": self.dry_run(),
                "options": match request.operation {
                    "CREATE" => json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
                    "UPDATE" => json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}),
                    _ => json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}),
                },
            }
        })
    }
}

/// The system's trusted roots (Debian's bundle), read once; empty when there are none.
fn system_roots() -> &'static str {
    static ROOTS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    })
}

impl State {
    /// Posts the review to the webhook; its answer, or why there is none.
    pub(super) async fn call_webhook(
        &self,
        webhook: &Value,
        review: &Value,
    ) -> Result<Value, String> {
        let timeout = webhook["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30);
        tokio::time::timeout(Duration::from_secs(timeout), self.post(webhook, review))
            .await
            .map_err(|_| format!("the webhook did not answer within {timeout}s"))?
    }

    async fn post(&self, webhook: &Value, review: &Value) -> Result<Value, String> {
        let config = &webhook["clientConfig"];
        let (host, port, path, server_name) = match config["url"].as_str() {
            Some(url) => {
                let uri: hyper::Uri = url.parse().map_err(|e| format!("bad url {url:?}: {e}"))?;
                if uri.scheme_str() != Some("https") {
                    return Err(format!("url {url:?} must use https"));
                }
                let host =
                    uri.host().unwrap_or("").trim_matches(|c| c == '[' || c == ']').to_owned();
                let path = uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".into());
                (host.clone(), uri.port_u16().unwrap_or(443), path, host)
            }
            None => self.service_address(&config["service"]).await?,
        };
        let ca = match config["caBundle"].as_str().filter(|c| !c.is_empty()) {
            Some(bundle) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(bundle)
                    .map_err(|e| format!("caBundle is not base64: {e}"))?;
                String::from_utf8(bytes).map_err(|_| "caBundle is not PEM".to_owned())?
            }
            // Without a caBundle, the cluster CA and the system's roots (Kubernetes
            // trusts the system's).
            None => format!("{}\n{}", self.webhooks.cluster_ca, system_roots()),
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("caBundle: {e}"))?;
        // A system bundle may hold roots rustls cannot use; those are skipped.
        let (_, skipped) = roots.add_parsable_certificates(certs);
        if roots.is_empty() {
            return Err(format!("caBundle holds no usable CA certificate ({skipped} skipped)"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let target = format!("{host}:{port}");
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("Post \"https://{target}{path}\": {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(server_name.clone())
            .map_err(|e| format!("bad server name {server_name:?}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, stream)
            .await
            .map_err(|e| format!("Post \"https://{target}{path}\": tls: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let body = serde_json::to_vec(review).map_err(|e| e.to_string())?;
        let request = hyper::Request::post(path.as_str())
            .header(hyper::header::HOST, server_name)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| format!("Post \"https://{target}{path}\": {e}"))?;
        let status = answer.status();
        let bytes = Limited::new(answer.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "the webhook answered {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("the answer is not an AdmissionReview: {e}"))
    }

    /// (host, port, path, TLS name) of a webhook's Service: a ready endpoint, else the
    /// cluster IP.
    async fn service_address(
        &self,
        service: &Value,
    ) -> Result<(String, u16, String, String), String> {
        let namespace = service["namespace"].as_str().unwrap_or("");
        let name = service["name"].as_str().unwrap_or("");
        let port = service["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(443);
        let path = service["path"].as_str().unwrap_or("/").to_owned();
        let tls_name = format!("{name}.{namespace}.svc");
        let read = |plural: &'static str| async move {
            let resource = resources::find("", "v1", plural)?;
            let kv = self.store.get(&resource.key(Some(namespace), name)).await.ok()??;
            decode(&kv).ok()
        };
        let svc = read("services")
            .await
            .ok_or_else(|| format!("service \"{namespace}/{name}\" not found"))?;
        let service_port = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"].as_u64() == Some(u64::from(port)))
            .cloned();
        if let (Some(service_port), Some(endpoints)) = (&service_port, read("endpoints").await) {
            for subset in endpoints["subsets"].as_array().into_iter().flatten() {
                let ports = subset["ports"].as_array().cloned().unwrap_or_default();
                let target = ports
                    .iter()
                    .find(|p| p["name"] == service_port["name"] || ports.len() == 1)
                    .and_then(|p| p["port"].as_u64())
                    .and_then(|p| u16::try_from(p).ok());
                let address = subset["addresses"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|a| a["ip"].as_str());
                if let (Some(target), Some(address)) = (target, address) {
                    return Ok((address.to_owned(), target, path, tls_name));
                }
            }
        }
        let ip = svc["spec"]["clusterIP"]
            .as_str()
            .filter(|ip| *ip != "None" && !ip.is_empty())
            .ok_or_else(|| {
                format!("service \"{namespace}/{name}\" has no endpoints and no cluster IP")
            })?;
        Ok((ip.to_owned(), port, path, tls_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_operations_groups_resources_and_scope() {
        let pods = resources::find("", "v1", "pods").unwrap();
        let deployments = resources::find("apps", "v1", "deployments").unwrap();
        let request = |operation, resource, subresource| Request {
            operation,
            resource,
            subresource,
            namespace: "default",
            name: "x",
        };
        let hook = |rule: Value| json!({"rules": [rule]});
        let pods_create = hook(
            json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}),
        );
        assert!(rules_match(&pods_create, &request("CREATE", pods, "")));
        assert!(!rules_match(&pods_create, &request("UPDATE", pods, "")));
        assert!(
            !rules_match(&pods_create, &request("CREATE", pods, "status")),
            "a subresource is named on its own"
        );
        assert!(!rules_match(&pods_create, &request("CREATE", deployments, "")));
        let all = hook(
            json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"], "scope": "Namespaced"}),
        );
        assert!(rules_match(&all, &request("DELETE", deployments, "scale")));
        let cluster = hook(
            json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"}),
        );
        assert!(!rules_match(&cluster, &request("CREATE", pods, "")));
        let status = hook(
            json!({"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods/*"]}),
        );
        assert!(rules_match(&status, &request("UPDATE", pods, "status")));
        assert!(!rules_match(&status, &request("UPDATE", pods, "")));
        assert!(labels_match(&json!({"matchLabels": {"a": "b"}}), &json!({"a": "b", "c": "d"})));
        assert!(!labels_match(
            &json!({"matchExpressions": [{"key": "a", "operator": "Exists"}]}),
            &Value::Null
        ));
        assert!(labels_match(&Value::Null, &Value::Null));
    }
}
