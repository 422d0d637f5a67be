//! The `/metrics` listener: a minimal HTTP/1.1 responder on a tokio
//! `TcpListener`. `GET /metrics` (or `HEAD`) answers the text exposition;
//! other paths 404, other methods 405. One request per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::WorkerMetrics;
use crate::error::WorkerError;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;

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
                            let _ = tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &metrics))
                                .await;
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

/// Reads one request head from `stream` and answers it.
async fn answer(mut stream: TcpStream, metrics: &WorkerMetrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "", "").await;
        }
    }
    let (status, body) = route(&head);
    let text;
    let (body, content_type) = match body {
        Route::Metrics { head_only } => {
            text = metrics.render();
            (
                if head_only { "" } else { text.as_str() },
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )
        }
        Route::Text(t) => (t, "text/plain; charset=utf-8"),
    };
    respond(&mut stream, status, content_type, body).await
}

/// What a request gets.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// The exposition (without body for `HEAD`).
    Metrics { head_only: bool },
    /// A short text.
    Text(&'static str),
}

/// The status and answer of the request whose head is `head`.
fn route(head: &[u8]) -> (&'static str, Route) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return ("400 Bad Request", Route::Text("bad request\n"));
    };
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            Route::Metrics {
                head_only: method == "HEAD",
            },
        ),
        (_, "/metrics") => ("405 Method Not Allowed", Route::Text("only GET and HEAD\n")),
        _ => (
            "404 Not Found",
            Route::Text("not found; metrics are at /metrics\n"),
        ),
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    if !content_type.is_empty() {
        out.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.push_str(body);
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_requests() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("200 OK", Route::Metrics { head_only: false })
        );
        assert_eq!(
            route(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            ("200 OK", Route::Metrics { head_only: true })
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n").0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n").0, "404 Not Found");
        assert_eq!(route(b"\r\n\r\n").0, "400 Bad Request");
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
