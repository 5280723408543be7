//! The pod subresources: `binding` (and `POST bindings`), `eviction`, and `log`, `exec`,
//! `attach` and `portforward` checked up to the node agent; graceful deletion of pods.

use super::*;

/// kube-apiserver's DefaultTolerationSeconds admission: a pod that tolerates neither a
/// not-ready nor an unreachable node for a time of its own tolerates each for the
/// configured seconds (300 by default), so the node lifecycle controller moves it off a
/// dead node after that long, not at once.
pub(crate) fn add_default_tolerations(pod: &mut Value, (not_ready, unreachable): (i64, i64)) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let mut tolerations =
        spec.get("tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut changed = false;
    for (key, seconds) in [
        ("node.kubernetes.io/not-ready", not_ready),
        ("node.kubernetes.io/unreachable", unreachable),
    ] {
        let covered = tolerations.iter().any(|t| {
            let t_key = t["key"].as_str().unwrap_or("");
            let effect = t["effect"].as_str().unwrap_or("");
            (t_key == key || t_key.is_empty()) && (effect == "NoExecute" || effect.is_empty())
        });
        if !covered {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": seconds}));
            changed = true;
        }
    }
    if changed {
        spec.insert("tolerations".into(), Value::Array(tolerations));
    }
}

impl Api {
    /// Priority admission, as Kubernetes': `priorityClassName` becomes `priority` and
    /// `preemptionPolicy` (the global default class when none is named; 0 without one); a
    /// class that does not exist, or a priority given by hand that disagrees, is refused.
    pub(super) async fn admit_priority(&self, name: &str, pod: &mut Value) -> Result<(), ApiError> {
        let classes = resources::find("scheduling.k8s.io", "v1", "priorityclasses")
            .ok_or_else(|| ApiError::new(500, "InternalError", "no priorityclasses"))?;
        let forbidden = |message: String| {
            ApiError::new(403, "Forbidden", format!("pods \"{name}\" is forbidden: {message}"))
        };
        let wanted = pod["spec"]["priorityClassName"].as_str().unwrap_or("").to_owned();
        let class = if wanted.is_empty() {
            let page = self
                .state
                .store
                .list(&classes.prefix(None), None, 0, 0)
                .await
                .map_err(|e| storage_error(classes, "", e))?;
            let mut default = None;
            for kv in &page.items {
                let class = decode(kv)?;
                if class["globalDefault"] == true {
                    default = Some(class);
                }
            }
            default
        } else {
            match self.state.store.get(&classes.key(None, &wanted)).await {
                Ok(Some(kv)) => Some(decode(&kv)?),
                Ok(None) => {
                    return Err(forbidden(format!("no PriorityClass with name {wanted} was found")))
                }
                Err(err) => return Err(storage_error(classes, &wanted, err)),
            }
        };
        let (class_name, value, policy) = match &class {
            Some(class) => (
                objects::name_of(class).to_owned(),
                class["value"].as_i64().unwrap_or(0),
                class["preemptionPolicy"].as_str().unwrap_or("PreemptLowerPriority").to_owned(),
            ),
            None => (String::new(), 0, "PreemptLowerPriority".to_owned()),
        };
        if let Some(given) = pod["spec"]["priority"].as_i64() {
            if given != value {
                return Err(forbidden(format!(
                    "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
                )));
            }
        }
        if !class_name.is_empty() {
            pod["spec"]["priorityClassName"] = json!(class_name);
        }
        pod["spec"]["priority"] = json!(value);
        pod["spec"]["preemptionPolicy"] = json!(policy);
        Ok(())
    }

    /// Whether the PodDisruptionBudget selecting `pod` lets it go, as Kubernetes' eviction
    /// decides: pods that are pending, finished or already going need no budget; more
    /// than one budget is an error; a budget the disruption controller has not looked at
    /// since its last change, or with no disruption left, answers 429 (clients such as
    /// `kubectl drain` retry); otherwise one disruption is taken from its status (the
    /// pod recorded in `disruptedPods`) before the pod is deleted. An unready pod may go
    /// without taking one when the budget is met anyway (`IfHealthyBudget`) or always
    /// (`AlwaysAllow`).
    async fn admit_eviction(&self, pod: &Value, dry_run: bool) -> Result<(), ApiError> {
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if matches!(phase, "Pending" | "Succeeded" | "Failed")
            || !pod["metadata"]["deletionTimestamp"].is_null()
        {
            return Ok(());
        }
        let Some(budgets) = resources::find("policy", "v1", "poddisruptionbudgets") else {
            return Ok(());
        };
        let namespace = self.target.namespace.clone().unwrap_or_default();
        let pod_name = self.name().to_owned();
        let labels = pod["metadata"]["labels"].as_object().cloned().unwrap_or_default();
        for _ in 0..8 {
            let page = self
                .state
                .store
                .list(&budgets.prefix(Some(&namespace)), None, 0, 0)
                .await
                .map_err(|e| storage_error(budgets, "", e))?;
            let mut matching = Vec::new();
            for kv in &page.items {
                let budget = decode(kv)?;
                let selects = match &budget["spec"]["selector"] {
                    Value::Null => false,
                    selector => berth_api::selector::LabelSelector::from_object(selector)
                        .is_ok_and(|s| s.matches(Some(&labels))),
                };
                if selects {
                    matching.push((kv.mod_revision, budget));
                }
            }
            let (revision, mut budget) = match matching.len() {
                0 => return Ok(()),
                1 => matching.remove(0),
                _ => {
                    return Err(ApiError::new(
                        500,
                        "InternalError",
                        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    ))
                }
            };
            let name = budget["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let status = &budget["status"];
            let too_many = |cause: String| {
                let mut error = ApiError::new(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
                error.details =
                    json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]});
                error
            };
            if status["observedGeneration"].as_i64().unwrap_or(0)
                < budget["metadata"]["generation"].as_i64().unwrap_or(0)
            {
                return Err(too_many(format!(
                    "the disruption budget {name} is still being processed by the server"
                )));
            }
            let healthy = status["currentHealthy"].as_i64().unwrap_or(0);
            let desired = status["desiredHealthy"].as_i64().unwrap_or(0);
            let ready = pod["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            if !ready {
                match budget["spec"]["unhealthyPodEvictionPolicy"].as_str() {
                    Some("AlwaysAllow") => return Ok(()),
                    _ if healthy >= desired && desired > 0 => return Ok(()),
                    _ => {}
                }
            }
            let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
            if allowed < 0 {
                return Err(ApiError::new(403, "Forbidden", "pdb disruptions allowed is negative"));
            }
            if allowed == 0 {
                return Err(too_many(format!(
                    "The disruption budget {name} needs {desired} healthy pods and has {healthy} currently"
                )));
            }
            if dry_run {
                return Ok(());
            }
            budget["status"]["disruptionsAllowed"] = json!(allowed - 1);
            if !budget["status"]["disruptedPods"].is_object() {
                budget["status"]["disruptedPods"] = json!({});
            }
            budget["status"]["disruptedPods"][&pod_name] = json!(berth_api::meta::now());
            match self
                .state
                .store
                .update(&budgets.key(Some(&namespace), &name), encode(&budget), revision)
                .await
            {
                Ok(_) => return Ok(()),
                Err(berth_store::Error::Conflict { .. }) => continue,
                Err(err) => return Err(storage_error(budgets, &name, err)),
            }
        }
        Err(ApiError::conflict(budgets, "poddisruptionbudget"))
    }

    /// The pod subresources: `binding` (what a scheduler posts) and `eviction` are served
    /// here; `log`, `exec`, `attach` and `portforward` are checked here (the pod, its
    /// container, its node) and then belong to the node agent running the pod.
    pub(super) async fn pod_action(
        &self,
        action: &str,
        method: &Method,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let allowed = match action {
            "log" => *method == Method::GET,
            "binding" | "eviction" => *method == Method::POST,
            _ => matches!(*method, Method::GET | Method::POST),
        };
        if !allowed {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("the server does not allow this method on pods/{action}"),
            ));
        }
        let pod = self.current().await?;
        let name = self.name().to_owned();
        match action {
            "binding" => return self.bind(pod, body).await,
            "eviction" => {
                let eviction = decode_body(content_type, body).map_err(|err| {
                    ApiError::bad_request(format!(
                        "the Eviction in the request body is malformed: {}",
                        err.message
                    ))
                })?;
                let options = match eviction.get("deleteOptions") {
                    None | Some(Value::Null) => String::new(),
                    Some(options) => options.to_string(),
                };
                // A dry run (in the Eviction's options or the query) checks the budget and
                // deletes nothing.
                let dry_run =
                    eviction["deleteOptions"]["dryRun"].as_array().is_some_and(|d| !d.is_empty())
                        || self.dry_run();
                self.admit_eviction(&pod, dry_run).await?;
                if !dry_run {
                    self.delete("application/json", options.as_bytes()).await?;
                }
                return Ok(json_response(
                    201,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ));
            }
            _ => {}
        }
        // Which container: named, or the only one.
        let names = |field: &str| -> Vec<String> {
            pod["spec"][field]
                .as_array()
                .map(|list| {
                    list.iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect()
                })
                .unwrap_or_default()
        };
        let (containers, init) = (names("containers"), names("initContainers"));
        if action != "portforward" {
            match self.params.get("container").filter(|c| !c.is_empty()) {
                Some(wanted)
                    if !containers.contains(wanted)
                        && !init.contains(wanted)
                        && !names("ephemeralContainers").contains(wanted) =>
                {
                    return Err(ApiError::bad_request(format!(
                        "container {wanted} is not valid for pod {name}"
                    )));
                }
                Some(_) => {}
                None if containers.len() > 1 => {
                    let mut message = format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        containers.join(" ")
                    );
                    if !init.is_empty() {
                        message.push_str(&format!(
                            " or one of the init containers: [{}]",
                            init.join(" ")
                        ));
                    }
                    return Err(ApiError::bad_request(message));
                }
                None => {}
            }
        }
        if action == "exec" && !self.params.contains_key("command") {
            return Err(ApiError::bad_request("you must specify at least 1 command"));
        }
        let phase = pod["status"]["phase"].as_str().unwrap_or("");
        if matches!(action, "exec" | "attach") && matches!(phase, "Succeeded" | "Failed") {
            return Err(ApiError::bad_request(format!(
                "cannot {action} into a container in a completed pod; current phase is {phase}"
            )));
        }
        let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
        if node.is_empty() {
            if action == "log" {
                // Nothing has run yet: no lines, as Kubernetes answers for unscheduled pods.
                let mut response = Response::new(full(Bytes::new()));
                response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                return Ok(response);
            }
            return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
        }
        if action == "log" {
            let container = match self.params.get("container").filter(|c| !c.is_empty()) {
                Some(container) => container.clone(),
                None => containers.first().cloned().unwrap_or_default(),
            };
            let namespace = self.target.namespace.clone().unwrap_or_default();
            let path = kubelet::log_path(&namespace, &name, &container, &self.params);
            return self.kubelet_get(node, &path).await;
        }
        if action == "exec" || action == "attach" {
            let container = match self.params.get("container").filter(|c| !c.is_empty()) {
                Some(container) => container.clone(),
                None => containers.first().cloned().unwrap_or_default(),
            };
            let namespace = self.target.namespace.clone().unwrap_or_default();
            return self.kubelet_upgrade(action, node, &namespace, &name, &container).await;
        }
        // portforward: the pod's sandbox, no container.
        let namespace = self.target.namespace.clone().unwrap_or_default();
        self.kubelet_upgrade("portForward", node, &namespace, &name, "").await
    }

    /// `POST .../bindings`: the pod the Binding names, bound (as `pods/binding` does).
    pub(super) async fn create_binding(
        &self,
        method: &Method,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        if *method != Method::POST {
            return Err(ApiError::new(405, "MethodNotAllowed", "only create is allowed"));
        }
        let binding = decode_body(content_type, body)?;
        let pods = resources::find("", "v1", "pods")
            .ok_or_else(|| ApiError::new(500, "InternalError", "no pods resource"))?;
        let pod_api = Api {
            state: self.state.clone(),
            target: Target {
                resource: pods,
                namespace: self.target.namespace.clone(),
                name: Some(objects::name_of(&binding).to_owned()),
                subresource: Some("binding".into()),
                proxy_path: None,
            },
            params: self.params.clone(),
            accept: self.accept.clone(),
            user: self.user.clone(),
            warnings: Default::default(),
            duplicates: Default::default(),
            upgrade: Default::default(),
        };
        let pod = pod_api.current().await?;
        pod_api.bind(pod, body).await
    }

    /// `pods/binding`: places an unscheduled pod on a node (sets `spec.nodeName`).
    pub(super) async fn bind(&self, pod: Value, body: &[u8]) -> Result<Response<Body>, ApiError> {
        let resource = self.resource();
        let name = self.name().to_owned();
        let binding = decode_body("application/json", body)?;
        let node = binding["target"]["name"].as_str().unwrap_or("");
        if node.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!("Binding.core \"{name}\" is invalid: target.name: Required value"),
            ));
        }
        if binding["target"]["kind"].as_str().is_some_and(|k| !k.is_empty() && k != "Node") {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "Binding.core \"{name}\" is invalid: target.kind: Unsupported value: only Node"
                ),
            ));
        }
        let conflict = |message: String| {
            ApiError::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on pods/binding \"{name}\": {message}"),
            )
        };
        if let Some(current) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(conflict(format!("pod {name} is already assigned to node \"{current}\"")));
        }
        if pod["metadata"].get("deletionTimestamp").is_some() {
            return Err(conflict(format!(
                "pod {name} is being deleted, cannot be assigned to a host"
            )));
        }
        let revision = revision_of(&pod);
        let mut bound = pod;
        bound["spec"]["nodeName"] = json!(node);
        // As Kubernetes records a binding: the PodScheduled condition turns true.
        let condition = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now()});
        if !bound["status"].is_object() {
            bound["status"] = json!({});
        }
        match bound["status"]["conditions"].as_array_mut() {
            Some(conditions) => {
                conditions.retain(|c| c["type"] != "PodScheduled");
                conditions.push(condition);
            }
            None => bound["status"]["conditions"] = json!([condition]),
        }
        if !self.dry_run() {
            self.state
                .store
                .update(&self.key(), encode(&bound), revision)
                .await
                .map_err(|e| storage_error(resource, &name, e))?;
        }
        Ok(json_response(
            201,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    /// The grace period a pod's deletion waits for, when it is graceful: the pod is bound
    /// to a node and still running there, and neither the request nor the pod asks for 0.
    pub(super) fn pod_grace_period(&self, pod: &Value, options: &Value) -> Option<i64> {
        if self.resource().kind != "Pod"
            || pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
            || matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        {
            return None;
        }
        let asked = options["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| self.params.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
        let grace =
            asked.or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30);
        (grace > 0).then_some(grace)
    }

    /// `pods/NAME/ephemeralcontainers` (`kubectl debug`): only `spec.ephemeralContainers`
    /// changes, and only by additions: an ephemeral container, once added, stays as it
    /// is. Their names are unique in the pod; they have an image and none of what an
    /// ephemeral container may not have (ports, probes, lifecycle, resources).
    pub(super) async fn ephemeral_containers(
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
                "ephemeralcontainers supports get, update and patch",
            ));
        }
        let given = self.parse_body(content_type, body)?;
        for _ in 0..10 {
            let current = self.current().await?;
            let revision = revision_of(&current);
            let wanted = if *method == Method::PATCH {
                super::verbs::patched_by(content_type, &current, &given)?
            } else {
                given.clone()
            };
            let name = self.name().to_owned();
            let invalid =
                |field: String, message: &str| ApiError::invalid(resource, &name, &field, message);
            let old: Vec<Value> =
                current["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
            let new: Vec<Value> =
                wanted["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
            for (i, before) in old.iter().enumerate() {
                if new.get(i) != Some(before) {
                    return Err(invalid(
                        format!("spec.ephemeralContainers[{i}]"),
                        "Forbidden: existing ephemeral containers may not be changed or removed",
                    ));
                }
            }
            let mut names: std::collections::BTreeSet<String> = ["containers", "initContainers"]
                .iter()
                .flat_map(|f| current["spec"][*f].as_array().cloned().unwrap_or_default())
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect();
            let targets = names.clone();
            for (i, container) in new.iter().enumerate() {
                let at = format!("spec.ephemeralContainers[{i}]");
                let cname = container["name"].as_str().unwrap_or("");
                if let Some((field, message)) = objects::ephemeral_container_problem(container) {
                    return Err(invalid(format!("{at}.{field}"), &message));
                }
                if !names.insert(cname.to_owned()) {
                    return Err(invalid(
                        format!("{at}.name"),
                        &format!("Duplicate value: {cname:?}"),
                    ));
                }
                if container["image"].as_str().is_none_or(str::is_empty) {
                    return Err(invalid(format!("{at}.image"), "Required value"));
                }
                if let Some(target) = container["targetContainerName"].as_str() {
                    if !target.is_empty() && !targets.contains(target) {
                        return Err(invalid(
                            format!("{at}.targetContainerName"),
                            &format!("Not found: {target:?}"),
                        ));
                    }
                }
                for field in [
                    "ports",
                    "livenessProbe",
                    "readinessProbe",
                    "startupProbe",
                    "lifecycle",
                    "resources",
                ] {
                    if container
                        .get(field)
                        .is_some_and(|v| !v.is_null() && v != &json!({}) && v != &json!([]))
                    {
                        return Err(invalid(
                            format!("{at}.{field}"),
                            "Forbidden: cannot be set for an Ephemeral Container",
                        ));
                    }
                }
            }
            let mut updated = current.clone();
            updated["spec"]["ephemeralContainers"] = json!(new);
            if updated == current {
                return Ok(current);
            }
            match self.state.store.update(&self.key(), encode(&updated), revision).await {
                Ok(rev) => return Ok(with_revision(updated, rev)),
                Err(berth_store::Error::Conflict { .. }) => continue,
                Err(err) => return Err(storage_error(resource, self.name(), err)),
            }
        }
        Err(ApiError::conflict(resource, self.name()))
    }
}
