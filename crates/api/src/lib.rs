//! The Kubernetes API as data, shared by the API server, its clients and every loop that
//! watches it: the kinds berth serves (`kinds`), label and field selectors (`selector`),
//! `Status` errors (`status`), who is asking (`identity`), object metadata and times
//! (`meta`), CronJob schedules (`cron`), and the typed objects of `k8s-openapi`
//! (re-exported). It knows nothing of HTTP, storage or Linux.

pub mod cron;
pub mod identity;
pub mod kinds;
pub mod meta;
pub mod quantity;
pub mod selector;
pub mod status;

pub use k8s_openapi;
