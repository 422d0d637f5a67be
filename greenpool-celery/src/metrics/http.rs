//! The `/metrics` listener: hyper's HTTP/1.1 server on a tokio
//! `TcpListener`. `GET /metrics` (or `HEAD`) answers the text exposition;
//! other paths 404, other methods 405. One request per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::WorkerMetrics;
use crate::error::WorkerError;

/// How long a client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound metrics listener, not yet serving.
#[derive(Debug)]
pub(crate) struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    ///
    /// [`WorkerError::Metrics`] when the address cannot be bound (in use,
    /// not local, not allowed).
    pub(crate) async fn bind(addr: SocketAddr) -> Result<Self, WorkerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| WorkerError::Metrics { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| WorkerError::Metrics { addr, source })?;
        Ok(MetricsServer { listener, addr })
    }

    /// The address bound (with the port picked for port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `metrics` until `stop` is cancelled.
    pub(crate) fn spawn(
        self,
        metrics: Arc<WorkerMetrics>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = self.listener.accept() => a,
                    _ = stop.cancelled() => return,
                };
                match accepted {
                    Ok((stream, _)) => {
                        let metrics = Arc::clone(&metrics);
                        tokio::spawn(async move {
                            let _ =
                                tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, metrics)).await;
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors, say: wait a little
                        // instead of spinning on the error.
                        tracing::warn!("metrics: cannot accept a connection: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            _ = stop.cancelled() => return,
                        }
                    }
                }
            }
        })
    }
}

/// Serves the HTTP/1.1 connection `stream` (hyper), one request at a
/// time.
async fn answer(stream: TcpStream, metrics: Arc<WorkerMetrics>) -> Result<(), hyper::Error> {
    let service = service_fn(move |req: Request<Incoming>| {
        let metrics = Arc::clone(&metrics);
        async move { Ok::<_, Infallible>(respond(req.method(), req.uri().path(), &metrics)) }
    });
    http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

/// The answer to `method` on `path`: the exposition at `GET /metrics`
/// (headers only for `HEAD`), 405 for other methods there, 404 elsewhere.
fn respond(method: &Method, path: &str, metrics: &WorkerMetrics) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if path != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(metrics.render())
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn routes_requests() {
        let m = WorkerMetrics::new();
        let got = respond(&Method::GET, "/metrics", &m);
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(
            got.headers()[header::CONTENT_TYPE],
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE
        );
        assert_eq!(
            respond(&Method::HEAD, "/metrics", &m).status(),
            StatusCode::OK
        );
        let post = respond(&Method::POST, "/metrics", &m);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
        assert_eq!(
            respond(&Method::GET, "/", &m).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn serves_the_exposition_and_stops() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let metrics = Arc::new(WorkerMetrics::new());
        metrics.tasks.event("task-failed", "t");
        let stop = CancellationToken::new();
        let serving = server.spawn(Arc::clone(&metrics), stop.clone());
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(
            got.contains("greenpool_tasks_failed_total{task=\"t\"} 1\n"),
            "{got}"
        );
        stop.cancel();
        serving.await.unwrap();
        let taken = MetricsServer::bind(addr).await;
        assert!(taken.is_ok(), "the listener is closed after stop");
    }

    #[tokio::test]
    async fn a_taken_address_is_a_clear_error() {
        let first = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let e = MetricsServer::bind(first.local_addr()).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&first.local_addr().to_string()), "{text}");
        assert!(text.contains("--metrics"), "{text}");
    }
}
