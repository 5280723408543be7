//! Cascading deletion by `propagationPolicy` over `ownerReferences`, done in the request
//! until a garbage-collector controller exists.

use super::*;

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
            None if options["orphanDependents"] == true || self.resource().kind == "Job" => {
                Ok("Orphan")
            }
            None => Ok("Background"),
            Some("Foreground") => Ok("Foreground"),
            Some("Orphan") => Ok("Orphan"),
            Some(other) => Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            ))),
        }
    }
}

impl State {
    /// What deleting `owner` does to the objects whose `ownerReferences` name it, until
    /// the garbage-collector controller exists: with Orphan their references to it are
    /// removed; otherwise they are deleted first (and theirs, depth first), so that a
    /// cascading delete leaves nothing behind when it returns.
    pub(super) async fn cascade(
        &self,
        owner: &Value,
        namespace: Option<&str>,
        policy: &str,
    ) -> Result<(), ApiError> {
        let Some(uid) = owner["metadata"]["uid"].as_str().map(str::to_owned) else {
            return Ok(());
        };
        let index = self.owner_index(namespace).await?;
        // Depth-first: (uid, depth) of owners whose dependents are still to be found.
        let mut pending = vec![(uid.clone(), 0usize)];
        let mut doomed: Vec<(String, usize)> = Vec::new();
        let mut doomed_uids = std::collections::BTreeSet::from([uid]);
        while let Some((owner_uid, depth)) = pending.pop() {
            if depth > 16 {
                continue;
            }
            for kv in index.get(&owner_uid).cloned().unwrap_or_default() {
                let mut object = decode(&kv)?;
                // A dependent that another living owner still holds only loses this one.
                let held_elsewhere = self.held_elsewhere(&object, &doomed_uids).await;
                if policy == "Orphan" || held_elsewhere {
                    if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"] != owner_uid.as_str());
                    }
                    if object["metadata"]["ownerReferences"].as_array().is_some_and(Vec::is_empty) {
                        if let Some(meta) = object["metadata"].as_object_mut() {
                            meta.remove("ownerReferences");
                        }
                    }
                    // A write that loses a race is left to the next delete: it only names
                    // an owner that is gone.
                    let _ = self.store.update(&kv.key, encode(&object), kv.mod_revision).await;
                    continue;
                }
                if let Some(uid) = object["metadata"]["uid"].as_str() {
                    pending.push((uid.to_owned(), depth + 1));
                    doomed_uids.insert(uid.to_owned());
                }
                doomed.push((kv.key.clone(), depth));
            }
        }
        // Deepest first: pods before their ReplicaSet before its Deployment.
        doomed.sort_by_key(|d| std::cmp::Reverse(d.1));
        for (key, _) in doomed {
            let current = match self.store.get(&key).await {
                Ok(Some(kv)) => kv,
                _ => continue,
            };
            let mut object = decode(&current)?;
            let finalized =
                object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
            if finalized {
                if object["metadata"].get("deletionTimestamp").is_none() {
                    object["metadata"]["deletionTimestamp"] = json!(objects::now());
                    let _ = self.store.update(&key, encode(&object), current.mod_revision).await;
                }
                continue;
            }
            let _ = self.store.delete(&key, Some(current.mod_revision)).await;
        }
        Ok(())
    }

    /// Whether one of `object`'s owners outside `doomed` still exists (same kind, name and
    /// uid).
    async fn held_elsewhere(
        &self,
        object: &Value,
        doomed: &std::collections::BTreeSet<String>,
    ) -> bool {
        let namespace = object["metadata"]["namespace"].as_str();
        for reference in object["metadata"]["ownerReferences"].as_array().into_iter().flatten() {
            let uid = reference["uid"].as_str().unwrap_or("");
            if uid.is_empty() || doomed.contains(uid) {
                continue;
            }
            let (Some(api_version), Some(kind), Some(name)) = (
                reference["apiVersion"].as_str(),
                reference["kind"].as_str(),
                reference["name"].as_str(),
            ) else {
                continue;
            };
            let Some(resource) = resources::by_kind(api_version, kind) else { continue };
            let key = resource.key(if resource.namespaced { namespace } else { None }, name);
            if let Ok(Some(kv)) = self.store.get(&key).await {
                if decode(&kv).is_ok_and(|o| o["metadata"]["uid"] == uid) {
                    return true;
                }
            }
        }
        false
    }

    /// Every stored object that has owners, by the uids of its owners: in `namespace` (an
    /// owner's dependents share its namespace) or, for cluster-scoped owners, anywhere.
    /// Read once per cascade, however deep it goes.
    pub(super) async fn owner_index(
        &self,
        namespace: Option<&str>,
    ) -> Result<std::collections::HashMap<String, Vec<KeyValue>>, ApiError> {
        let mut prefixes: Vec<String> = RESOURCES
            .iter()
            .filter(|r| {
                !matches!(r.kind, "SelfSubjectAccessReview" | "SelfSubjectReview" | "Binding")
            })
            .filter(|r| namespace.is_none() || r.namespaced)
            .map(|r| r.prefix(namespace))
            .collect();
        prefixes.sort();
        prefixes.dedup();
        let mut index: std::collections::HashMap<String, Vec<KeyValue>> =
            std::collections::HashMap::new();
        for prefix in prefixes {
            let page = self
                .store
                .list(&prefix, None, 0, 0)
                .await
                .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
            for kv in page.items {
                // Cheap test on the bytes before parsing.
                const MARK: &[u8] = b"\"ownerReferences\"";
                if !kv.value.windows(MARK.len()).any(|w| w == MARK) {
                    continue;
                }
                let object = decode(&kv)?;
                for reference in
                    object["metadata"]["ownerReferences"].as_array().into_iter().flatten()
                {
                    if let Some(uid) = reference["uid"].as_str() {
                        index.entry(uid.to_owned()).or_default().push(kv.clone());
                    }
                }
            }
        }
        Ok(index)
    }
}
