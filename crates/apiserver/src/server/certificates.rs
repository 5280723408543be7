//! CertificateSigningRequests in the running server (the rules are `crate::csr`'s): a
//! request is checked when created and records who asked (`spec.username`, `groups`,
//! `uid`); `approval` (`kubectl certificate approve|deny`) sets its conditions; a mirror
//! of the requests signs every approved one a built-in signer serves, level-triggered (a
//! server killed between approval and signing signs at its next start).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::mirror::Mirror;
use super::*;

const PREFIX: &str = "/registry/certificates.k8s.io/certificatesigningrequests/";

pub(super) struct Signer {
    _mirror: Arc<Mirror>,
}

impl Signer {
    pub(super) async fn start(
        store: Arc<dyn Store>,
        tls_dir: PathBuf,
        rbac: Arc<super::authz::RbacCache>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Signer>, Error> {
        let signing = Arc::new(tokio::sync::Mutex::new(()));
        // Undecided requests already looked at, by key, with the version looked at: each
        // is parsed and checked once per version, not on every change of any request.
        let seen: Arc<std::sync::Mutex<BTreeMap<String, String>>> = Arc::default();
        let (writer, spawner) = (store.clone(), tasks.clone());
        let on_change = Box::new(move |objects: &BTreeMap<String, Value>| {
            let mut looked = seen.lock().unwrap_or_else(|p| p.into_inner());
            looked.retain(|key, _| objects.contains_key(key));
            let undecided: Vec<(String, Value)> = objects
                .iter()
                .filter(|(_, csr)| {
                    !crate::csr::decided(csr)
                        && matches!(
                            csr["spec"]["signerName"].as_str(),
                            Some(
                                "kubernetes.io/kube-apiserver-client-kubelet"
                                    | "kubernetes.io/kubelet-serving"
                            )
                        )
                })
                .filter(|(key, csr)| {
                    let version =
                        csr["metadata"]["resourceVersion"].as_str().unwrap_or("").to_owned();
                    looked.insert((*key).clone(), version.clone()).as_deref()
                        != Some(version.as_str())
                        || version.is_empty()
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            drop(looked);
            if !undecided.is_empty() {
                let (store, rbac, lock) = (writer.clone(), rbac.clone(), signing.clone());
                spawner.spawn(async move {
                    let _one = lock.lock().await;
                    for (key, csr) in undecided {
                        approve_one(&store, &rbac, &key, csr).await;
                    }
                });
            }
            let waiting: Vec<(String, Value)> = objects
                .iter()
                .filter(|(_, csr)| {
                    crate::csr::approved(csr)
                        && csr["status"]["certificate"].as_str().is_none_or(str::is_empty)
                        && crate::csr::SIGNERS
                            .contains(&csr["spec"]["signerName"].as_str().unwrap_or(""))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if waiting.is_empty() {
                return;
            }
            let (store, dir, lock) = (writer.clone(), tls_dir.clone(), signing.clone());
            spawner.spawn(async move {
                let _one = lock.lock().await;
                for (key, csr) in waiting {
                    sign_one(&store, &dir, &key, csr).await;
                }
            });
        });
        let mirror = Mirror::start(
            store,
            PREFIX,
            "certificate signing requests",
            on_change,
            tasks,
            shutdown,
        )
        .await?;
        Ok(Arc::new(Signer { _mirror: mirror }))
    }
}

/// Approves a kubelet's client request when its requester may have it approved so.
async fn approve_one(
    store: &Arc<dyn Store>,
    rbac: &super::authz::RbacCache,
    key: &str,
    csr: Value,
) {
    use base64::Engine as _;
    let pem = csr["spec"]["request"]
        .as_str()
        .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
        .unwrap_or_default();
    let Ok(request) = crate::csr::parse(&pem) else { return };
    if crate::csr::node_serving_self(&csr, &request) {
        return approve(store, key, "selfnodeserver").await;
    }
    let Some(permission) = crate::csr::node_client_permission(&csr, &request) else { return };
    let requester = crate::rbac::User {
        name: csr["spec"]["username"].as_str().unwrap_or("").to_owned(),
        groups: csr["spec"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
    };
    let asked = crate::rbac::Attributes {
        verb: "create".into(),
        group: "certificates.k8s.io".into(),
        resource: "certificatesigningrequests".into(),
        subresource: permission.into(),
        ..Default::default()
    };
    if !rbac.index().allowed(&requester, &asked) {
        return;
    }
    approve(store, key, permission).await;
}

/// Adds the Approved condition to a request still undecided.
async fn approve(store: &Arc<dyn Store>, key: &str, permission: &str) {
    let Ok(Some(kv)) = store.get(key).await else { return };
    let Ok(mut current) = decode(&kv) else { return };
    if crate::csr::decided(&current) {
        return;
    }
    let mut conditions = current["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conditions.push(crate::csr::auto_approved(permission));
    current["status"]["conditions"] = json!(conditions);
    match store.update(key, encode(&current), kv.mod_revision).await {
        Ok(_) => {
            tracing::info!(csr = %objects::name_of(&current), "approved a kubelet client certificate request ({permission})")
        }
        Err(err) => tracing::debug!("approving again later: {err}"),
    }
}

/// Issues (or fails) one approved request and records it in its status.
async fn sign_one(store: &Arc<dyn Store>, dir: &std::path::Path, key: &str, mut csr: Value) {
    use base64::Engine as _;
    let name = objects::name_of(&csr).to_owned();
    let Ok(Some(kv)) = store.get(key).await else { return };
    let Ok(current) = decode(&kv) else { return };
    if current["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty())
        || !crate::csr::approved(&current)
    {
        return;
    }
    csr = current;
    let signer = csr["spec"]["signerName"].as_str().unwrap_or("").to_owned();
    let usages: Vec<String> = csr["spec"]["usages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect();
    let pem = csr["spec"]["request"]
        .as_str()
        .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
        .unwrap_or_default();
    let lifetime =
        csr["spec"]["expirationSeconds"].as_u64().map(|s| s.max(600)).unwrap_or(365 * 86_400);
    let issued = crate::csr::parse(&pem).and_then(|request| {
        if let Some(why) = crate::csr::refusal(&signer, &request, &usages) {
            return Err(why);
        }
        // Kubelets' serving certificates come from a CA of their own (see
        // `tls::load_kubelet_ca`); the others from the cluster CA.
        let (ca_cert, ca_key) = if signer == "kubernetes.io/kubelet-serving" {
            crate::tls::load_kubelet_ca(dir).map(|(c, k, _)| (c, k))
        } else {
            crate::tls::load_ca(dir)
        }
        .map_err(|e| e.to_string())?;
        crate::csr::sign(&request, &usages, Duration::from_secs(lifetime), &ca_cert, &ca_key)
    });
    match issued {
        Ok(certificate) => {
            csr["status"]["certificate"] =
                json!(base64::engine::general_purpose::STANDARD.encode(certificate));
        }
        Err(why) => {
            tracing::info!(csr = %name, "the signer {signer} refuses: {why}");
            let mut conditions =
                csr["status"]["conditions"].as_array().cloned().unwrap_or_default();
            conditions.push(crate::csr::failed("SignerValidationFailure", &why));
            csr["status"]["conditions"] = json!(conditions);
        }
    }
    if let Err(err) = store.update(key, encode(&csr), kv.mod_revision).await {
        tracing::debug!(csr = %name, "signing again later: {err}");
    }
}

impl Api {
    /// Checks a new request and records who asks.
    pub(super) fn prepare_certificate_request(&self, object: &mut Value) -> Result<(), ApiError> {
        use base64::Engine as _;
        let resource = self.resource();
        let name = objects::name_of(object).to_owned();
        let invalid =
            |field: &str, message: &str| ApiError::invalid(resource, &name, field, message);
        if object["spec"]["signerName"].as_str().is_none_or(str::is_empty) {
            return Err(invalid("spec.signerName", "Required value"));
        }
        let pem = object["spec"]["request"]
            .as_str()
            .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
            .ok_or_else(|| {
                invalid("spec.request", "Required value: a PEM certificate request, base64-encoded")
            })?;
        let request = crate::csr::parse(&pem).map_err(|why| {
            invalid("spec.request", &format!("Invalid value: []byte{{...}}: {why}"))
        })?;
        if let Some(seconds) = object["spec"]["expirationSeconds"].as_i64() {
            if seconds < 600 {
                return Err(invalid("spec.expirationSeconds", &format!("Invalid value: {seconds}: may not specify a duration less than 600 seconds (10 minutes)")));
            }
        }
        // What Kubernetes' CertificateSubjectRestriction admission refuses.
        let signer = object["spec"]["signerName"].as_str().unwrap_or("");
        if signer == "kubernetes.io/kube-apiserver-client"
            && request.organizations.iter().any(|o| o == "system:masters")
        {
            return Err(ApiError::about(resource, &name, 403, "Forbidden", format!("certificatesigningrequests.certificates.k8s.io \"{name}\" is forbidden: use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed")));
        }
        object["spec"]["username"] = json!(self.user.name);
        object["spec"]["groups"] = json!(self.user.groups);
        object["status"] = json!({});
        Ok(())
    }

    /// `certificatesigningrequests/NAME/approval`: the conditions of the body replace the
    /// request's (Approved and Denied exclude each other); nothing else changes.
    pub(super) async fn approval(
        &self,
        method: &Method,
        content_type: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let resource = self.resource();
        if *method == Method::GET {
            return self.current().await;
        }
        if !matches!(*method, Method::PUT | Method::PATCH) {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "approval supports get, update and patch",
            ));
        }
        let given = self.parse_body(content_type, body)?;
        for _ in 0..10 {
            let current = self.current().await?;
            // Approving or denying for a signer is itself granted (`approve` on
            // `signers`, by name or `DOMAIN/*`), as Kubernetes' CertificateApproval asks.
            let signer = current["spec"]["signerName"].as_str().unwrap_or("").to_owned();
            let domain = signer.split_once('/').map(|(d, _)| format!("{d}/*")).unwrap_or_default();
            let mut may = false;
            for name in [signer.as_str(), domain.as_str()] {
                let attributes = crate::rbac::Attributes {
                    verb: "approve".into(),
                    group: "certificates.k8s.io".into(),
                    resource: "signers".into(),
                    name: name.to_owned(),
                    ..Default::default()
                };
                may = may || self.state.authorize(&self.user, &attributes).await;
            }
            if !may {
                return Err(ApiError::about(resource, self.name(), 403, "Forbidden", format!("certificatesigningrequests.certificates.k8s.io \"{}\" is forbidden: user not permitted to approve requests with signerName \"{signer}\"", self.name())));
            }
            let revision = revision_of(&current);
            let wanted = if *method == Method::PATCH {
                super::verbs::patched_by(content_type, &current, &given)?
            } else {
                given.clone()
            };
            let conditions = wanted["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let has =
                |kind: &str| conditions.iter().any(|c| c["type"] == kind && c["status"] != "False");
            // A decision once made stays.
            let decided = current["status"]["conditions"].as_array().cloned().unwrap_or_default();
            if let Some(gone) = decided
                .iter()
                .filter(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied")))
                .find(|c| !has(c["type"].as_str().unwrap_or("")))
            {
                return Err(ApiError::invalid(
                    resource,
                    self.name(),
                    "status.conditions",
                    &format!(
                        "Forbidden: updates may not remove a condition of type {}",
                        gone["type"]
                    ),
                ));
            }
            if has("Approved") && has("Denied") {
                return Err(ApiError::invalid(resource, self.name(), "status.conditions", "Invalid value: \"Approved\": Approved and Denied conditions are mutually exclusive"));
            }
            if let Some(odd) = conditions
                .iter()
                .find(|c| !matches!(c["type"].as_str(), Some("Approved" | "Denied" | "Failed")))
            {
                return Err(ApiError::invalid(resource, self.name(), "status.conditions", &format!("Unsupported value: {}: supported values: \"Approved\", \"Denied\", \"Failed\"", odd["type"])));
            }
            let now = objects::now();
            let conditions: Vec<Value> = conditions
                .into_iter()
                .map(|mut c| {
                    for field in ["lastUpdateTime", "lastTransitionTime"] {
                        if c[field].is_null() {
                            c[field] = json!(now);
                        }
                    }
                    if c["status"].is_null() {
                        c["status"] = json!("True");
                    }
                    c
                })
                .collect();
            let mut updated = current.clone();
            updated["status"]["conditions"] = json!(conditions);
            match self.state.store.update(&self.key(), encode(&updated), revision).await {
                Ok(new) => return Ok(with_revision(updated, new)),
                Err(berth_store::Error::Conflict { .. }) => continue,
                Err(err) => return Err(storage_error(resource, self.name(), err)),
            }
        }
        Err(ApiError::conflict(resource, self.name()))
    }
}
