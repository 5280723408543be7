//! The kinds berth serves: group, version, plural and singular names, kind, scope, short
//! names, categories, verbs, subresources and the fields a field selector may use. Every
//! part of berth that names a resource (the API server's routes and discovery, the
//! controllers, the clients) reads this one table.

/// One resource of one group-version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Plural, lower case: what URLs name.
    pub name: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Fields `fieldSelector` may use beyond metadata.name and metadata.namespace.
    pub field_selectors: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subresource {
    pub name: &'static str,
    /// The kind a subresource request takes and returns (group, version, kind).
    pub kind: (&'static str, &'static str, &'static str),
    pub verbs: &'static [&'static str],
}

pub const VERBS: &[&str] =
    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

const STATUS: Subresource =
    Subresource { name: "status", kind: ("", "", ""), verbs: &["get", "patch", "update"] };
/// `nodes/NAME/proxy/PATH`: GET of the node agent's own API (`/stats/summary`, ...).
const NODE_PROXY: Subresource =
    Subresource { name: "proxy", kind: ("", "v1", "NodeProxyOptions"), verbs: &["get"] };
/// A namespace's `spec.finalizers`, which its controller clears once it is empty.
const FINALIZE: Subresource =
    Subresource { name: "finalize", kind: ("", "", ""), verbs: &["update"] };
const SCALE: Subresource = Subresource {
    name: "scale",
    kind: ("autoscaling", "v1", "Scale"),
    verbs: &["get", "patch", "update"],
};

macro_rules! resource {
    ($group:expr, $version:expr, $name:expr, $singular:expr, $kind:expr, $namespaced:expr, $short:expr, $categories:expr, $subs:expr, $fields:expr) => {
        Resource {
            group: $group,
            version: $version,
            name: $name,
            singular: $singular,
            kind: $kind,
            namespaced: $namespaced,
            short_names: $short,
            categories: $categories,
            subresources: $subs,
            field_selectors: $fields,
            verbs: VERBS,
        }
    };
}

/// A resource that is only ever created (a review, a binding): answered or acted on, never
/// stored.
macro_rules! answered {
    ($group:expr, $name:expr, $singular:expr, $kind:expr, $namespaced:expr) => {
        Resource {
            group: $group,
            version: "v1",
            name: $name,
            singular: $singular,
            kind: $kind,
            namespaced: $namespaced,
            short_names: &[],
            categories: &[],
            subresources: &[],
            field_selectors: &[],
            verbs: &["create"],
        }
    };
}

const POD_SUBRESOURCES: &[Subresource] = &[
    STATUS,
    Subresource { name: "log", kind: ("", "v1", "Pod"), verbs: &["get"] },
    Subresource { name: "exec", kind: ("", "v1", "PodExecOptions"), verbs: &["create", "get"] },
    Subresource { name: "attach", kind: ("", "v1", "PodAttachOptions"), verbs: &["create", "get"] },
    Subresource {
        name: "portforward",
        kind: ("", "v1", "PodPortForwardOptions"),
        verbs: &["create", "get"],
    },
    Subresource { name: "binding", kind: ("", "v1", "Binding"), verbs: &["create"] },
    Subresource { name: "eviction", kind: ("policy", "v1", "Eviction"), verbs: &["create"] },
    Subresource {
        name: "ephemeralcontainers",
        kind: ("", "v1", "Pod"),
        verbs: &["get", "patch", "update"],
    },
];

/// Every resource berth serves.
pub const RESOURCES: &[Resource] = &[
    resource!(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        &[],
        &[STATUS, FINALIZE],
        &["status.phase"]
    ),
    resource!(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        true,
        &["po"],
        &["all"],
        POD_SUBRESOURCES,
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName"
        ]
    ),
    resource!("", "v1", "services", "service", "Service", true, &["svc"], &["all"], &[STATUS], &[]),
    resource!("", "v1", "endpoints", "endpoints", "Endpoints", true, &["ep"], &[], &[], &[]),
    resource!("", "v1", "secrets", "secret", "Secret", true, &[], &[], &[], &["type"]),
    resource!("", "v1", "configmaps", "configmap", "ConfigMap", true, &["cm"], &[], &[], &[]),
    resource!(
        "",
        "v1",
        "nodes",
        "node",
        "Node",
        false,
        &["no"],
        &[],
        &[STATUS, NODE_PROXY],
        &["spec.unschedulable"]
    ),
    resource!(
        "",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        &[],
        &[],
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type"
        ]
    ),
    resource!(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        &[],
        &[Subresource {
            name: "token",
            kind: ("authentication.k8s.io", "v1", "TokenRequest"),
            verbs: &["create"]
        }],
        &[]
    ),
    resource!(
        "",
        "v1",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        false,
        &["pv"],
        &[],
        &[STATUS],
        &[]
    ),
    resource!(
        "",
        "v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        &[],
        &[STATUS],
        &[]
    ),
    resource!(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        &["all"],
        &[STATUS, SCALE],
        &[]
    ),
    resource!(
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        &["rs"],
        &["all"],
        &[STATUS, SCALE],
        &[]
    ),
    resource!(
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        &["ds"],
        &["all"],
        &[STATUS],
        &[]
    ),
    resource!(
        "apps",
        "v1",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
        &["sts"],
        &["all"],
        &[STATUS, SCALE],
        &[]
    ),
    resource!(
        "apps",
        "v1",
        "controllerrevisions",
        "controllerrevision",
        "ControllerRevision",
        true,
        &[],
        &[],
        &[],
        &[]
    ),
    resource!("batch", "v1", "jobs", "job", "Job", true, &[], &["all"], &[STATUS], &[]),
    resource!(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        &[],
        &[STATUS],
        &[]
    ),
    resource!(
        "batch",
        "v1",
        "cronjobs",
        "cronjob",
        "CronJob",
        true,
        &["cj"],
        &["all"],
        &[STATUS],
        &[]
    ),
    resource!(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        true,
        &["hpa"],
        &["all"],
        &[STATUS],
        &[]
    ),
    resource!(
        "autoscaling",
        "v1",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        true,
        &["hpa"],
        &["all"],
        &[STATUS],
        &[]
    ),
    resource!("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, &[], &[], &[], &[]),
    resource!(
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        "priorityclass",
        "PriorityClass",
        false,
        &["pc"],
        &[],
        &[],
        &[]
    ),
    resource!(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        &[],
        &[],
        &[],
        &[]
    ),
    resource!("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", true, &[], &[], &[], &[]),
    resource!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        &[],
        &[],
        &[],
        &[]
    ),
    resource!(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        &[],
        &[],
        &[],
        &[]
    ),
    resource!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        &[],
        &[],
        &[],
        &[]
    ),
    resource!(
        "",
        "v1",
        "resourcequotas",
        "resourcequota",
        "ResourceQuota",
        true,
        &["quota"],
        &[],
        &[STATUS],
        &[]
    ),
    resource!(
        "",
        "v1",
        "limitranges",
        "limitrange",
        "LimitRange",
        true,
        &["limits"],
        &[],
        &[],
        &[]
    ),
    resource!("", "v1", "podtemplates", "podtemplate", "PodTemplate", true, &[], &[], &[], &[]),
    resource!(
        "",
        "v1",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        true,
        &["rc"],
        &["all"],
        &[STATUS, SCALE],
        &["status.replicas"]
    ),
    // Answered from the server's knowledge of its parts, never stored.
    Resource {
        group: "",
        version: "v1",
        name: "componentstatuses",
        singular: "componentstatus",
        kind: "ComponentStatus",
        namespaced: false,
        short_names: &["cs"],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
        verbs: &["get", "list"],
    },
    resource!(
        "apiregistration.k8s.io",
        "v1",
        "apiservices",
        "apiservice",
        "APIService",
        false,
        &[],
        &["api-extensions"],
        &[STATUS],
        &[]
    ),
    resource!(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
        "certificatesigningrequest",
        "CertificateSigningRequest",
        false,
        &["csr"],
        &[],
        &[
            STATUS,
            Subresource {
                name: "approval",
                kind: ("", "", ""),
                verbs: &["get", "patch", "update"]
            }
        ],
        &["spec.signerName"]
    ),
    // The same objects as core/v1 Events (one key space), in the newer shape.
    resource!(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        &[],
        &[],
        &["reason", "type", "regarding.kind", "regarding.name", "regarding.namespace"]
    ),
    resource!(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        &["api-extensions"],
        &[STATUS],
        &[]
    ),
    resource!(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfiguration",
        "MutatingWebhookConfiguration",
        false,
        &[],
        &["api-extensions"],
        &[],
        &[]
    ),
    resource!(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "validatingwebhookconfiguration",
        "ValidatingWebhookConfiguration",
        false,
        &[],
        &["api-extensions"],
        &[],
        &[]
    ),
    // Answered, never stored: reviews of tokens and of what a user may do.
    answered!("authentication.k8s.io", "tokenreviews", "tokenreview", "TokenReview", false),
    answered!(
        "authorization.k8s.io",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        false
    ),
    answered!(
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        "LocalSubjectAccessReview",
        true
    ),
    answered!(
        "authorization.k8s.io",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        "SelfSubjectRulesReview",
        false
    ),
    // Answered, never stored: `kubectl auth can-i`.
    answered!(
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        false
    ),
    // Acted on, never stored: binds the pod the Binding names (`pods/binding` too).
    answered!("", "bindings", "binding", "Binding", true),
    // Answered, never stored: `kubectl auth whoami`.
    answered!(
        "authentication.k8s.io",
        "selfsubjectreviews",
        "selfsubjectreview",
        "SelfSubjectReview",
        false
    ),
    // Answered from what the server measures, never stored: `kubectl top`, autoscalers.
    Resource {
        group: "metrics.k8s.io",
        version: "v1beta1",
        name: "nodes",
        singular: "",
        kind: "NodeMetrics",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
        verbs: &["get", "list"],
    },
    Resource {
        group: "metrics.k8s.io",
        version: "v1beta1",
        name: "pods",
        singular: "",
        kind: "PodMetrics",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
        verbs: &["get", "list"],
    },
];

impl Resource {
    pub fn group_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The resource a URL names: group, version and plural.
pub fn find(group: &str, version: &str, name: &str) -> Option<&'static Resource> {
    let wanted = |r: &&Resource| r.group == group && r.version == version && r.name == name;
    RESOURCES.iter().find(wanted).or_else(|| custom().into_iter().find(wanted))
}

/// The resource of a kind in a group-version (what a manifest's apiVersion and kind say).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    let wanted = |r: &&Resource| r.kind == kind && r.group_version() == api_version;
    RESOURCES.iter().find(wanted).or_else(|| custom().into_iter().find(wanted))
}

/// Whether a resource is an entry of the built-in table (not a custom resource).
pub fn is_builtin(resource: &Resource) -> bool {
    RESOURCES.as_ptr_range().contains(&std::ptr::from_ref(resource))
}

/// Every resource served now: the built-in table, then the custom resources that
/// CustomResourceDefinitions define (one entry per served version).
pub fn all() -> Vec<&'static Resource> {
    let mut all: Vec<&'static Resource> = RESOURCES.iter().collect();
    all.extend(custom());
    all
}

/// The custom resources served now.
pub fn custom() -> Vec<&'static Resource> {
    CUSTOM.read().unwrap_or_else(|poisoned| poisoned.into_inner()).list.clone()
}

/// A number that changes whenever the set of custom resources does (caches of discovery
/// and OpenAPI documents key on it).
pub fn custom_generation() -> u64 {
    CUSTOM.read().unwrap_or_else(|poisoned| poisoned.into_inner()).generation
}

/// The description of a custom resource, from its CustomResourceDefinition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomResource {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status: bool,
    pub scale: bool,
}

/// Replaces the custom resources served. The table holds `&'static` entries, as the
/// built-in one does: each distinct description is made static once and reused, so the
/// memory kept grows with the distinct definitions a server has seen, not with updates.
pub fn set_custom(resources: &[CustomResource]) {
    let list: Vec<&'static Resource> = resources.iter().map(intern).collect();
    let mut custom = CUSTOM.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    if custom.list != list {
        custom.list = list;
        custom.generation += 1;
    }
}

#[derive(Default)]
struct Custom {
    list: Vec<&'static Resource>,
    generation: u64,
}

static CUSTOM: std::sync::RwLock<Custom> =
    std::sync::RwLock::new(Custom { list: Vec::new(), generation: 0 });

fn intern(wanted: &CustomResource) -> &'static Resource {
    static MADE: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<CustomResource, &'static Resource>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(resource) = made.get(wanted) {
        return resource;
    }
    let text = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let texts = |list: &[String]| -> &'static [&'static str] {
        Box::leak(list.iter().map(|s| text(s)).collect::<Vec<_>>().into_boxed_slice())
    };
    let mut subresources = Vec::new();
    if wanted.status {
        subresources.push(STATUS);
    }
    if wanted.scale {
        subresources.push(SCALE);
    }
    let resource: &'static Resource = Box::leak(Box::new(Resource {
        group: text(&wanted.group),
        version: text(&wanted.version),
        name: text(&wanted.plural),
        singular: text(&wanted.singular),
        kind: text(&wanted.kind),
        namespaced: wanted.namespaced,
        short_names: texts(&wanted.short_names),
        categories: texts(&wanted.categories),
        subresources: Box::leak(subresources.into_boxed_slice()),
        field_selectors: &[],
        verbs: VERBS,
    }));
    made.insert(wanted.clone(), resource);
    resource
}
