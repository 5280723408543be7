//! API errors as Kubernetes reports them: a `Status` object with an HTTP code, a reason
//! (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...), a message in Kubernetes'
//! words and the details clients read (name, group, kind, causes with field paths).

use serde_json::{json, Value};

use crate::kinds::Resource;

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: Value::Null }
    }

    /// An error about one object, with the details clients read (name, group, kind).
    pub fn about(
        resource: &Resource,
        name: &str,
        code: u16,
        reason: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        let mut e = ApiError::new(code, reason, message);
        e.details = json!({"name": name, "group": resource.group, "kind": resource.name});
        if resource.group.is_empty() {
            // Kubernetes leaves an empty group out.
            if let Some(details) = e.details.as_object_mut() {
                details.remove("group");
            }
        }
        e
    }

    pub fn not_found(resource: &Resource, name: &str) -> ApiError {
        let message = format!("{} \"{name}\" not found", resource_name(resource));
        ApiError::about(resource, name, 404, "NotFound", message)
    }

    /// A path that names no resource.
    pub fn no_such_path() -> ApiError {
        ApiError::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn already_exists(resource: &Resource, name: &str) -> ApiError {
        let message = format!("{} \"{name}\" already exists", resource_name(resource));
        ApiError::about(resource, name, 409, "AlreadyExists", message)
    }

    pub fn conflict(resource: &Resource, name: &str) -> ApiError {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            resource_name(resource)
        );
        ApiError::about(resource, name, 409, "Conflict", message)
    }

    pub fn invalid(resource: &Resource, name: &str, field: &str, message: &str) -> ApiError {
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {field}: {message}", kind_of(resource)),
        );
        e.details = json!({"name": name, "group": resource.group, "kind": resource.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}]});
        if resource.group.is_empty() {
            if let Some(details) = e.details.as_object_mut() {
                details.remove("group");
            }
        }
        e
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

/// `pods`, or `deployments.apps` for a named group: how Kubernetes names resources in
/// messages.
pub fn resource_name(resource: &Resource) -> String {
    if resource.group.is_empty() {
        resource.name.to_owned()
    } else {
        format!("{}.{}", resource.name, resource.group)
    }
}

/// `Deployment.apps`: how Kubernetes names kinds in validation messages.
pub fn kind_of(resource: &Resource) -> String {
    if resource.group.is_empty() {
        resource.kind.to_owned()
    } else {
        format!("{}.{}", resource.kind, resource.group)
    }
}
