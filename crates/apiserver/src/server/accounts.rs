//! Service accounts' tokens: `serviceaccounts/<name>/token` issues them, and bearer
//! tokens that are JWTs are checked against the accounts (and bound objects) they name.

use super::*;

impl Api {
    /// `serviceaccounts/<name>/token` (`kubectl create token`): a signed token for the
    /// account, for `expirationSeconds` (default an hour, at least ten minutes), optionally
    /// bound to a Pod, Secret or Node that must exist and whose deletion revokes it.
    pub(super) async fn token_request(
        &self,
        method: &Method,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Value), ApiError> {
        if *method != Method::POST {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "only create is allowed on serviceaccounts/token",
            ));
        }
        let account = self.current().await?;
        let request = decode_body(content_type, body)?;
        if !request.is_object() || !(request["spec"].is_object() || request["spec"].is_null()) {
            return Err(ApiError::bad_request("a TokenRequest is an object with an object spec"));
        }
        let name = self.name().to_owned();
        let namespace = self.target.namespace.clone().unwrap_or_default();
        let spec = &request["spec"];
        let seconds = spec["expirationSeconds"].as_i64().unwrap_or(3600);
        let invalid = |field: &str, message: String| {
            ApiError::new(
                422,
                "Invalid",
                format!(
                    "TokenRequest.authentication.k8s.io {name:?} is invalid: {field}: {message}"
                ),
            )
        };
        if seconds < 600 {
            return Err(invalid(
                "spec.expirationSeconds",
                format!(
                    "Invalid value: {seconds}: may not specify a duration less than 10 minutes"
                ),
            ));
        }
        if seconds > 1 << 32 {
            return Err(invalid(
                "spec.expirationSeconds",
                format!(
                    "Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"
                ),
            ));
        }
        let audiences: Vec<String> = spec["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        // A node (its own certificate's identity) may only ask for tokens bound to a pod
        // that runs on it: nothing else of an account's rights is a node's to take.
        let requesting_node = self
            .user
            .name
            .strip_prefix("system:node:")
            .filter(|_| self.user.groups.iter().any(|g| g == "system:nodes"))
            .filter(|_| !self.user.is_master())
            .map(str::to_owned);
        let node_refused = || {
            ApiError::new(
                403,
                "Forbidden",
                format!(
                    "serviceaccounts \"{name}\" is forbidden: a node may only request tokens bound to a pod scheduled to it"
                ),
            )
        };
        if requesting_node.is_some() && spec["boundObjectRef"].as_object().is_none() {
            return Err(node_refused());
        }
        let bound = match spec["boundObjectRef"].as_object() {
            None => None,
            Some(reference) => {
                let kind = reference.get("kind").and_then(Value::as_str).unwrap_or("");
                let object_name = reference.get("name").and_then(Value::as_str).unwrap_or("");
                let (resource, ns) = match kind {
                    "Pod" => ("pods", Some(namespace.as_str())),
                    "Secret" => ("secrets", Some(namespace.as_str())),
                    "Node" => ("nodes", None),
                    other => {
                        return Err(invalid("spec.boundObjectRef.kind", format!("Unsupported value: {other:?}: supported values: \"Pod\", \"Secret\", \"Node\"")))
                    }
                };
                let found = match resources::find("", "v1", resource) {
                    Some(r) => self
                        .state
                        .store
                        .get(&r.key(ns, object_name))
                        .await
                        .map_err(|e| storage_error(r, object_name, e))?
                        .map(|kv| decode(&kv))
                        .transpose()?,
                    None => None,
                };
                let Some(found) = found else {
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        format!("{resource} {object_name:?} not found"),
                    ));
                };
                let uid = found["metadata"]["uid"].as_str().unwrap_or("").to_owned();
                if let Some(node) = requesting_node.as_deref() {
                    // A node asks only for its own pods' tokens (as NodeRestriction rules).
                    if kind != "Pod" || found["spec"]["nodeName"].as_str() != Some(node) {
                        return Err(node_refused());
                    }
                }
                if kind == "Pod" {
                    let runs_as = found["spec"]["serviceAccountName"].as_str().unwrap_or("default");
                    if runs_as != name {
                        return Err(ApiError::bad_request(format!(
                            "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name"
                        )));
                    }
                }
                if let Some(wanted) =
                    reference.get("uid").and_then(Value::as_str).filter(|u| !u.is_empty())
                {
                    if wanted != uid {
                        return Err(ApiError::conflict(self.resource(), &name));
                    }
                }
                Some((kind.to_owned(), object_name.to_owned(), uid))
            }
        };
        // A server that caps lifetimes issues the shorter one and says so in the answer's
        // spec and expirationTimestamp (which is what a kubelet renews by).
        let seconds = self.state.max_token_seconds.map_or(seconds, |max| seconds.min(max));
        let claims = crate::tokens::Claims {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: account["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
            bound,
        };
        let now = objects::unix_now();
        let token = self
            .state
            .signer
            .issue(&claims, &audiences, now, seconds)
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
        let mut spec = request["spec"].clone();
        if !spec.is_object() {
            spec = json!({});
        }
        spec["expirationSeconds"] = json!(seconds);
        if audiences.is_empty() {
            spec["audiences"] = json!([crate::tokens::ISSUER]);
        }
        Ok((
            201,
            json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
                "spec": spec,
                "status": {"token": token, "expirationTimestamp": objects::format_time(now + seconds)}}),
        ))
    }
}

impl State {
    /// The user of a service-account token this server signed for one of `audiences`,
    /// unexpired, whose account and bound object still exist (with the uids it names),
    /// with the audiences it serves among them.
    pub(super) async fn service_account_user_for(
        &self,
        token: &str,
        audiences: &[&str],
    ) -> Option<(crate::rbac::User, Vec<String>)> {
        let (claims, shared) = self.signer.verify_for(token, objects::unix_now(), audiences)?;
        if !self.exists("serviceaccounts", Some(&claims.namespace), &claims.name, &claims.uid).await
        {
            return None;
        }
        if let Some((kind, name, uid)) = &claims.bound {
            let (resource, namespace) = match kind.as_str() {
                "Pod" => ("pods", Some(claims.namespace.as_str())),
                "Secret" => ("secrets", Some(claims.namespace.as_str())),
                _ => ("nodes", None),
            };
            if !self.exists(resource, namespace, name, uid).await {
                return None;
            }
        }
        Some((crate::tokens::user(&claims), shared))
    }

    /// Whether a core/v1 object exists with this uid.
    pub(super) async fn exists(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        uid: &str,
    ) -> bool {
        let Some(key) = resources::find("", "v1", resource).map(|r| r.key(namespace, name)) else {
            return false;
        };
        match self.store.get(&key).await {
            Ok(Some(kv)) => decode(&kv).is_ok_and(|o| o["metadata"]["uid"] == uid),
            _ => false,
        }
    }

    /// The user a bootstrap token (`ID.SECRET`, Kubernetes' format) names: the Secret
    /// `kube-system/bootstrap-token-ID` of type `bootstrap.kubernetes.io/token` holds the
    /// secret, allows authentication and has not expired. The user is
    /// `system:bootstrap:ID` in `system:bootstrappers` and the token's extra groups.
    pub(super) async fn bootstrap_token_user(&self, token: &str) -> Option<crate::rbac::User> {
        let (id, secret) = token.split_once('.')?;
        let well_formed = |part: &str, length: usize| {
            part.len() == length
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if !well_formed(id, 6) || !well_formed(secret, 16) {
            return None;
        }
        let key = resources::find("", "v1", "secrets")?
            .key(Some("kube-system"), &format!("bootstrap-token-{id}"));
        let object = decode(&self.store.get(&key).await.ok()??).ok()?;
        if object["type"] != "bootstrap.kubernetes.io/token"
            || object["metadata"].get("deletionTimestamp").is_some()
        {
            return None;
        }
        let field = |name: &str| -> String {
            use base64::Engine as _;
            object["data"][name]
                .as_str()
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default()
        };
        // Compared in constant time: the secret is a password.
        let known = field("token-secret");
        let same = known.len() == secret.len()
            && known.bytes().zip(secret.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if field("token-id") != id || !same || field("usage-bootstrap-authentication") != "true" {
            return None;
        }
        let expiration = field("expiration");
        if !expiration.is_empty() {
            let expires = berth_api::meta::parse_time(&expiration)?;
            if expires <= objects::unix_now() {
                return None;
            }
        }
        let mut groups = vec!["system:bootstrappers".to_owned()];
        groups.extend(
            field("auth-extra-groups")
                .split(',')
                .map(str::trim)
                .filter(|g| g.starts_with("system:bootstrappers:"))
                .map(str::to_owned),
        );
        groups.push("system:authenticated".to_owned());
        Some(crate::rbac::User { name: format!("system:bootstrap:{id}"), groups })
    }
}

impl Api {
    /// ServiceAccount admission for a pod being created, as Kubernetes' plugin does it:
    /// the pod runs as `default` unless it names an account; unless the pod or its account
    /// says `automountServiceAccountToken: false` (or a container already mounts something
    /// at the path), a projected volume `kube-api-access-XXXXX` (a bound token for an hour,
    /// the cluster CA from `kube-root-ca.crt`, the namespace) is mounted read-only in every
    /// container and init container at `/var/run/secrets/kubernetes.io/serviceaccount`.
    pub(super) async fn admit_service_account(&self, pod: &mut Value) -> Result<(), ApiError> {
        const PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
        let namespace = self.target.namespace.clone().unwrap_or_else(|| "default".into());
        let named =
            |field: &str| pod["spec"][field].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let account = named("serviceAccountName")
            .or_else(|| named("serviceAccount"))
            .unwrap_or_else(|| "default".into());
        pod["spec"]["serviceAccountName"] = json!(account);
        pod["spec"]["serviceAccount"] = json!(account);
        let stored = match resources::find("", "v1", "serviceaccounts") {
            Some(r) => match self.state.store.get(&r.key(Some(&namespace), &account)).await {
                Ok(Some(kv)) => decode(&kv).ok(),
                _ => None,
            },
            None => None,
        };
        let automount = pod["spec"]["automountServiceAccountToken"]
            .as_bool()
            .or_else(|| stored.as_ref().and_then(|a| a["automountServiceAccountToken"].as_bool()))
            .unwrap_or(true);
        let containers = ["containers", "initContainers"];
        let mounted = containers.iter().any(|field| {
            pod["spec"][*field].as_array().into_iter().flatten().any(|c| {
                c["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPath"] == PATH)
            })
        });
        if !automount || mounted {
            return Ok(());
        }
        let suffix = berth_stdx::random::hex(3)
            .map_err(|e| ApiError::new(500, "InternalError", format!("random bytes: {e}")))?;
        let volume_name = format!("kube-api-access-{}", &suffix[..5]);
        let volume = json!({
            "name": volume_name,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        });
        match pod["spec"]["volumes"].as_array_mut() {
            Some(volumes) => volumes.push(volume),
            None => pod["spec"]["volumes"] = json!([volume]),
        }
        let mount = json!({"name": volume_name, "readOnly": true, "mountPath": PATH});
        for field in containers {
            for container in pod["spec"][field].as_array_mut().into_iter().flatten() {
                match container["volumeMounts"].as_array_mut() {
                    Some(mounts) => mounts.push(mount.clone()),
                    None => container["volumeMounts"] = json!([mount.clone()]),
                }
            }
        }
        Ok(())
    }
}
