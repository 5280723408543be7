//! The TLS listener: accepts connections until shutdown, puts the identity of a client
//! certificate the CA signed into each request's extensions, serves HTTP/1.1 and HTTP/2
//! through the [`Handler`], and drains: on shutdown no connection is accepted, idle ones
//! close, and requests in flight (watches end on the same signal) finish within the grace
//! period.

use berth_api::identity::Authenticated;

use super::*;

pub(super) async fn run(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handler: Handler,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("accept: {err}");
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Small responses must not wait for a delayed ACK (Nagle): 40 ms per request.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {err}");
        }
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(err) => {
                    tracing::debug!("TLS handshake: {err}");
                    return;
                }
            };
            // A client certificate the CA signed names the connection's user.
            let certified = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(tls::client_identity)
                .map(|(name, mut groups)| {
                    groups.push("system:authenticated".into());
                    Authenticated(crate::rbac::User { name, groups })
                });
            let service =
                hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                    if let Some(certified) = &certified {
                        request.extensions_mut().insert(certified.clone());
                    }
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler.handle(request).await) }
                });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                tracing::debug!("connection: {err}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
}
