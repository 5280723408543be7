//! berth's Kubernetes-compatible API server: `berth server` serves the API over HTTPS on
//! `berth-store` (embedded SQLite by default, etcd with `--datastore-endpoint`).
//!
//! - `resources`: discovery and OpenAPI documents from the kinds table (`berth_api`), and
//!   storage keys;
//! - `objects`: metadata, names, defaults, `Status` errors and `Table` rows;
//! - `convert`: HorizontalPodAutoscaler v1 ↔ v2 (the stored version), and custom
//!   resources' versions;
//! - `csr`: CertificateSigningRequests read and checked, and the built-in signers;
//! - `crd`: CustomResourceDefinitions: the resources they serve, schemas (pruning,
//!   defaults, validation), printer columns, OpenAPI;
//! - `apply`: field ownership (`managedFields`) and server-side apply;
//! - `patch`: JSON patch, merge patch and strategic merge patch;
//! - `proto`: protobuf request bodies of the kinds `kubectl create` makes;
//! - `policy`: the bootstrap RBAC roles and bindings, reconciled at start;
//! - `quota`: ResourceQuota usage and refusals, LimitRange defaults and bounds;
//! - `rbac`: token identities and Role/ClusterRole/binding evaluation;
//! - `schema`: OpenAPI v3 schemas of the kinds (from `k8s-openapi`) and unknown fields;
//! - `encryption`: Secrets sealed with AES-256-GCM before they reach the store;
//! - `metrics`: `/metrics` in the Prometheus format;
//! - `tokens`: service-account tokens (ES256 JWTs), issued and verified;
//! - `wire`: response bodies in Kubernetes' key order, ending with a newline;
//! - `tls`: the CA, serving certificate and admin token in the data directory;
//! - `server`: authentication, routing and the verbs (get, list, watch, create, update,
//!   patch, delete, deletecollection).

pub mod apply;
pub use berth_api::{cron, selector};
pub mod convert;
pub mod crd;
pub mod csr;
pub mod encryption;
pub mod metrics;
pub mod objects;
pub mod patch;
pub mod policy;
pub mod proto;
pub mod quota;
pub mod rbac;
pub mod resources;
pub mod schema;
pub mod server;
pub mod strategy;
pub mod tls;
pub mod tokens;
pub mod wire;

/// A server that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Setup(String),
}
