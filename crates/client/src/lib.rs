//! One Kubernetes client for every loop berth runs (controllers, scheduler, node agent,
//! proxy, DNS): kube-rs's typed `Api<K>` (CRUD, patch, watch, subresources) over one of two
//! transports.
//!
//! - [`in_process`]: any `tower::Service` that answers `http::Request`s (the binary passes
//!   the API server's handler), with a service identity put in each request's extensions,
//!   so the caller's requests meet the same validation, RBAC and audit as anyone's and no
//!   TCP or TLS is involved.
//! - [`from_kubeconfig`]: HTTPS to a server named by a kubeconfig (for agents on other
//!   machines), kube-rs's own transport.
//!
//! kube-rs is used rather than a client of our own because its `Client::new` takes any
//! `tower::Service`, which is exactly the seam the in-process transport needs, and its
//! runtime (watcher, reflector, controller) is what `berth-reconcile` builds on. This
//! crate knows nothing of the API server crate: the binary joins them.

use std::path::Path;
use std::task::{Context, Poll};

use berth_api::identity::{Authenticated, User};

pub use kube;
pub use kube::Client;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot make a client from the kubeconfig {path}")]
    Client {
        path: String,
        #[source]
        source: kube::Error,
    },
}

/// A client whose requests `service` answers in this process, as `user`.
pub fn in_process<S, B>(service: S, user: User) -> Client
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::new(AsUser { service, user: Authenticated(user) }, "default")
}

/// A client for the server a kubeconfig names, with its credentials (HTTPS).
pub async fn from_kubeconfig(path: &Path) -> Result<Client, Error> {
    let shown = path.display().to_string();
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|source| Error::Kubeconfig { path: shown.clone(), source })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|source| Error::Kubeconfig { path: shown.clone(), source })?;
    Client::try_from(config).map_err(|source| Error::Client { path: shown, source })
}

/// Puts the caller's identity into every request; extensions never come from the
/// network, so only in-process callers can set one.
#[derive(Clone)]
struct AsUser<S> {
    service: S,
    user: Authenticated,
}

impl<S, B> tower::Service<http::Request<B>> for AsUser<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.service.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        request.extensions_mut().insert(self.user.clone());
        self.service.call(request)
    }
}
