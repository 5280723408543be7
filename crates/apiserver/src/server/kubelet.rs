//! The API server's side of the kubelet API: `pods/log` is answered by the node agent that
//! runs the pod, reached over HTTPS at the address and port its Node reports
//! (`status.addresses`, `status.daemonEndpoints.kubeletEndpoint.Port`), verified against
//! the cluster's CA, presenting the server's own client certificate
//! (`kube-apiserver-kubelet-client`). The agent's answer is streamed back as it comes, so
//! `kubectl logs -f` follows.

use super::*;

/// Where a node's agent listens: (address, port).
pub(super) fn endpoint(node: &Value) -> Option<(String, u16)> {
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64()?;
    let port = u16::try_from(port).ok().filter(|p| *p > 0)?;
    let addresses = node["status"]["addresses"].as_array()?;
    let pick = |kind: &str| {
        addresses
            .iter()
            .find(|a| a["type"] == kind)
            .and_then(|a| a["address"].as_str())
            .map(str::to_owned)
    };
    let address = pick("InternalIP").or_else(|| pick("ExternalIP")).or_else(|| pick("Hostname"))?;
    Some((address, port))
}

/// A client connection waiting to be upgraded (`exec`): its headers and raw query (for the
/// repeated `command` parameters) go to the agent, and its upgrade is joined to the agent's.
pub(super) struct Upgrade {
    pub(super) on: hyper::upgrade::OnUpgrade,
    pub(super) headers: hyper::HeaderMap,
    pub(super) query: String,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Api {
    /// An HTTP/1.1 connection to the agent of `node_name` (TLS, verified both ways).
    async fn kubelet_connect(&self, node_name: &str) -> Result<(Sender, String), ApiError> {
        let unreachable = |why: String| {
            ApiError::new(
                503,
                "ServiceUnavailable",
                format!("cannot reach the node agent of node {node_name:?}: {why}"),
            )
        };
        let nodes = resources::find("", "v1", "nodes")
            .ok_or_else(|| ApiError::new(500, "InternalError", "no nodes"))?;
        let node = match self.state.store.get(&nodes.key(None, node_name)).await {
            Ok(Some(kv)) => decode(&kv)?,
            Ok(None) => return Err(unreachable("the node does not exist".into())),
            Err(err) => return Err(storage_error(nodes, node_name, err)),
        };
        let (address, port) = endpoint(&node)
            .ok_or_else(|| unreachable("the node reports no kubelet endpoint".into()))?;
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((address.as_str(), port)),
        )
        .await
        .map_err(|_| unreachable(format!("connecting to {address}:{port} timed out")))?
        .map_err(|e| unreachable(format!("{address}:{port}: {e}")))?;
        let server_name = rustls::pki_types::ServerName::try_from(address.clone())
            .map_err(|e| unreachable(format!("bad address {address:?}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(self.state.kubelet_tls.clone());
        let tls = connector
            .connect(server_name, stream)
            .await
            .map_err(|e| unreachable(format!("TLS with {address}:{port}: {e}")))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok((sender, format!("{address}:{port}")))
    }

    /// `exec`, `attach` and `portForward` (no container): the agent's upgraded connection
    /// joined to the client's, byte for byte.
    pub(super) async fn kubelet_upgrade(
        &self,
        action: &str,
        node_name: &str,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<Response<Body>, ApiError> {
        let upgrade =
            self.upgrade.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or_else(|| {
                ApiError::bad_request(
                    format!("{action} needs a connection that can be upgraded (HTTP/1.1 with Upgrade: websocket)"),
                )
            })?;
        let (mut sender, host) = self.kubelet_connect(node_name).await?;
        let path = if container.is_empty() {
            format!("/{action}/{}/{}?{}", encode(namespace), encode(pod), upgrade.query)
        } else {
            format!(
                "/{action}/{}/{}/{}?{}",
                encode(namespace),
                encode(pod),
                encode(container),
                upgrade.query
            )
        };
        let mut request = Request::get(path).header(hyper::header::HOST, host);
        for (name, value) in &upgrade.headers {
            let lower = name.as_str();
            if lower.starts_with("sec-websocket-")
                || lower == "upgrade"
                || lower == "connection"
                || lower == "x-stream-protocol-version"
            {
                request = request.header(name, value);
            }
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
        let mut answer = sender.send_request(request).await.map_err(|e| {
            ApiError::new(
                503,
                "ServiceUnavailable",
                format!("the node agent of {node_name:?}: {e}"),
            )
        })?;
        if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
            let code = answer.status().as_u16();
            let bytes =
                answer.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let message = String::from_utf8_lossy(&bytes).trim().to_owned();
            return Err(match code {
                404 => ApiError::new(404, "NotFound", message),
                400..=499 => ApiError::bad_request(message),
                _ => ApiError::new(500, "InternalError", message),
            });
        }
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for (name, value) in answer.headers() {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        let agent_side = hyper::upgrade::on(&mut answer);
        let client_side = upgrade.on;
        tokio::spawn(async move {
            if let (Ok(client), Ok(agent)) = (client_side.await, agent_side.await) {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut agent = hyper_util::rt::TokioIo::new(agent);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
            }
        });
        Ok(response)
    }
}

impl Api {
    /// `GET nodes/NAME/proxy/PATH`: the node agent's own API (`/stats/summary`,
    /// `/metrics/resource`, `/healthz`), as kube-apiserver proxies to a kubelet.
    pub(super) async fn node_proxy(
        &self,
        method: &hyper::Method,
    ) -> Result<Response<Body>, ApiError> {
        if *method != hyper::Method::GET {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "berth's API server proxies only GET to a node's agent",
            ));
        }
        let node = self.target.name.clone().unwrap_or_default();
        let mut path = self.target.proxy_path.clone().unwrap_or_else(|| "/".into());
        // What may be read through here: the agent's reports and logs, not its streams.
        let readable = ["/stats/summary", "/metrics/resource", "/healthz"].contains(&path.as_str())
            || path.starts_with("/containerLogs/");
        if !readable {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("{path} is not proxied to a node's agent: /stats/summary, /metrics/resource, /healthz and /containerLogs/... are"),
            ));
        }
        let mut query: Vec<String> =
            self.params.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        query.sort();
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        self.kubelet_get(&node, &path).await
    }

    /// Sends `GET path` to the agent of `node` and streams its answer back.
    pub(super) async fn kubelet_get(
        &self,
        node_name: &str,
        path: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (mut sender, host) = self.kubelet_connect(node_name).await?;
        let request = Request::get(path)
            .header(hyper::header::HOST, host)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| {
            ApiError::new(
                503,
                "ServiceUnavailable",
                format!("the node agent of {node_name:?}: {e}"),
            )
        })?;
        let status = response.status();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let mut incoming = response.into_body();
        if !status.is_success() {
            let bytes = incoming.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let message = String::from_utf8_lossy(&bytes).trim().to_owned();
            let (reason, code) = match status.as_u16() {
                404 => ("NotFound", 404),
                400 => ("BadRequest", 400),
                403 => ("Forbidden", 403),
                _ => ("InternalError", 500),
            };
            return Err(ApiError::new(code, reason, message));
        }
        let (mut body_sender, body) =
            http_body_util::channel::Channel::<Bytes, Infallible>::new(16);
        let shutdown = self.state.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    frame = incoming.frame() => frame,
                    _ = shutdown.cancelled() => return,
                };
                match frame {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            if body_sender.send(Frame::data(data)).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => return,
                }
            }
        });
        let mut out = Response::new(body.boxed());
        out.headers_mut()
            .insert(CONTENT_TYPE, content_type.unwrap_or(HeaderValue::from_static("text/plain")));
        Ok(out)
    }
}

/// The agent's path for a pod's log, with the query kubectl sent.
pub(super) fn log_path(
    namespace: &str,
    pod: &str,
    container: &str,
    params: &HashMap<String, String>,
) -> String {
    let mut query: Vec<String> = Vec::new();
    for key in
        ["follow", "previous", "timestamps", "tailLines", "sinceSeconds", "sinceTime", "limitBytes"]
    {
        if let Some(value) = params.get(key) {
            query.push(format!("{key}={}", encode(value)));
        }
    }
    let mut path =
        format!("/containerLogs/{}/{}/{}", encode(namespace), encode(pod), encode(container));
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    path
}

/// Percent-encoding of what is not unreserved in a URL.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_comes_from_the_node_status() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(endpoint(&node), Some(("10.0.0.5".into(), 10250)));
        assert_eq!(endpoint(&json!({"status": {}})), None);
    }

    #[test]
    fn log_paths_carry_the_options() {
        let params: HashMap<String, String> = [
            ("follow".to_owned(), "true".to_owned()),
            ("tailLines".to_owned(), "5".to_owned()),
            ("pretty".to_owned(), "x".to_owned()),
        ]
        .into();
        let path = log_path("default", "web-1", "web", &params);
        assert!(path.starts_with("/containerLogs/default/web-1/web?"));
        assert!(
            path.contains("follow=true")
                && path.contains("tailLines=5")
                && !path.contains("pretty")
        );
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
