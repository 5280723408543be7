//! berth's Kubernetes-compatible API server, as a library. So far: the resource table and
//! discovery documents (`resources`) and label and field selectors (`selector`); the HTTP
//! server over `berth-store` comes next (see ARCHITECTURE.md).

pub mod resources;
pub mod selector;
