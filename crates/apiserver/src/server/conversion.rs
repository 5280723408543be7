//! Conversion webhooks of custom resources (`spec.conversion.strategy: Webhook`), called
//! as kube-apiserver calls them: a `ConversionReview` (apiextensions.k8s.io/v1) with the
//! objects and the desired `apiVersion`, POSTed to the definition's `clientConfig` (url or
//! Service, TLS verified against its `caBundle` or the cluster CA). The answer must be a
//! Success with as many objects, each of the desired version and the same kind; of the
//! metadata only labels and annotations may change (the rest is kept from the object
//! sent). Writes convert into the stored version, reads, lists and watches out of it.

use super::*;

/// One direction of conversion for one custom resource.
#[derive(Clone)]
pub(super) struct Converter {
    state: Arc<State>,
    custom: Arc<crate::crd::Version>,
    webhook: Value,
    /// The `apiVersion` objects are converted to.
    desired: String,
}

impl Converter {
    /// Converts a value: an object of the kind, or the items of a list (one review for
    /// all); objects already in the desired version, and anything else, pass as they are.
    pub(super) async fn convert(&self, mut value: Value) -> Result<Value, ApiError> {
        let custom = &self.custom;
        let needs = |o: &Value| {
            o["kind"] == custom.kind.as_str() && o["apiVersion"] != self.desired.as_str()
        };
        if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
            let at: Vec<usize> = (0..items.len()).filter(|i| needs(&items[*i])).collect();
            if at.is_empty() {
                return Ok(value);
            }
            let objects: Vec<Value> = at.iter().map(|i| items[*i].clone()).collect();
            let converted = self.call(objects).await?;
            for (i, object) in at.into_iter().zip(converted) {
                items[i] = object;
            }
            return Ok(value);
        }
        if !needs(&value) {
            return Ok(value);
        }
        Ok(self.call(vec![value]).await?.remove(0))
    }

    /// A watch event's object converted.
    pub(super) async fn event(&self, mut event: Value) -> Result<Value, ApiError> {
        let object = std::mem::take(&mut event["object"]);
        event["object"] = self.convert(object).await?;
        Ok(event)
    }

    async fn call(&self, objects: Vec<Value>) -> Result<Vec<Value>, ApiError> {
        let custom = &self.custom;
        let failed = |why: String| {
            ApiError::new(
                500,
                "InternalError",
                format!(
                    "conversion webhook for {}/{}, Kind={} failed: {why}",
                    custom.group, custom.storage, custom.kind
                ),
            )
        };
        let uid = objects::uuid().unwrap_or_else(|_| format!("{}", objects::unix_now()));
        let review = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "ConversionReview",
            "request": {"uid": uid, "desiredAPIVersion": self.desired, "objects": objects},
        });
        // Kubernetes gives a conversion webhook 30 seconds.
        let mut webhook = self.webhook.clone();
        webhook["timeoutSeconds"] = json!(30);
        let answer = self.state.call_webhook(&webhook, &review).await.map_err(failed)?;
        let response = &answer["response"];
        if response["uid"] != uid.as_str() {
            return Err(failed(format!(
                "the answer's uid {} is not the review's",
                response["uid"]
            )));
        }
        if response["result"]["status"] != "Success" {
            let message = response["result"]["message"].as_str().unwrap_or("no message");
            return Err(failed(format!("the webhook answered a failure: {message}")));
        }
        let converted = response["convertedObjects"].as_array().cloned().unwrap_or_default();
        if converted.len() != objects.len() {
            return Err(failed(format!(
                "expected {} converted objects, got {}",
                objects.len(),
                converted.len()
            )));
        }
        let mut out = Vec::with_capacity(converted.len());
        for (original, mut object) in objects.into_iter().zip(converted) {
            if object["apiVersion"] != self.desired.as_str() {
                return Err(failed(format!(
                    "a converted object has apiVersion {}, not {}",
                    object["apiVersion"], self.desired
                )));
            }
            if object["kind"] != original["kind"] {
                return Err(failed(format!(
                    "a converted object has kind {}, not {}",
                    object["kind"], original["kind"]
                )));
            }
            // Only labels and annotations may change in metadata.
            let mut metadata = original["metadata"].clone();
            for field in ["labels", "annotations"] {
                match object["metadata"].get(field) {
                    Some(value) if !value.is_null() => metadata[field] = value.clone(),
                    _ => {
                        if let Some(m) = metadata.as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            object["metadata"] = metadata;
            out.push(object);
        }
        Ok(out)
    }
}

impl Api {
    /// The converter into the stored version (`to_storage`) or out of it, when this
    /// request's custom resource converts by webhook and its version is not the stored one.
    pub(super) fn converter(&self, to_storage: bool) -> Option<Converter> {
        let custom = crate::crd::lookup(self.resource())?;
        let webhook = custom.conversion_webhook.clone()?;
        if custom.version == custom.storage {
            return None;
        }
        let version = if to_storage { &custom.storage } else { &custom.version };
        let desired = format!("{}/{version}", custom.group);
        Some(Converter { state: self.state.clone(), custom, webhook, desired })
    }

    /// A request's object, in the stored version (through the conversion webhook when
    /// there is one).
    pub(super) async fn to_stored(&self, object: Value) -> Result<Value, ApiError> {
        let object = match self.converter(true) {
            Some(converter) => converter.convert(object).await?,
            None => object,
        };
        Ok(self.inward(object))
    }

    /// A stored object or list, in the request's version (through the conversion webhook
    /// when there is one).
    pub(super) async fn to_served(&self, value: Value) -> Result<Value, ApiError> {
        let value = match self.converter(false) {
            Some(converter) => converter.convert(value).await?,
            None => value,
        };
        Ok(self.outward(value))
    }
}
