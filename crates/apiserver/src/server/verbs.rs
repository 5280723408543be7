//! The verbs over `berth-store`: get, list (tables, selectors, pages), watch (from a
//! revision, bookmarks, ending when the server stops), create, update, patch (JSON,
//! merge, strategic, server-side apply), the `scale` subresource, delete and
//! deletecollection. `resourceVersion` is the store's revision of the object.

use super::route::Target;
use super::*;

/// The garbage collector's finalizers, set at deletion by `propagationPolicy`.
pub(super) const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
pub(super) const ORPHAN_FINALIZER: &str = "orphan";

pub(super) struct Api {
    pub(super) state: Arc<State>,
    pub(super) target: Target,
    pub(super) params: HashMap<String, String>,
    pub(super) accept: String,
    /// Who asks (admission webhooks are told).
    pub(super) user: crate::rbac::User,
    /// `Warning` headers for the response (unknown fields under `fieldValidation=Warn`).
    pub(super) warnings: std::sync::Mutex<Vec<String>>,
    /// Keys the request body repeated, by path.
    pub(super) duplicates: std::sync::Mutex<Vec<String>>,
    /// The connection's upgrade, for `exec` (taken by the one who answers 101).
    pub(super) upgrade: std::sync::Mutex<Option<super::kubelet::Upgrade>>,
}

impl Api {
    pub(super) fn flag(&self, name: &str) -> bool {
        self.params.get(name).and_then(|v| parse_bool(v)).unwrap_or(false)
    }

    pub(super) fn resource(&self) -> &'static Resource {
        self.target.resource
    }

    pub(super) fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or("")
    }

    pub(super) fn key(&self) -> String {
        self.resource().key(self.target.namespace.as_deref(), self.name())
    }

    /// `fieldValidation`: fields the kind's schema does not know, and keys the body
    /// repeats, fail the request (`Strict`), or are dropped (the last of a repeated key
    /// kept) with a warning (`Warn`, the default) or silently (`Ignore`).
    pub(super) fn check_fields(&self, object: &mut Value) -> Result<(), ApiError> {
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
        // A custom resource's schema prunes what it does not declare.
        let custom = crate::crd::lookup(resource);
        let unknown_fields = |object: &mut Value, prune: bool| match &custom {
            Some(custom) if prune => crate::crd::prune(&custom.schema, object),
            Some(custom) => crate::crd::prune(&custom.schema, &mut object.clone()),
            None => crate::schema::unknown_fields(gvk, object, prune),
        };
        match mode {
            "Strict" => {
                let unknown = unknown_fields(object, false);
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
                let unknown = unknown_fields(object, true);
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
    pub(super) fn stored(&self) -> &'static Resource {
        let r = self.resource();
        if let Some((group, version)) = crate::convert::stored_elsewhere(r.group, r.kind) {
            if let Some(stored) = resources::find(group, version, r.name) {
                return stored;
            }
        }
        crate::convert::storage_version(r.group, r.version, r.kind)
            .and_then(|version| resources::find(r.group, version, r.name))
            .unwrap_or(r)
    }

    /// A request's object, in the stored version.
    pub(super) fn inward(&self, object: Value) -> Value {
        let r = self.resource();
        crate::convert::to_storage(r.group, r.version, r.kind, object)
    }

    /// A stored object or list, in the request's version.
    pub(super) fn outward(&self, value: Value) -> Value {
        let r = self.resource();
        crate::convert::from_storage(r.group, r.version, r.kind, value)
    }

    /// `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`, as
    /// client-go's metadata client and kube-rs's `list_metadata` ask (Table wins when a
    /// client names both).
    pub(super) fn wants_metadata_only(&self) -> bool {
        self.accept.contains("as=PartialObjectMetadata") && !self.accept.contains("as=Table")
    }

    pub(super) fn dry_run(&self) -> bool {
        self.params.get("dryRun").is_some_and(|v| v == "All")
    }

    pub(super) fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels = LabelSelector::parse(
            self.params.get("labelSelector").map(String::as_str).unwrap_or(""),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut fields = FieldSelector::parse(
            self.params.get("fieldSelector").map(String::as_str).unwrap_or(""),
            self.resource().field_selectors,
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        // Selectors name the request's fields; stored objects may use older names.
        let r = self.resource();
        if crate::convert::stored_elsewhere(r.group, r.kind).is_some() {
            for (field, _, _) in fields.terms.iter_mut() {
                if let Some(rest) = field.strip_prefix("regarding.") {
                    *field = format!("involvedObject.{rest}");
                }
            }
        }
        Ok((labels, fields))
    }

    pub(super) async fn current(&self) -> Result<Value, ApiError> {
        match self.state.store.get(&self.key()).await {
            // An object just written is usually decoded already, for the watches that
            // met its write: a copy of that is cheaper than parsing the bytes again.
            Ok(Some(kv)) => match self.state.watch_memo.decoded(kv.mod_revision) {
                Some(object) => Ok(Value::clone(&object)),
                None => decode(&kv),
            },
            Ok(None) => Err(ApiError::not_found(self.resource(), self.name())),
            Err(err) => Err(storage_error(self.resource(), self.name(), err)),
        }
    }

    pub(super) async fn get(&self) -> Result<(u16, Value), ApiError> {
        let mut object = self.current().await?;
        if self.resource().kind == "ResourceQuota" {
            object = self.with_quota_status(object).await?;
        }
        // Tables and metadata are made of the object in the request's version.
        if let Some(converter) = self.converter(false) {
            object = converter.convert(object).await?;
        }
        if self.accept.contains("as=Table") {
            let revision = revision_of(&object);
            let include = self.params.get("includeObject").is_some_and(|v| v == "Object");
            return Ok((
                200,
                objects::table(self.resource(), std::slice::from_ref(&object), revision, include),
            ));
        }
        if self.wants_metadata_only() {
            return Ok((200, objects::partial_metadata(&object)));
        }
        Ok((200, object))
    }

    pub(super) async fn list(&self) -> Result<(u16, Value), ApiError> {
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
        let items = if resource.kind == "ResourceQuota" {
            let mut shown = Vec::with_capacity(items.len());
            for quota in items {
                shown.push(self.with_quota_status(quota).await?);
            }
            shown
        } else {
            items
        };
        let items = match self.converter(false) {
            Some(converter) => {
                let mut converted = converter.convert(json!({ "items": items })).await?;
                match converted["items"].take() {
                    Value::Array(items) => items,
                    _ => Vec::new(),
                }
            }
            None => items,
        };
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
        if self.wants_metadata_only() {
            let items: Vec<Value> = items.iter().map(objects::partial_metadata).collect();
            return Ok((
                200,
                json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "items": items}),
            ));
        }
        Ok((
            200,
            json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.group_version(), "metadata": metadata, "items": items}),
        ))
    }

    pub(super) async fn namespace_ready(&self) -> Result<(), ApiError> {
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
    pub(super) fn parse_body(&self, content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
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

impl Api {
    pub(super) async fn create(
        &self,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Value), ApiError> {
        let mut object = self.parse_body(content_type, body)?;
        self.check_fields(&mut object)?;
        let given = self.to_stored(object).await?;
        // A generated name that is taken is generated again, as kube-apiserver does.
        let generated = objects::name_of(&given).is_empty()
            && given["metadata"]["generateName"].as_str().is_some_and(|p| !p.is_empty());
        for attempt in 1..=8 {
            match self.create_once(given.clone()).await {
                Err(err) if generated && err.reason == "AlreadyExists" && attempt < 8 => continue,
                result => return result,
            }
        }
        Err(ApiError::new(500, "InternalError", "no free generated name after 8 attempts"))
    }

    /// What every create does after `prepare_create`, whichever verb creates (POST or a
    /// server-side apply of a new object): a terminating definition refuses, priority
    /// classes resolve, pods get their service account's token volume and the default
    /// not-ready/unreachable tolerations, limit ranges fill
    /// in, certificate requests record who asks.
    async fn admit_new(&self, name: &str, object: &mut Value) -> Result<(), ApiError> {
        let resource = self.stored();
        self.restrict_node(resource, name, None, object)?;
        if crate::crd::lookup(resource).is_some_and(|c| c.terminating) {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "create not allowed while custom resource definition is terminating",
            ));
        }
        if crate::strategy::of(resource).admits_priority() {
            self.admit_priority(name, object).await?;
        }
        if resource.group.is_empty() && resource.name == "pods" {
            self.admit_service_account(object).await?;
            crate::server::pods::add_default_tolerations(
                object,
                self.state.default_toleration_seconds,
            );
        }
        self.apply_limit_ranges(object)?;
        if resource.kind == "CertificateSigningRequest" {
            self.prepare_certificate_request(object)?;
        }
        self.check_escalation(object).await?;
        Ok(())
    }

    async fn create_once(&self, mut object: Value) -> Result<(u16, Value), ApiError> {
        let resource = self.stored();
        let name =
            objects::prepare_create(resource, &mut object, self.target.namespace.as_deref())?;
        self.admit_new(&name, &mut object).await?;
        let mut object = self.admit("CREATE", Some(object), None).await?.unwrap_or_default();
        objects::validate(resource, &object)?;
        objects::validate_create(resource, &object)?;
        self.record_manager(None, &mut object);
        self.namespace_ready().await?;
        let quotas = self.quotas_tracking();
        let _counted = match quotas.is_empty() {
            true => None,
            false => Some(self.state.quotas.admission.lock().await),
        };
        self.check_quotas(&quotas, &object, None).await?;
        let key = resource.key(self.target.namespace.as_deref(), &name);
        let _allocating = if crate::strategy::of(resource).allocates_addresses() {
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
    /// LoadBalancer services (and the health-check node port of a LoadBalancer with
    /// `externalTrafficPolicy: Local`), TCP and targetPort defaults on ports.
    pub(super) async fn allocate_service_addresses(
        &self,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        let resource = self.resource();
        let name = objects::name_of(object).to_owned();
        if let Some(message) = invalid_service(object) {
            return Err(ApiError::invalid(resource, &name, message.0, &message.1));
        }
        let spec = object.get_mut("spec").and_then(Value::as_object_mut);
        let Some(spec) = spec else { return Ok(()) };
        let kind = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_owned();
        spec.insert("type".into(), json!(kind));
        spec.entry("sessionAffinity").or_insert(json!("None"));
        if kind != "ExternalName" {
            spec.entry("internalTrafficPolicy").or_insert(json!("Cluster"));
        }
        if kind == "NodePort" || kind == "LoadBalancer" {
            spec.entry("externalTrafficPolicy").or_insert(json!("Cluster"));
        }
        if kind == "LoadBalancer" {
            spec.entry("allocateLoadBalancerNodePorts").or_insert(json!(true));
        }
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
        assign_node_ports(spec, &kind, &services)?;
        Ok(())
    }

    /// NodeRestriction, for kubelets (`system:node:NAME`): a node creates only its own
    /// Node and its own Lease in `kube-node-lease`, and does not change its Node's taints
    /// or labels under `node-restriction.kubernetes.io/` (which could draw pods, and so
    /// their Secrets, to it).
    fn restrict_node(
        &self,
        resource: &Resource,
        name: &str,
        current: Option<&Value>,
        object: &Value,
    ) -> Result<(), ApiError> {
        let Some(node) = self.user.name.strip_prefix("system:node:") else { return Ok(()) };
        if !self.user.groups.iter().any(|g| g == "system:nodes") {
            return Ok(());
        }
        let forbidden = |what: String| {
            ApiError::new(403, "Forbidden", format!("node {node:?} is not allowed to {what}"))
        };
        match (resource.group, resource.name) {
            ("", "nodes") => {
                if name != node {
                    return Err(forbidden(format!("modify node {name:?}")));
                }
                let restricted = |v: &Value| -> Vec<(String, Value)> {
                    v["metadata"]["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(k, _)| k.starts_with("node-restriction.kubernetes.io/"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                };
                if let Some(current) = current {
                    if current["spec"]["taints"] != object["spec"]["taints"] {
                        return Err(forbidden("modify taints".into()));
                    }
                    if restricted(current) != restricted(object) {
                        return Err(forbidden(
                            "modify labels: node-restriction.kubernetes.io/".into(),
                        ));
                    }
                } else if !restricted(object).is_empty() {
                    return Err(forbidden("set labels: node-restriction.kubernetes.io/".into()));
                }
            }
            ("coordination.k8s.io", "leases") => {
                let namespace = self.target.namespace.as_deref().unwrap_or_default();
                if namespace != "kube-node-lease" || name != node {
                    return Err(forbidden(format!("modify lease {namespace}/{name}")));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// An updated Service's node ports: kept from `current` for the same port and
    /// protocol, new ones for new ports, none when the type no longer has them.
    async fn reassign_node_ports(
        &self,
        current: &Value,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        let resource = self.resource();
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let kind = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_owned();
        let old_ports = current["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let with_ports = kind == "NodePort" || kind == "LoadBalancer";
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for port in ports.iter_mut() {
                if !with_ports {
                    if let Some(port) = port.as_object_mut() {
                        port.remove("nodePort");
                    }
                    continue;
                }
                if port["nodePort"].is_null() {
                    let protocol = port["protocol"].as_str().unwrap_or("TCP").to_owned();
                    if let Some(old) = old_ports.iter().find(|o| {
                        o["port"] == port["port"]
                            && o["protocol"].as_str().unwrap_or("TCP") == protocol
                    }) {
                        if let Some(node_port) = old["nodePort"].as_i64() {
                            port["nodePort"] = json!(node_port);
                        }
                    }
                }
            }
        }
        let local_balancer = kind == "LoadBalancer"
            && spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local");
        if !local_balancer {
            spec.remove("healthCheckNodePort");
        } else if spec.get("healthCheckNodePort").is_none_or(Value::is_null) {
            if let Some(old) = current["spec"]["healthCheckNodePort"].as_i64() {
                spec.insert("healthCheckNodePort".into(), json!(old));
            }
        }
        if with_ports {
            spec.entry("externalTrafficPolicy").or_insert(json!("Cluster"));
        } else {
            spec.remove("externalTrafficPolicy");
        }
        let all = self
            .state
            .store
            .list(&resource.prefix(None), None, 0, 0)
            .await
            .map_err(|e| storage_error(resource, "", e))?;
        let uid = &current["metadata"]["uid"];
        let others: Vec<Value> = all
            .items
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|s| &s["metadata"]["uid"] != uid)
            .collect();
        assign_node_ports(spec, &kind, &others)
    }

    /// Writes `object` over the current one (which had `revision`), keeping what an update
    /// may not change and bumping `generation` when the spec changes.
    pub(super) async fn replace(
        &self,
        current: &Value,
        mut object: Value,
        revision: i64,
    ) -> Result<(u16, Value), ApiError> {
        let resource = self.stored();
        let strategy = crate::strategy::of(resource);
        let name = self.name().to_owned();
        let status_only = self.target.subresource.as_deref() == Some("status");
        if status_only {
            let mut merged = current.clone();
            merged["status"] = object.get("status").cloned().unwrap_or(Value::Null);
            strategy.prepare_status_update(current, &mut merged);
            object = merged;
        } else if resource.subresources.iter().any(|s| s.name == "status")
            && !strategy.status_in_main_resource()
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
        if generation_changes(resource, current, &object) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
        if !status_only {
            strategy.prepare_update(current, &mut object);
            self.restrict_node(resource, &name, Some(current), &object)?;
        }
        // A Service keeps its node ports, gets new ones when it becomes NodePort or
        // LoadBalancer (or gains ports), and gives them up when it stops being one; held
        // until the write so two updates cannot take the same port.
        let _allocating = if !status_only && strategy.allocates_addresses() {
            let guard = self.state.service_allocation.lock().await;
            self.reassign_node_ports(current, &mut object).await?;
            Some(guard)
        } else {
            None
        };
        let object = self.admit("UPDATE", Some(object), Some(current)).await?.unwrap_or_default();
        if !status_only {
            self.check_escalation(&object).await?;
        }
        if !status_only {
            objects::validate(resource, &object)?;
            objects::validate_update(resource, current, &object)?;
        } else if crate::crd::lookup(resource).is_some() {
            // A custom resource's status is checked against its schema too.
            objects::validate(resource, &object)?;
        }
        // An update that uses more of a quota (a Service turned NodePort, a claim grown)
        // is checked as a create is, for what it adds.
        let quotas = if status_only { Vec::new() } else { self.quotas_tracking() };
        let _counted = match quotas.is_empty() {
            true => None,
            false => Some(self.state.quotas.admission.lock().await),
        };
        self.check_quotas(&quotas, &object, Some(current)).await?;
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
        // A namespace is also held by `spec.finalizers` (its controller's, via finalize).
        let spec_held = strategy.spec_finalizer().is_some()
            && object["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if deleting && !finalizers_left && !spec_held {
            // Its deletion was held back by finalizers: it goes now (its dependents are
            // the garbage collector's).
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

    pub(super) async fn update(
        &self,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Value), ApiError> {
        let mut object = self.parse_body(content_type, body)?;
        self.check_fields(&mut object)?;
        let mut object = self.to_stored(object).await?;
        let current = self.current().await?;
        let current_revision = revision_of(&current);
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

    pub(super) fn field_manager(&self) -> Option<&str> {
        self.params.get("fieldManager").map(String::as_str).filter(|m| !m.is_empty())
    }

    /// With a `fieldManager`, records in `managedFields` what this write changed.
    pub(super) fn record_manager(&self, current: Option<&Value>, object: &mut Value) {
        if let Some(manager) = self.field_manager() {
            let version = self.resource().group_version();
            crate::apply::record_update(current, object, manager, &version);
        }
    }

    /// Server-side apply (`application/apply-patch+yaml`): see `crate::apply`.
    pub(super) async fn server_side_apply(&self, config: &Value) -> Result<(u16, Value), ApiError> {
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
        let unknown = match crate::crd::lookup(resource) {
            Some(custom) => crate::crd::prune(&custom.schema, &mut config.clone()),
            None => crate::schema::unknown_fields(
                (resource.group, resource.version, resource.kind),
                &mut config.clone(),
                false,
            ),
        };
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
            let live = match stored.clone() {
                Some(object) => Some(self.to_served(object).await?),
                None => None,
            };
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
            let merged = self.to_stored(merged).await?;
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
                self.admit_new(&name, &mut object).await?;
                let object = self.admit("CREATE", Some(object), None).await?.unwrap_or_default();
                objects::validate(resource, &object)?;
                objects::validate_create(resource, &object)?;
                self.namespace_ready().await?;
                let quotas = self.quotas_tracking();
                let _counted = match quotas.is_empty() {
                    true => None,
                    false => Some(self.state.quotas.admission.lock().await),
                };
                self.check_quotas(&quotas, &object, None).await?;
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
            let revision = revision_of(&live);
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

    pub(super) async fn patch(
        &self,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Value), ApiError> {
        let patch_doc = self.parse_body(content_type, body)?;
        if content_type.starts_with("application/apply-patch") {
            return self.server_side_apply(&patch_doc).await;
        }
        // Conflicts between reading and writing are retried: a patch applies to the latest.
        for _ in 0..10 {
            let current = self.current().await?;
            let revision = revision_of(&current);
            // The patch applies to the object in the request's version.
            let view = self.to_served(current.clone()).await?;
            let mut patched = patched_by(content_type, &view, &patch_doc)?;
            self.check_fields(&mut patched)?;
            let mut patched = self.to_stored(patched).await?;
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
    pub(super) async fn scale(
        &self,
        method: &Method,
        content_type: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let custom = crate::crd::lookup(self.resource()).and_then(|c| c.scale.clone());
        let view = |object: &Value| {
            if let Some(paths) = &custom {
                return custom_scale(paths, object);
            }
            // A ReplicationController's selector is the label map itself.
            let selector = object["spec"]["selector"]["matchLabels"]
                .as_object()
                .or_else(|| {
                    object["spec"]["selector"]
                        .as_object()
                        .filter(|m| m.values().all(Value::is_string))
                })
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
            let revision = revision_of(&current);
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
            match &custom {
                Some(paths) => {
                    crate::crd::set_path(&mut updated, &paths.spec_replicas, json!(replicas))
                }
                None => updated["spec"]["replicas"] = json!(replicas),
            }
            match self.replace(&current, updated, revision).await {
                Err(err) if err.reason == "Conflict" => continue,
                Err(err) => return Err(err),
                Ok((_, object)) => return Ok(view(&object)),
            }
        }
        Err(ApiError::conflict(self.resource(), self.name()))
    }

    pub(super) async fn delete(
        &self,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Value), ApiError> {
        let resource = self.resource();
        let options = delete_options(content_type, body)?;
        let current = self.current().await?;
        let revision = revision_of(&current);
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
        self.admit("DELETE", None, Some(&current)).await?;
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
        self.delete_one(&self.key(), current, revision, policy).await
    }

    /// Deletes one stored object, as Kubernetes' registry does. `Foreground` and `Orphan`
    /// become the garbage collector's finalizers (kept for when other finalizers go);
    /// finalizers, and a namespace's content (its controller empties it), hold the object
    /// back with a `deletionTimestamp`; anything else goes now, its dependents left to the
    /// garbage collector.
    async fn delete_one(
        &self,
        key: &str,
        current: Value,
        revision: i64,
        policy: &str,
    ) -> Result<(u16, Value), ApiError> {
        let resource = self.resource();
        let strategy = crate::strategy::of(resource);
        let name = objects::name_of(&current).to_owned();
        let held_by_spec = strategy.spec_finalizer().is_some();
        let mut finalizers: Vec<Value> =
            current["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        let collector = match policy {
            "Foreground" => Some(FOREGROUND_FINALIZER),
            "Orphan" => Some(ORPHAN_FINALIZER),
            _ => None,
        };
        if let Some(finalizer) = collector {
            if !finalizers.iter().any(|f| f == finalizer) {
                finalizers.push(json!(finalizer));
            }
        }
        if finalizers.is_empty() && !held_by_spec {
            let gone = self
                .state
                .store
                .delete(key, Some(revision))
                .await
                .map_err(|e| storage_error(resource, &name, e))?;
            if strategy.returns_deleted_object() {
                return Ok((200, with_revision(current, gone.mod_revision)));
            }
            // Most kinds answer a Status of success naming what went.
            let mut details = json!({"name": name, "group": resource.group, "kind": resource.name, "uid": current["metadata"]["uid"]});
            if resource.group.is_empty() {
                if let Some(d) = details.as_object_mut() {
                    d.remove("group");
                }
            }
            return Ok((
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
            ));
        }
        let mut marked = current.clone();
        if marked["metadata"].get("deletionTimestamp").is_none() {
            marked["metadata"]["deletionTimestamp"] = json!(objects::now());
        }
        if !finalizers.is_empty() {
            marked["metadata"]["finalizers"] = json!(finalizers);
        }
        strategy.mark_deleting(&mut marked);
        if marked == current {
            return Ok((200, current));
        }
        let new = self
            .state
            .store
            .update(key, encode(&marked), revision)
            .await
            .map_err(|e| storage_error(resource, &name, e))?;
        Ok((200, with_revision(marked, new)))
    }

    /// `namespaces/{name}/finalize`: replaces `spec.finalizers` (what the namespace
    /// controller does once the namespace is empty); a terminating namespace with no
    /// finalizer left is removed.
    pub(super) async fn finalize(
        &self,
        method: &Method,
        content_type: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        if method != Method::PUT {
            return Err(ApiError::new(405, "MethodNotAllowed", "finalize supports update only"));
        }
        let wanted = self.parse_body(content_type, body)?;
        let resource = self.resource();
        for _ in 0..10 {
            let current = self.current().await?;
            let revision = revision_of(&current);
            let mut updated = current.clone();
            updated["spec"]["finalizers"] = match &wanted["spec"]["finalizers"] {
                Value::Array(list) => json!(list),
                _ => json!([]),
            };
            let empty = |v: &Value| v.as_array().is_none_or(Vec::is_empty);
            let done = updated["metadata"].get("deletionTimestamp").is_some()
                && empty(&updated["spec"]["finalizers"])
                && empty(&updated["metadata"]["finalizers"]);
            let result = if done {
                self.state.store.delete(&self.key(), Some(revision)).await.map(|kv| kv.mod_revision)
            } else {
                self.state.store.update(&self.key(), encode(&updated), revision).await
            };
            match result {
                Ok(new) => return Ok(with_revision(updated, new)),
                Err(berth_store::Error::Conflict { .. }) => continue,
                Err(err) => return Err(storage_error(resource, self.name(), err)),
            }
        }
        Err(ApiError::conflict(resource, self.name()))
    }

    pub(super) async fn delete_collection(
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
            // Each goes as a single delete would (finalizers and policies included).
            match self.delete_one(&kv.key, object.clone(), kv.mod_revision, policy).await {
                Ok(_) => deleted.push(object),
                Err(err) if err.code == 404 || err.code == 409 => {}
                Err(err) => return Err(err),
            }
        }
        Ok((
            200,
            json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.group_version(), "metadata": {}, "items": deleted}),
        ))
    }

    /// A watch: chunked JSON events, one per line. From `resourceVersion` if given (410
    /// when compacted), else the current objects as ADDED first.
    pub(super) async fn watch(&self) -> Response<Body> {
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
        let metadata_only = self.wants_metadata_only();
        let include = self.params.get("includeObject").is_some_and(|v| v == "Object");
        // With a Table asked for, each event carries a one-row table of the object.
        let shape = move |mut event: Value| {
            if event["object"]["kind"] == kind {
                let object = std::mem::take(&mut event["object"]);
                event["object"] =
                    crate::convert::from_storage(resource.group, resource.version, kind, object);
            }
            if metadata_only && event["object"]["kind"] == kind {
                event["object"] = objects::partial_metadata(&event["object"]);
            }
            if as_table {
                let revision = revision_of(&event["object"]);
                event["object"] = objects::table(
                    resource,
                    std::slice::from_ref(&event["object"]),
                    revision,
                    include,
                );
            }
            event
        };
        // A custom resource converted by webhook: each event's object goes through it
        // (a failure ends the watch with an ERROR event saying why).
        let converter = self.converter(false);
        // A watch whose lines depend on nothing but the event and the version served.
        let plain = converter.is_none() && !as_table && !metadata_only;
        // The metadata of the objects only (the garbage collector's watches of every
        // kind): also one line per event for all such watches, made without copying the
        // whole object.
        let plain_metadata = converter.is_none() && !as_table && metadata_only;
        let metadata_form = format!("{api_version};as=PartialObjectMetadata");
        let memo = self.state.watch_memo.clone();
        let metrics = self.state.metrics.clone();
        let shutdown = self.state.shutdown.clone();
        tokio::spawn(async move {
            struct Open(Arc<crate::metrics::Metrics>);
            impl Drop for Open {
                fn drop(&mut self) {
                    self.0.watch_ended();
                }
            }
            metrics.watch_started();
            let _open = Open(metrics);
            // Each event a line, its object in Kubernetes' key order.
            let line = |value: &Value| Bytes::from(crate::wire::to_vec(value));
            let converted = |event: Value| {
                let converter = converter.clone();
                async move {
                    match &converter {
                        Some(converter) => converter.event(event).await,
                        None => Ok(event),
                    }
                }
            };
            for event in initial {
                let event = match converted(event).await {
                    Ok(event) => shape(event),
                    Err(err) => json!({"type": "ERROR", "object": err.status()}),
                };
                let failed = event["type"] == "ERROR";
                if sender.send(Frame::data(line(&event))).await.is_err() || failed {
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
                        // Decoded once for all the watches that meet this event.
                        let object = match memo.object(&event.kv) {
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
                        let encoded = if plain {
                            // The same line for every plain watch of this version.
                            memo.line(last, &api_version, || {
                                line(&shape(json!({"type": kind, "object": Value::clone(&object)})))
                            })
                        } else if plain_metadata {
                            // Of the object in the version served (a conversion may move
                            // fields into annotations).
                            memo.line(last, &metadata_form, || {
                                let served = crate::convert::from_storage(
                                    resource.group,
                                    resource.version,
                                    resource.kind,
                                    Value::clone(&object),
                                );
                                line(&json!({"type": kind, "object": objects::partial_metadata(&served)}))
                            })
                        } else {
                            match converted(json!({"type": kind, "object": Value::clone(&object)})).await {
                                Ok(event) => line(&shape(event)),
                                Err(err) => {
                                    let _ = sender.send(Frame::data(line(&json!({"type": "ERROR", "object": err.status()})))).await;
                                    return;
                                }
                            }
                        };
                        if sender.send(Frame::data(encoded)).await.is_err() {
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
                    // The server is stopping: the stream ends cleanly and the client
                    // resumes elsewhere from its last revision.
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        let mut response = Response::new(body.boxed());
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// `object` with a patch applied, as its content type says (JSON patch, merge patch,
/// strategic merge patch); 415 for any other type.
pub(super) fn patched_by(
    content_type: &str,
    object: &Value,
    doc: &Value,
) -> Result<Value, ApiError> {
    let mut patched = object.clone();
    if content_type.starts_with("application/json-patch+json") {
        patched = patch::json_patch(object, doc).map_err(|e| ApiError::new(422, "Invalid", e))?;
    } else if content_type.starts_with("application/merge-patch+json") {
        patch::merge_patch(&mut patched, doc);
    } else if content_type.starts_with("application/strategic-merge-patch+json") {
        patch::strategic_merge(&mut patched, doc);
    } else {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
        ));
    }
    Ok(patched)
}

/// Whether an update moves `metadata.generation`: a change of the spec, or for a custom
/// resource a change of anything but metadata (and status, when it has its own
/// subresource), as Kubernetes counts it.
fn generation_changes(resource: &Resource, current: &Value, object: &Value) -> bool {
    if !crate::strategy::has_generation(resource) {
        return false;
    }
    let Some(custom) = crate::crd::lookup(resource) else {
        return current.get("spec") != object.get("spec");
    };
    let content = |value: &Value| -> Value {
        let mut value = value.clone();
        if let Some(map) = value.as_object_mut() {
            map.remove("metadata");
            if custom.status {
                map.remove("status");
            }
        }
        value
    };
    content(current) != content(object)
}

/// The `Scale` of a custom object, read where its definition's paths say.
fn custom_scale(paths: &crate::crd::Scale, object: &Value) -> Value {
    let read = |path: &str| crate::crd::json_path(object, path).into_iter().next().cloned();
    let selector = paths
        .label_selector
        .as_deref()
        .and_then(read)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object["metadata"]["name"], "namespace": object["metadata"]["namespace"],
            "uid": object["metadata"]["uid"], "resourceVersion": object["metadata"]["resourceVersion"],
            "creationTimestamp": object["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": read(&paths.spec_replicas).and_then(|v| v.as_i64()).unwrap_or(0)},
        "status": {"replicas": read(&paths.status_replicas).and_then(|v| v.as_i64()).unwrap_or(0), "selector": selector},
    })
}

/// Node ports for a NodePort or LoadBalancer Service's spec (and the health-check node
/// port of a LoadBalancer with `externalTrafficPolicy: Local`): given ones checked
/// against the range and what `others` hold, missing ones chosen free.
fn assign_node_ports(
    spec: &mut serde_json::Map<String, Value>,
    kind: &str,
    others: &[Value],
) -> Result<(), ApiError> {
    if kind != "NodePort" && kind != "LoadBalancer" {
        return Ok(());
    }
    let mut used_ports: std::collections::HashSet<i64> = others
        .iter()
        .flat_map(|s| s["spec"]["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["nodePort"].as_i64())
        .chain(others.iter().filter_map(|s| s["spec"]["healthCheckNodePort"].as_i64()))
        .collect();
    let taken = |given: i64, field: &str| {
        ApiError::new(422, "Invalid", format!("Service is invalid: {field}: Invalid value: {given}: provided port is already allocated or outside 30000-32767"))
    };
    let exhausted = || ApiError::new(500, "InternalError", "no node port left in 30000-32767");
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut() {
            if let Some(given) = port["nodePort"].as_i64() {
                if !(30000..=32767).contains(&given) || !used_ports.insert(given) {
                    return Err(taken(given, "spec.ports.nodePort"));
                }
                continue;
            }
            let free = (30000..=32767).find(|p| !used_ports.contains(p)).ok_or_else(exhausted)?;
            used_ports.insert(free);
            port["nodePort"] = json!(free);
        }
    }
    // A load balancer that sends traffic only to local endpoints asks each node through a
    // health-check port whether it has any.
    if kind == "LoadBalancer"
        && spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
    {
        match spec.get("healthCheckNodePort").and_then(Value::as_i64) {
            Some(given) => {
                if !(30000..=32767).contains(&given) || !used_ports.insert(given) {
                    return Err(taken(given, "spec.healthCheckNodePort"));
                }
            }
            None => {
                let free =
                    (30000..=32767).find(|p| !used_ports.contains(p)).ok_or_else(exhausted)?;
                spec.insert("healthCheckNodePort".into(), json!(free));
            }
        }
    }
    Ok(())
}

pub(super) fn encode_continue(key: &str, revision: i64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!({"start": key, "rv": revision})).unwrap_or_default())
}

pub(super) fn decode_continue(token: &str) -> Result<(Option<String>, i64), ApiError> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("invalid continue token");
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok((value["start"].as_str().map(str::to_owned), value["rv"].as_i64().ok_or_else(bad)?))
}

impl Api {
    /// `propagationPolicy` (body or query) or the older `orphanDependents`; when neither
    /// is given, Background, except for Jobs, which Kubernetes orphans by default.
    pub(super) fn propagation_policy(&self, options: &Value) -> Result<&'static str, ApiError> {
        let given = options["propagationPolicy"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| self.params.get("propagationPolicy").cloned());
        match given.as_deref() {
            Some("Background") => Ok("Background"),
            None if options["orphanDependents"] == false => Ok("Background"),
            None if options["orphanDependents"] == true => Ok("Orphan"),
            None => Ok(crate::strategy::of(self.resource()).default_propagation()),
            Some("Foreground") => Ok("Foreground"),
            Some("Orphan") => Ok("Orphan"),
            Some(other) => Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            ))),
        }
    }
}

/// What Kubernetes' validation refuses in a Service that defaulting cannot fix: ports out of
/// range, and an ExternalName that is not a DNS name. (field, message)
fn invalid_service(object: &Value) -> Option<(&'static str, String)> {
    let spec = &object["spec"];
    for (index, port) in spec["ports"].as_array().into_iter().flatten().enumerate() {
        let number = port["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&number) {
            return Some(("spec.ports.port", format!("Invalid value: {number}: must be between 1 and 65535, inclusive (port {index})")));
        }
        if let Some(target) = port["targetPort"].as_i64() {
            if !(1..=65535).contains(&target) {
                return Some(("spec.ports.targetPort", format!("Invalid value: {target}: must be between 1 and 65535, inclusive (port {index})")));
            }
        }
    }
    if spec["type"] == "ExternalName" {
        let target = spec["externalName"].as_str().unwrap_or("");
        let target = target.strip_suffix('.').unwrap_or(target);
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if target.is_empty() || target.len() > 253 || !target.split('.').all(label_ok) {
            return Some((
                "spec.externalName",
                format!("Invalid value: {:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character", spec["externalName"].as_str().unwrap_or("")),
            ));
        }
    }
    None
}

#[cfg(test)]
mod service_validation_tests {
    use super::*;

    #[test]
    fn ports_and_external_names_are_checked() {
        assert!(invalid_service(&json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}))
            .is_none());
        assert_eq!(
            invalid_service(&json!({"spec": {"ports": [{"port": 70000}]}})).unwrap().0,
            "spec.ports.port"
        );
        assert_eq!(
            invalid_service(&json!({"spec": {"ports": [{"port": 80, "targetPort": 0}]}}))
                .unwrap()
                .0,
            "spec.ports.targetPort"
        );
        assert!(invalid_service(
            &json!({"spec": {"type": "ExternalName", "externalName": "db.example.org."}})
        )
        .is_none());
        assert_eq!(
            invalid_service(
                &json!({"spec": {"type": "ExternalName", "externalName": "Not A Name!"}})
            )
            .unwrap()
            .0,
            "spec.externalName"
        );
    }
}
