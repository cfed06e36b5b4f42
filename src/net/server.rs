//! The connection layer under the HTTP app: accepts TCP connections, serves HTTP/1.1 on each
//! with bounded waits, caps how many are open, and shuts down within a grace period.
//!
//! Size: the accept loop and the two pieces it needs that hyper lacks (a total body deadline, the
//! JSON shaping of hyper's own error answers) read best together; each is short.
//!
//! `axum::serve` has none of these bounds, so a client that opens connections and sends nothing,
//! trickles a header or a body, or simply holds many idle connections could keep a replica's
//! file descriptors and its shutdown hostage. Here:
//!
//! ```text
//!   header / idle   a request head must arrive within `header_timeout` of the connection
//!                   opening or of the previous response (hyper's header-read timer, which also
//!                   runs while a kept-alive connection is idle)
//!   body            a request body must be received within `body_timeout` of the head (a
//!                   total, not per chunk: a trickle of one byte a second times out too) → 408
//!   connections     at most `max_connections` open; a new one past the cap evicts the
//!                   connection idle the longest, or — every one busy — is answered 503 and closed
//!   shutdown        stop accepting, let requests in flight finish, close every connection by
//!                   `shutdown_grace` at the latest
//!   parse errors    hyper answers a request it cannot parse (bad framing 400, request line
//!                   over 64 KiB 414, headers too large 431) before any handler runs; those
//!                   answers are rewritten on the way out into the JSON error shape
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, info, warn, Instrument};

/// The bounds a replica's HTTP server enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a request head, from the connection's start or its previous response.
    pub header_timeout: Duration,
    /// Longest time to receive a request body, from its head.
    pub body_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for requests in flight at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// File descriptors kept back from the connection cap: the store, the log, outgoing peer
/// connections, the listener.
pub const RESERVED_FDS: usize = 64;

/// The connection cap this process can actually hold: `wanted`, lowered to the open-files limit
/// (`RLIMIT_NOFILE`) minus [`RESERVED_FDS`] so that accepting never fails for lack of a
/// descriptor. Returns the cap and the limit it was derived from.
pub fn connection_cap(wanted: usize) -> (usize, Option<u64>) {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => {
            let room = usize::try_from(soft).unwrap_or(usize::MAX).saturating_sub(RESERVED_FDS).max(1);
            (wanted.min(room), Some(soft))
        }
        Err(_) => (wanted, None),
    }
}

/// The text of the error a body that took too long fails with (the API maps it to 408).
pub(crate) const BODY_TIMEOUT_MESSAGE: &str = "request body not received in time";

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: Incoming,
    /// When the head arrived plus the limit: the body must be in by then.
    due: tokio::time::Instant,
    /// The timer for `due`, made on the first poll: most requests (every GET) have no body and
    /// never poll it, so they cost no timer registration.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let due = this.due;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if deadline.as_mut().poll(cx).is_ready() {
            let message = format!("{BODY_TIMEOUT_MESSAGE} (within {:?} of its head)", this.limit);
            return Poll::Ready(Some(Err(message.into())));
        }
        Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The signature of a response hyper writes by itself when it cannot parse a request (bad
/// framing, a request line or headers too long): vkv's own responses always have a JSON body.
const HYPER_ERROR_HEAD: &[u8] = b"\r\nconnection: close\r\ncontent-length: 0\r\n";

/// Rewrites a bodiless error response of hyper's own (400, 414, 431) into vkv's JSON error
/// shape, with the same status; returns `None` for any other bytes.
fn shape_hyper_error(buf: &[u8]) -> Option<Vec<u8>> {
    if !(buf.starts_with(b"HTTP/1.1 4") || buf.starts_with(b"HTTP/1.1 5")) || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    buf.windows(HYPER_ERROR_HEAD.len()).position(|w| w == HYPER_ERROR_HEAD)?;
    let head = std::str::from_utf8(buf).ok()?;
    let status_line = head.lines().next()?;
    let status: u16 = status_line.get(9..12)?.parse().ok()?;
    let message = match status {
        400 => "malformed HTTP request: it could not be parsed (request line, header or framing)".to_string(),
        414 => format!(
            "request line too long (over 65534 bytes); keys are at most {} bytes",
            crate::net::protocol::MAX_KEY_BYTES
        ),
        431 => "request headers too large".to_string(),
        _ => status_line.get(13..).unwrap_or("error").to_string(),
    };
    let body = serde_json::json!({ "error": message }).to_string();
    let date = head.lines().find(|l| l.starts_with("date:")).map(|l| format!("{l}\r\n")).unwrap_or_default();
    Some(
        format!(
            "{status_line}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n{date}\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// A connection's byte stream with hyper's own error responses shaped as JSON (see
/// [`shape_hyper_error`]); everything else passes through untouched.
struct ShapedErrors {
    inner: TcpStream,
    /// A shaped response not yet written out.
    pending: Vec<u8>,
}

impl ShapedErrors {
    /// Writes what is pending; `Ready(Ok)` once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncRead for ShapedErrors {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ShapedErrors {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(shaped) = shape_hyper_error(buf) {
            self.pending = shaped;
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(shaped) = shape_hyper_error(first) {
                self.pending = shaped;
                let _ = self.poll_pending(cx)?;
                return Poll::Ready(Ok(first.len()));
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    requests_in_flight: AtomicUsize,
    /// Milliseconds since the server started when the connection last went idle.
    idle_since_ms: AtomicU64,
    evict: Notify,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
}

impl Registry {
    /// The connection that has been idle the longest, if any is idle.
    fn longest_idle(&self) -> Option<Arc<Conn>> {
        self.open
            .values()
            .filter(|c| c.requests_in_flight.load(Ordering::SeqCst) == 0)
            .min_by_key(|c| c.idle_since_ms.load(Ordering::SeqCst))
            .cloned()
    }
}

/// Answers a connection past the cap (every open one busy) with a 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error":"too many connections: every connection slot is busy; retry shortly"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
}

/// Serves `app` on `listener` until `shutdown` completes, then drains within the grace period.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let started = Instant::now();
    let since_start = move || started.elapsed().as_millis() as u64;
    let registry = Arc::new(Mutex::new(Registry::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut last_accept_error: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: log (not more than
                    // once a second) and go on; a pause keeps the loop from spinning.
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        warn!("accepting a connection failed: {e}");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (id, conn) = {
            let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
            if reg.open.len() >= limits.max_connections {
                match reg.longest_idle() {
                    Some(victim) => {
                        debug!(
                            "connection cap {} reached: closing the longest-idle connection",
                            limits.max_connections
                        );
                        victim.evict.notify_one();
                    }
                    None => {
                        debug!(
                            "connection cap {} reached, every connection busy: refusing {remote}",
                            limits.max_connections
                        );
                        tasks.spawn(refuse(stream).in_current_span());
                        continue;
                    }
                }
            }
            let conn = Arc::new(Conn {
                requests_in_flight: AtomicUsize::new(0),
                idle_since_ms: AtomicU64::new(since_start()),
                evict: Notify::new(),
            });
            reg.next_id += 1;
            let id = reg.next_id;
            reg.open.insert(id, conn.clone());
            (id, conn)
        };
        let (app, registry, mut stop) = (app.clone(), registry.clone(), stop_rx.clone());
        tasks.spawn(
            async move {
                let tracked = conn.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let conn = tracked.clone();
                    conn.requests_in_flight.fetch_add(1, Ordering::SeqCst);
                    let due = tokio::time::Instant::now() + limits.body_timeout;
                    let request = request.map(|inner| {
                        Body::new(DeadlineBody { inner, due, deadline: None, limit: limits.body_timeout })
                    });
                    let app = app.clone();
                    async move {
                        let response: Result<Response<Body>, std::convert::Infallible> = app.oneshot(request).await;
                        conn.idle_since_ms.store(since_start(), Ordering::SeqCst);
                        conn.requests_in_flight.fetch_sub(1, Ordering::SeqCst);
                        response
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(ShapedErrors { inner: stream, pending: Vec::new() }), service);
                tokio::pin!(connection);
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(e) = served {
                            debug!("connection from {remote} ended: {e}");
                        }
                    }
                    _ = stop.changed() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                    _ = conn.evict.notified() => debug!("connection from {remote} closed to make room"),
                }
                registry.lock().unwrap_or_else(|e| e.into_inner()).open.remove(&id);
            }
            .in_current_span(),
        );
    }
    drop(listener);
    let open = registry.lock().unwrap_or_else(|e| e.into_inner()).open.len();
    info!("stopped accepting connections; {open} open, closing them (grace {:?})", limits.shutdown_grace);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(limits.shutdown_grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        let left = registry.lock().unwrap_or_else(|e| e.into_inner()).open.len();
        warn!("{left} connection(s) still busy after {:?}: closing them", limits.shutdown_grace);
        tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_heads_become_json_and_nothing_else_changes() {
        let hyper = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 00:22:41 GMT\r\n\r\n";
        let shaped = String::from_utf8(shape_hyper_error(hyper).unwrap()).unwrap();
        let (head, body) = shaped.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("content-type: application/json") && head.contains("date: Sun"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("too long"), "{json}");
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(shape_hyper_error(ours), None);
        let ok = b"HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n";
        assert_eq!(shape_hyper_error(ok), None);
    }
}
