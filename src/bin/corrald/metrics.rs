//! GET /metrics over HTTP, where `metrics_listen` says: the exposition a
//! `Metrics` request on the socket gets, for Prometheus to scrape.
//!
//! Anyone who reaches the address reads it (HTTP has no peer credentials),
//! which is why the config keeps it on loopback unless told otherwise. Its
//! bounds: [`MAX_CONNECTIONS`] at once (more are closed unanswered), one
//! request per connection, a request head of at most [`MAX_REQUEST_BYTES`]
//! that must arrive within [`HEAD_TIMEOUT`], and [`CONNECTION_TIMEOUT`] for
//! the whole exchange.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use corral::metrics;
use corral::supervisor::Handle;

pub const MAX_CONNECTIONS: usize = 16;
/// The smallest read buffer hyper takes.
pub const MAX_REQUEST_BYTES: usize = 8192;
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `address` and serves on it for corrald's life. A bind that fails
/// is logged and corrald goes on without the endpoint: its workers matter
/// more than their metrics.
pub async fn serve(address: SocketAddr, handle: Handle) {
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("metrics_listen: cannot listen on {address}: {e}; no metrics over HTTP");
            return;
        }
    };
    let bound = listener.local_addr().unwrap_or(address);
    tracing::info!(address = %bound, "serving metrics over HTTP on http://{bound}/metrics");
    tokio::spawn(accept(listener, handle));
}

async fn accept(listener: TcpListener, handle: Handle) {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, mostly: the next accept may do.
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            tracing::debug!("metrics endpoint: {MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(request, handle.clone()));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics endpoint: {e}"),
                Err(_) => tracing::debug!("metrics endpoint: a connection outlasted {CONNECTION_TIMEOUT:?}"),
            }
            drop(place);
        });
    }
}

async fn answer(request: Request<Incoming>, handle: Handle) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "only /metrics is served here\n".into()));
    }
    if request.method() != Method::GET {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return Ok(response);
    }
    Ok(match handle.metrics().await {
        Some(text) => {
            let mut response = reply(StatusCode::OK, text);
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
            response
        }
        None => reply(StatusCode::SERVICE_UNAVAILABLE, "corrald is stopping\n".into()),
    })
}
