//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which kubectl 1.32
//! sends for `kubectl create namespace|configmap|secret|deployment|service|serviceaccount|
//! job|cronjob|role|rolebinding|clusterrole|clusterrolebinding|token` and `kubectl autoscale`.
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` envelope (type meta, raw bytes);
//! the raw bytes are the object in Kubernetes' `generated.proto` encoding. This module
//! decodes the wire format and turns the messages of the kinds above into the JSON the
//! rest of the server handles, driven by a table of field numbers per message. Fields the
//! table does not know are refused, so nothing a client sent is silently dropped.

use base64::Engine as _;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protobuf body: {0}")]
pub struct ProtoError(pub String);

/// How a field's value becomes JSON.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    /// bytes → base64, as JSON writes `[]byte`
    Bytes,
    /// bytes holding JSON (`FieldsV1.raw`), which become the field's value's content
    RawJson,
    Int,
    Bool,
    Message(&'static str),
    /// map<string, string>
    StrMap,
    /// map<string, bytes>
    BytesMap,
    /// map<string, Quantity>
    QuantityMap,
    /// `metav1.Time` → RFC 3339
    Time,
    IntOrString,
}

struct Field {
    number: u64,
    name: &'static str,
    kind: Kind,
    repeated: bool,
}

const fn f(number: u64, name: &'static str, kind: Kind) -> Field {
    Field { number, name, kind, repeated: false }
}

const fn r(number: u64, name: &'static str, kind: Kind) -> Field {
    Field { number, name, kind, repeated: true }
}

use Kind::*;

/// Field tables of the messages these kinds use (numbers from Kubernetes' protos).
fn schema(message: &str) -> Option<&'static [Field]> {
    Some(match message {
        "ObjectMeta" => {
            const {
                &[
                    f(1, "name", Str),
                    f(2, "generateName", Str),
                    f(3, "namespace", Str),
                    f(5, "uid", Str),
                    f(6, "resourceVersion", Str),
                    f(7, "generation", Int),
                    f(8, "creationTimestamp", Time),
                    f(11, "labels", StrMap),
                    f(12, "annotations", StrMap),
                    r(13, "ownerReferences", Message("OwnerReference")),
                    r(14, "finalizers", Str),
                    r(17, "managedFields", Message("ManagedFieldsEntry")),
                ]
            }
        }
        "ManagedFieldsEntry" => {
            const {
                &[
                    f(1, "manager", Str),
                    f(2, "operation", Str),
                    f(3, "apiVersion", Str),
                    f(4, "time", Time),
                    f(6, "fieldsType", Str),
                    f(7, "fieldsV1", Message("FieldsV1")),
                    f(8, "subresource", Str),
                ]
            }
        }
        "FieldsV1" => const { &[f(1, "raw", RawJson)] },
        "OwnerReference" => {
            const {
                &[
                    f(1, "kind", Str),
                    f(3, "name", Str),
                    f(4, "uid", Str),
                    f(5, "apiVersion", Str),
                    f(6, "controller", Bool),
                    f(7, "blockOwnerDeletion", Bool),
                ]
            }
        }
        "Namespace" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("NamespaceSpec")),
                    f(3, "status", Message("NamespaceStatus")),
                ]
            }
        }
        "NamespaceSpec" => const { &[r(1, "finalizers", Str)] },
        "NamespaceStatus" => const { &[f(1, "phase", Str)] },
        "ConfigMap" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "data", StrMap),
                    f(3, "binaryData", BytesMap),
                    f(4, "immutable", Bool),
                ]
            }
        }
        "Secret" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "data", BytesMap),
                    f(3, "type", Str),
                    f(4, "stringData", StrMap),
                    f(5, "immutable", Bool),
                ]
            }
        }
        "ServiceAccount" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    r(2, "secrets", Message("ObjectReference")),
                    r(3, "imagePullSecrets", Message("LocalObjectReference")),
                    f(4, "automountServiceAccountToken", Bool),
                ]
            }
        }
        "ObjectReference" => {
            const {
                &[
                    f(1, "kind", Str),
                    f(2, "namespace", Str),
                    f(3, "name", Str),
                    f(4, "uid", Str),
                    f(5, "apiVersion", Str),
                ]
            }
        }
        "LocalObjectReference" => const { &[f(1, "name", Str)] },
        "Deployment" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("DeploymentSpec")),
                    f(3, "status", Message("Empty")),
                ]
            }
        }
        "DeploymentSpec" => {
            const {
                &[
                    f(1, "replicas", Int),
                    f(2, "selector", Message("LabelSelector")),
                    f(3, "template", Message("PodTemplateSpec")),
                    f(4, "strategy", Message("DeploymentStrategy")),
                    f(5, "minReadySeconds", Int),
                    f(6, "revisionHistoryLimit", Int),
                    f(7, "paused", Bool),
                    f(9, "progressDeadlineSeconds", Int),
                ]
            }
        }
        "DeploymentStrategy" => {
            const { &[f(1, "type", Str), f(2, "rollingUpdate", Message("RollingUpdateDeployment"))] }
        }
        "RollingUpdateDeployment" => {
            const { &[f(1, "maxUnavailable", IntOrString), f(2, "maxSurge", IntOrString)] }
        }
        "LabelSelector" => {
            const {
                &[
                    f(1, "matchLabels", StrMap),
                    r(2, "matchExpressions", Message("LabelSelectorRequirement")),
                ]
            }
        }
        "LabelSelectorRequirement" => {
            const { &[f(1, "key", Str), f(2, "operator", Str), r(3, "values", Str)] }
        }
        "PodTemplateSpec" => {
            const { &[f(1, "metadata", Message("ObjectMeta")), f(2, "spec", Message("PodSpec"))] }
        }
        "PodSpec" => {
            const {
                &[
                    r(2, "containers", Message("Container")),
                    f(3, "restartPolicy", Str),
                    f(4, "terminationGracePeriodSeconds", Int),
                    f(5, "activeDeadlineSeconds", Int),
                    f(6, "dnsPolicy", Str),
                    f(7, "nodeSelector", StrMap),
                    f(8, "serviceAccountName", Str),
                    f(9, "serviceAccount", Str),
                    f(10, "nodeName", Str),
                    f(11, "hostNetwork", Bool),
                    f(12, "hostPID", Bool),
                    f(13, "hostIPC", Bool),
                    r(15, "imagePullSecrets", Message("LocalObjectReference")),
                    f(16, "hostname", Str),
                    f(17, "subdomain", Str),
                    f(19, "schedulerName", Str),
                    r(20, "initContainers", Message("Container")),
                    f(21, "automountServiceAccountToken", Bool),
                    r(22, "tolerations", Message("Toleration")),
                    f(24, "priorityClassName", Str),
                    f(25, "priority", Int),
                    f(27, "shareProcessNamespace", Bool),
                    f(29, "runtimeClassName", Str),
                    f(30, "enableServiceLinks", Bool),
                    f(31, "preemptionPolicy", Str),
                    f(35, "setHostnameAsFQDN", Bool),
                    f(37, "hostUsers", Bool),
                ]
            }
        }
        "Toleration" => {
            const {
                &[
                    f(1, "key", Str),
                    f(2, "operator", Str),
                    f(3, "value", Str),
                    f(4, "effect", Str),
                    f(5, "tolerationSeconds", Int),
                ]
            }
        }
        "Job" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("JobSpec")),
                    f(3, "status", Message("Empty")),
                ]
            }
        }
        "JobSpec" => {
            const {
                &[
                    f(1, "parallelism", Int),
                    f(2, "completions", Int),
                    f(3, "activeDeadlineSeconds", Int),
                    f(4, "selector", Message("LabelSelector")),
                    f(5, "manualSelector", Bool),
                    f(6, "template", Message("PodTemplateSpec")),
                    f(7, "backoffLimit", Int),
                    f(8, "ttlSecondsAfterFinished", Int),
                    f(9, "completionMode", Str),
                    f(10, "suspend", Bool),
                    f(12, "backoffLimitPerIndex", Int),
                    f(13, "maxFailedIndexes", Int),
                    f(14, "podReplacementPolicy", Str),
                    f(15, "managedBy", Str),
                ]
            }
        }
        "PodDisruptionBudget" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("PodDisruptionBudgetSpec")),
                    f(3, "status", Message("Empty")),
                ]
            }
        }
        "PodDisruptionBudgetSpec" => {
            const {
                &[
                    f(1, "minAvailable", IntOrString),
                    f(2, "selector", Message("LabelSelector")),
                    f(3, "maxUnavailable", IntOrString),
                    f(4, "unhealthyPodEvictionPolicy", Str),
                ]
            }
        }
        "Eviction" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "deleteOptions", Message("DeleteOptions")),
                ]
            }
        }
        "DeleteOptions" => {
            const {
                &[
                    f(1, "gracePeriodSeconds", Int),
                    f(2, "preconditions", Message("Preconditions")),
                    f(3, "orphanDependents", Bool),
                    f(4, "propagationPolicy", Str),
                    r(5, "dryRun", Str),
                ]
            }
        }
        "Preconditions" => const { &[f(1, "uid", Str), f(2, "resourceVersion", Str)] },
        "JobTemplateSpec" => {
            const { &[f(1, "metadata", Message("ObjectMeta")), f(2, "spec", Message("JobSpec"))] }
        }
        "CronJob" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("CronJobSpec")),
                    f(3, "status", Message("Empty")),
                ]
            }
        }
        "CronJobSpec" => {
            const {
                &[
                    f(1, "schedule", Str),
                    f(2, "startingDeadlineSeconds", Int),
                    f(3, "concurrencyPolicy", Str),
                    f(4, "suspend", Bool),
                    f(5, "jobTemplate", Message("JobTemplateSpec")),
                    f(6, "successfulJobsHistoryLimit", Int),
                    f(7, "failedJobsHistoryLimit", Int),
                    f(8, "timeZone", Str),
                ]
            }
        }
        "Role" => {
            const { &[f(1, "metadata", Message("ObjectMeta")), r(2, "rules", Message("PolicyRule"))] }
        }
        "PriorityClass" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "value", Int),
                    f(3, "globalDefault", Bool),
                    f(4, "description", Str),
                    f(5, "preemptionPolicy", Str),
                ]
            }
        }
        "ClusterRole" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    r(2, "rules", Message("PolicyRule")),
                    f(3, "aggregationRule", Message("AggregationRule")),
                ]
            }
        }
        "AggregationRule" => const { &[r(1, "clusterRoleSelectors", Message("LabelSelector"))] },
        "PolicyRule" => {
            const {
                &[
                    r(1, "verbs", Str),
                    r(2, "apiGroups", Str),
                    r(3, "resources", Str),
                    r(4, "resourceNames", Str),
                    r(5, "nonResourceURLs", Str),
                ]
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    r(2, "subjects", Message("Subject")),
                    f(3, "roleRef", Message("RoleRef")),
                ]
            }
        }
        "RoleRef" => const { &[f(1, "apiGroup", Str), f(2, "kind", Str), f(3, "name", Str)] },
        "Subject" => {
            const {
                &[
                    f(1, "kind", Str),
                    f(2, "apiGroup", Str),
                    f(3, "name", Str),
                    f(4, "namespace", Str),
                ]
            }
        }
        "Container" => {
            const {
                &[
                    f(1, "name", Str),
                    f(2, "image", Str),
                    r(3, "command", Str),
                    r(4, "args", Str),
                    f(5, "workingDir", Str),
                    r(6, "ports", Message("ContainerPort")),
                    r(7, "env", Message("EnvVar")),
                    f(8, "resources", Message("ResourceRequirements")),
                    f(13, "terminationMessagePath", Str),
                    f(14, "imagePullPolicy", Str),
                    f(16, "stdin", Bool),
                    f(17, "stdinOnce", Bool),
                    f(18, "tty", Bool),
                    f(20, "terminationMessagePolicy", Str),
                ]
            }
        }
        "ContainerPort" => {
            const {
                &[
                    f(1, "name", Str),
                    f(2, "hostPort", Int),
                    f(3, "containerPort", Int),
                    f(4, "protocol", Str),
                    f(5, "hostIP", Str),
                ]
            }
        }
        "EnvVar" => const { &[f(1, "name", Str), f(2, "value", Str)] },
        "ResourceRequirements" => {
            const { &[f(1, "limits", QuantityMap), f(2, "requests", QuantityMap)] }
        }
        "Service" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("ServiceSpec")),
                    f(3, "status", Message("Empty")),
                ]
            }
        }
        "ServiceSpec" => {
            const {
                &[
                    r(1, "ports", Message("ServicePort")),
                    f(2, "selector", StrMap),
                    f(3, "clusterIP", Str),
                    f(4, "type", Str),
                    r(5, "externalIPs", Str),
                    f(7, "sessionAffinity", Str),
                    f(11, "externalName", Str),
                    r(18, "clusterIPs", Str),
                ]
            }
        }
        "ServicePort" => {
            const {
                &[
                    f(1, "name", Str),
                    f(2, "protocol", Str),
                    f(3, "port", Int),
                    f(4, "targetPort", IntOrString),
                    f(5, "nodePort", Int),
                ]
            }
        }
        "SelfSubjectAccessReview" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("SelfSubjectAccessReviewSpec")),
                    f(3, "status", Message("Empty")),
                ]
            }
        }
        "CertificateSigningRequest" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("CertificateSigningRequestSpec")),
                    f(3, "status", Message("CertificateSigningRequestStatus")),
                ]
            }
        }
        "CertificateSigningRequestSpec" => {
            const {
                &[
                    f(1, "request", Bytes),
                    f(2, "username", Str),
                    f(3, "uid", Str),
                    r(4, "groups", Str),
                    r(5, "usages", Str),
                    f(7, "signerName", Str),
                    f(8, "expirationSeconds", Int),
                ]
            }
        }
        "CertificateSigningRequestStatus" => {
            const {
                &[
                    r(1, "conditions", Message("CertificateSigningRequestCondition")),
                    f(2, "certificate", Bytes),
                ]
            }
        }
        "CertificateSigningRequestCondition" => {
            const {
                &[
                    f(1, "type", Str),
                    f(2, "reason", Str),
                    f(3, "message", Str),
                    f(4, "lastUpdateTime", Time),
                    f(5, "lastTransitionTime", Time),
                    f(6, "status", Str),
                ]
            }
        }
        "ResourceQuota" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("ResourceQuotaSpec")),
                    f(3, "status", Message("Empty")),
                ]
            }
        }
        "ResourceQuotaSpec" => {
            const {
                &[
                    f(1, "hard", QuantityMap),
                    r(2, "scopes", Str),
                    f(3, "scopeSelector", Message("ScopeSelector")),
                ]
            }
        }
        "ScopeSelector" => {
            const { &[r(1, "matchExpressions", Message("ScopedResourceSelectorRequirement"))] }
        }
        "ScopedResourceSelectorRequirement" => {
            const { &[f(1, "scopeName", Str), f(2, "operator", Str), r(3, "values", Str)] }
        }
        "SelfSubjectRulesReview" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("SelfSubjectRulesReviewSpec")),
                    f(3, "status", Message("Empty")),
                ]
            }
        }
        "SelfSubjectRulesReviewSpec" => const { &[f(1, "namespace", Str)] },
        "SelfSubjectReview" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "status", Message("SelfSubjectReviewStatus")),
                ]
            }
        }
        "HorizontalPodAutoscalerV1" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("HorizontalPodAutoscalerSpecV1")),
                    f(3, "status", Message("Empty")),
                ]
            }
        }
        "HorizontalPodAutoscalerSpecV1" => {
            const {
                &[
                    f(1, "scaleTargetRef", Message("CrossVersionObjectReference")),
                    f(2, "minReplicas", Int),
                    f(3, "maxReplicas", Int),
                    f(4, "targetCPUUtilizationPercentage", Int),
                ]
            }
        }
        "CrossVersionObjectReference" => {
            const { &[f(1, "kind", Str), f(2, "name", Str), f(3, "apiVersion", Str)] }
        }
        "TokenRequest" => {
            const {
                &[
                    f(1, "metadata", Message("ObjectMeta")),
                    f(2, "spec", Message("TokenRequestSpec")),
                    f(3, "status", Message("TokenRequestStatus")),
                ]
            }
        }
        "TokenRequestSpec" => {
            const {
                &[
                    r(1, "audiences", Str),
                    f(3, "boundObjectRef", Message("BoundObjectReference")),
                    f(4, "expirationSeconds", Int),
                ]
            }
        }
        "TokenRequestStatus" => const { &[f(1, "token", Str), f(2, "expirationTimestamp", Time)] },
        "BoundObjectReference" => {
            const { &[f(1, "kind", Str), f(2, "apiVersion", Str), f(3, "name", Str), f(4, "uid", Str)] }
        }
        "SelfSubjectReviewStatus" => const { &[f(1, "userInfo", Message("UserInfo"))] },
        "UserInfo" => const { &[f(1, "username", Str), f(2, "uid", Str), r(3, "groups", Str)] },
        "SelfSubjectAccessReviewSpec" => {
            const {
                &[
                    f(1, "resourceAttributes", Message("ResourceAttributes")),
                    f(2, "nonResourceAttributes", Message("NonResourceAttributes")),
                ]
            }
        }
        "ResourceAttributes" => {
            const {
                &[
                    f(1, "namespace", Str),
                    f(2, "verb", Str),
                    f(3, "group", Str),
                    f(4, "version", Str),
                    f(5, "resource", Str),
                    f(6, "subresource", Str),
                    f(7, "name", Str),
                ]
            }
        }
        "NonResourceAttributes" => const { &[f(1, "path", Str), f(2, "verb", Str)] },
        // Status blocks kubectl sends empty.
        "Empty" => &[],
        _ => return None,
    })
}

/// Fields that are pointers in Kubernetes' Go types (present only when set, so a zero or
/// false is a value), among the messages above.
const POINTER_FIELDS: &[&str] = &[
    "replicas",
    "parallelism",
    "completions",
    "backoffLimit",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "manualSelector",
    "suspend",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "terminationGracePeriodSeconds",
    "automountServiceAccountToken",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "enableServiceLinks",
    "hostUsers",
    "priority",
    "setHostnameAsFQDN",
    "controller",
    "blockOwnerDeletion",
    "expirationSeconds",
    "minReplicas",
    "targetCPUUtilizationPercentage",
];

/// The kinds this module decodes, by their top-level message.
const KINDS: &[&str] = &[
    "Namespace",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Deployment",
    "Service",
    "SelfSubjectAccessReview",
    "SelfSubjectRulesReview",
    "SelfSubjectReview",
    "ResourceQuota",
    "CertificateSigningRequest",
    "Job",
    "CronJob",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "TokenRequest",
    "HorizontalPodAutoscaler",
    "PriorityClass",
    "PodDisruptionBudget",
    "Eviction",
];

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) =
                self.data.split_first().ok_or_else(|| ProtoError("truncated varint".into()))?;
            self.data = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtoError("varint too long".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let len = self.varint()? as usize;
        if len > self.data.len() {
            return Err(ProtoError("truncated field".into()));
        }
        let (value, rest) = self.data.split_at(len);
        self.data = rest;
        Ok(value)
    }

    /// The next (field number, wire type, value) where the value is a varint or bytes.
    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ProtoError> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => Wire::Bytes(self.bytes()?),
            1 | 5 => {
                return Err(ProtoError(format!(
                    "field {}: fixed-size values are not used by these kinds",
                    key >> 3
                )))
            }
            other => {
                return Err(ProtoError(format!(
                    "field {}: unsupported wire type {other}",
                    key >> 3
                )))
            }
        };
        Ok(Some((key >> 3, value)))
    }
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn text(bytes: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError("a string field is not UTF-8".into()))
}

/// A map entry: key = 1, value = 2.
fn entry(bytes: &[u8]) -> Result<(String, &[u8]), ProtoError> {
    let mut reader = Reader { data: bytes };
    let (mut key, mut value): (String, &[u8]) = (String::new(), &[]);
    while let Some((number, wire)) = reader.next()? {
        match (number, wire) {
            (1, Wire::Bytes(b)) => key = text(b)?,
            (2, Wire::Bytes(b)) => value = b,
            _ => return Err(ProtoError("malformed map entry".into())),
        }
    }
    Ok((key, value))
}

fn decode_message(name: &str, bytes: &[u8]) -> Result<Value, ProtoError> {
    let fields =
        schema(name).ok_or_else(|| ProtoError(format!("message {name} is not supported")))?;
    let mut out = Map::new();
    let mut reader = Reader { data: bytes };
    while let Some((number, wire)) = reader.next()? {
        let Some(field) = fields.iter().find(|f| f.number == number) else {
            // Go's encoder writes every non-pointer field, set or not: an empty value of a
            // field we do not know says nothing; anything else must not be dropped.
            match wire {
                Wire::Bytes([]) => continue,
                Wire::Varint(0) => continue,
                _ => {
                    return Err(ProtoError(format!(
                        "{name} field {number} is not supported yet; send JSON (kubectl apply -f)"
                    )))
                }
            }
        };
        let value = match (field.kind, wire) {
            (Str, Wire::Bytes(b)) => json!(text(b)?),
            (Bytes, Wire::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
            (RawJson, Wire::Bytes(b)) => {
                // FieldsV1 is its JSON, not an object holding it.
                return serde_json::from_slice(b)
                    .map_err(|e| ProtoError(format!("fieldsV1 is not JSON: {e}")));
            }
            (Int, Wire::Varint(v)) => json!(v as i64),
            (Bool, Wire::Varint(v)) => json!(v != 0),
            (Message(inner), Wire::Bytes(b)) => decode_message(inner, b)?,
            (StrMap, Wire::Bytes(b)) => {
                let (k, v) = entry(b)?;
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                map[k] = json!(text(v)?);
                continue;
            }
            (BytesMap, Wire::Bytes(b)) => {
                let (k, v) = entry(b)?;
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                map[k] = json!(base64::engine::general_purpose::STANDARD.encode(v));
                continue;
            }
            (QuantityMap, Wire::Bytes(b)) => {
                let (k, v) = entry(b)?;
                let mut quantity = Reader { data: v };
                let mut amount = String::new();
                while let Some((n, w)) = quantity.next()? {
                    if let (1, Wire::Bytes(s)) = (n, w) {
                        amount = text(s)?;
                    }
                }
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                map[k] = json!(amount);
                continue;
            }
            (Time, Wire::Bytes(b)) => {
                let mut time = Reader { data: b };
                let mut seconds = 0i64;
                while let Some((n, w)) = time.next()? {
                    if let (1, Wire::Varint(s)) = (n, w) {
                        seconds = s as i64;
                    }
                }
                json!(crate::objects::format_time(seconds))
            }
            (IntOrString, Wire::Bytes(b)) => {
                let mut ios = Reader { data: b };
                let (mut kind, mut int, mut string) = (0u64, 0i64, String::new());
                while let Some((n, w)) = ios.next()? {
                    match (n, w) {
                        (1, Wire::Varint(t)) => kind = t,
                        (2, Wire::Varint(i)) => int = i as i32 as i64,
                        (3, Wire::Bytes(s)) => string = text(s)?,
                        _ => {}
                    }
                }
                if kind == 1 {
                    json!(string)
                } else {
                    json!(int)
                }
            }
            _ => return Err(ProtoError(format!("{name}.{}: unexpected wire type", field.name))),
        };
        // JSON's omitempty: zero values of non-pointer Go fields are not sent in JSON either.
        // Pointer fields are encoded only when set, so their zero is meant.
        let pointer = POINTER_FIELDS.contains(&field.name);
        let empty = match &value {
            Value::String(s) => s.is_empty() && !field.repeated,
            Value::Bool(b) => !b && !pointer,
            Value::Number(n) => n.as_i64() == Some(0) && !pointer,
            _ => false,
        };
        if empty || (matches!(field.kind, Time) && value == json!(crate::objects::format_time(0))) {
            continue;
        }
        if field.repeated {
            if let Some(list) = out.entry(field.name).or_insert_with(|| json!([])).as_array_mut() {
                list.push(value);
            }
        } else {
            out.insert(field.name.to_owned(), value);
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a `k8s\0`-framed body into the JSON form of the object.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let envelope = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| ProtoError("missing the k8s\\0 magic prefix".into()))?;
    let mut reader = Reader { data: envelope };
    let (mut api_version, mut kind, mut raw): (String, String, &[u8]) =
        (String::new(), String::new(), &[]);
    while let Some((number, wire)) = reader.next()? {
        match (number, wire) {
            (1, Wire::Bytes(type_meta)) => {
                let mut meta = Reader { data: type_meta };
                while let Some((n, w)) = meta.next()? {
                    match (n, w) {
                        (1, Wire::Bytes(v)) => api_version = text(v)?,
                        (2, Wire::Bytes(k)) => kind = text(k)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            (3 | 4, _) => {}
            _ => return Err(ProtoError("malformed envelope".into())),
        }
    }
    if !KINDS.contains(&kind.as_str()) {
        return Err(ProtoError(format!(
            "kind {kind:?} is not supported in protobuf yet; send JSON"
        )));
    }
    // A kind whose versions differ in their messages.
    let message = match (api_version.as_str(), kind.as_str()) {
        ("autoscaling/v1", "HorizontalPodAutoscaler") => "HorizontalPodAutoscalerV1",
        _ => kind.as_str(),
    };
    let mut object = decode_message(message, raw)?;
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    // Empty status blocks say nothing.
    if object.get("status").is_some_and(|s| s.as_object().is_some_and(Map::is_empty)) {
        if let Some(map) = object.as_object_mut() {
            map.remove("status");
        }
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(n: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        bytes_field(1, k.as_bytes(), &mut e);
        bytes_field(2, v, &mut e);
        e
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = Vec::new();
        bytes_field(1, api_version.as_bytes(), &mut type_meta);
        bytes_field(2, kind.as_bytes(), &mut type_meta);
        let mut body = b"k8s\0".to_vec();
        bytes_field(1, &type_meta, &mut body);
        bytes_field(2, raw, &mut body);
        bytes_field(4, b"application/vnd.kubernetes.protobuf", &mut body);
        body
    }

    #[test]
    fn a_configmap_and_a_secret() {
        let mut meta = Vec::new();
        bytes_field(1, b"app", &mut meta);
        bytes_field(3, b"team", &mut meta);
        bytes_field(11, &entry("tier", b"web"), &mut meta);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        bytes_field(2, &entry("a", b"1"), &mut cm);
        bytes_field(2, &entry("b", b"2"), &mut cm);
        let object = decode(&envelope("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "team", "labels": {"tier": "web"}}, "data": {"a": "1", "b": "2"}})
        );
        let mut secret = Vec::new();
        bytes_field(1, &meta, &mut secret);
        bytes_field(2, &entry("password", b"\x00hi"), &mut secret);
        bytes_field(3, b"Opaque", &mut secret);
        let object = decode(&envelope("v1", "Secret", &secret)).unwrap();
        assert_eq!(object["data"]["password"], "AGhp");
        assert_eq!(object["type"], "Opaque");
    }

    #[test]
    fn a_deployment_with_nested_messages() {
        let mut container = Vec::new();
        bytes_field(1, b"web", &mut container);
        bytes_field(2, b"busybox", &mut container);
        let mut port = Vec::new();
        varint(3 << 3, &mut port);
        varint(8080, &mut port);
        bytes_field(6, &port, &mut container);
        let mut pod_spec = Vec::new();
        bytes_field(2, &container, &mut pod_spec);
        let mut template = Vec::new();
        let mut template_meta = Vec::new();
        bytes_field(11, &entry("app", b"web"), &mut template_meta);
        bytes_field(1, &template_meta, &mut template);
        bytes_field(2, &pod_spec, &mut template);
        let mut selector = Vec::new();
        bytes_field(1, &entry("app", b"web"), &mut selector);
        let mut spec = Vec::new();
        varint(1 << 3, &mut spec);
        varint(3, &mut spec);
        bytes_field(2, &selector, &mut spec);
        bytes_field(3, &template, &mut spec);
        bytes_field(4, &[], &mut spec);
        let mut meta = Vec::new();
        bytes_field(1, b"web", &mut meta);
        let mut deployment = Vec::new();
        bytes_field(1, &meta, &mut deployment);
        bytes_field(2, &spec, &mut deployment);
        bytes_field(3, &[], &mut deployment);
        let object = decode(&envelope("apps/v1", "Deployment", &deployment)).unwrap();
        assert_eq!(object["spec"]["replicas"], 3);
        assert_eq!(object["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(
            object["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
            8080
        );
        assert!(object.get("status").is_none());
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert!(decode(b"{\"kind\":\"ConfigMap\"}").is_err());
        assert!(decode(&envelope("v1", "Pod", &[]))
            .unwrap_err()
            .to_string()
            .contains("not supported"));
        let mut meta = Vec::new();
        bytes_field(99, b"x", &mut meta);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        assert!(decode(&envelope("v1", "ConfigMap", &cm))
            .unwrap_err()
            .to_string()
            .contains("field 99"));
        // An empty value of an unknown field (Go writes them) is skipped.
        let mut meta = Vec::new();
        bytes_field(1, b"x", &mut meta);
        bytes_field(4, b"", &mut meta);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        assert_eq!(
            decode(&envelope("v1", "ConfigMap", &cm)).unwrap()["metadata"],
            json!({"name": "x"})
        );
        let mut truncated = envelope("v1", "ConfigMap", &[]);
        truncated.push(0x12);
        truncated.push(0x7f);
        assert!(decode(&truncated).is_err());
    }
}
