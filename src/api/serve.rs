//! Serves the router over HTTP/1.1 with the limits `axum::serve` lacks: a client gets
//! [`HEADER_READ_TIMEOUT`](crate::limits::HEADER_READ_TIMEOUT) to send its request line and headers (a client trickling them a byte a
//! second is cut off and holds no worker), and headers larger than [`MAX_HEADER_BYTES`](crate::limits::MAX_HEADER_BYTES) get a 431.
//! Body size and body read time are limited where the body is read (`auth.rs`).

use crate::limits::{DRAIN_TIMEOUT, HEADER_READ_TIMEOUT, MAX_HEADER_BYTES};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A failed `accept` (out of file descriptors, say) is retried after this pause, not in a spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections on `listener` until `shutdown`, then drains the ones in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!("accepting a UI connection: {error}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Replies go out in one write; do not hold the last segment back.
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("UI connection ended: {error}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {}s; closing their connections",
            DRAIN_TIMEOUT.as_secs()
        );
    }
    Ok(())
}
