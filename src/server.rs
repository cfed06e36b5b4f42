//! The connection layer under the HTTP app: accepts TCP connections, serves HTTP/1.1 on each
//! with bounded waits, caps how many are open, and shuts down within a grace period.
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
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, info, warn};

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
pub const BODY_TIMEOUT_MESSAGE: &str = "request body not received in time";

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.deadline.as_mut().poll(cx).is_ready() {
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
                        tasks.spawn(refuse(stream));
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
        tasks.spawn(async move {
            let tracked = conn.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let conn = tracked.clone();
                conn.requests_in_flight.fetch_add(1, Ordering::SeqCst);
                let deadline = Box::pin(tokio::time::sleep(limits.body_timeout));
                let request =
                    request.map(|inner| Body::new(DeadlineBody { inner, deadline, limit: limits.body_timeout }));
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
                .serve_connection(TokioIo::new(stream), service);
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
        });
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
