//! `GET /metrics`: the replica's metrics in the Prometheus text exposition format.
//!
//! Events are counted where they happen, through the `metrics` facade (`metrics::counter!` in
//! the decision log, the store's commit, the senders, anti-entropy, and the HTTP layer below);
//! this module installs the process's recorder (`metrics-exporter-prometheus`), describes every
//! metric (its `# HELP` line), and at each scrape sets the gauges that are a reading of the
//! replica's state right now — outbox depth and reachability per peer, keys, recovery, store
//! health — from the same probe `GET /status` makes.
//!
//! ```text
//!   vkv_http_requests_total{route,method,status}      counter    every answered request
//!   vkv_http_request_duration_seconds{route,method}   histogram  handler time
//!   vkv_commit_duration_seconds                       histogram  one durable commit (fsync)
//!   vkv_merges_total{source,outcome}                  counter    versions merged from peers
//!   vkv_siblings_created_total{source}                counter    merges that kept a concurrent version
//!   vkv_write_conflicts_total                         counter    client writes refused with 409
//!   vkv_read_repairs_total                            counter    quorum reads that repaired replicas
//!   vkv_anti_entropy_repairs_total                    counter    keys changed by anti-entropy pulls
//!   vkv_replicated_keys_total{peer}                   counter    keys delivered to a peer
//!   vkv_replication_failures_total{peer}              counter    batches a peer did not answer
//!   vkv_outbox_depth{peer}                            gauge      keys owed to a peer
//!   vkv_peer_up{peer}                                 gauge      1 if the peer answered its probe
//!   vkv_keys / vkv_recovering / vkv_store_healthy     gauges     this replica's state
//! ```
//!
//! One recorder per process: a process runs one replica (tests that build several replicas in
//! one process share it, which only mixes their counters).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use metrics::{describe_counter, describe_gauge, describe_histogram, gauge, Counter, Histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};

use crate::node::replica::Replica;

/// Histogram buckets in seconds: 100 µs to 10 s, covering a loopback GET and a slow fsync.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Registers every counter at zero for `replica` (its peers' labels included), so each series
/// exists from the start: `increase()` then sees the first event, and `absent()` alerts only
/// when a replica is really gone. Adding zero leaves a counter that already counts unchanged.
pub(crate) fn register(replica: &Replica) {
    install();
    let sources = ["replication", "anti_entropy", "recovery", "read_repair"];
    for source in sources {
        for outcome in ["created", "updated", "stale", "conflict"] {
            metrics::counter!("vkv_merges_total", "source" => source, "outcome" => outcome).increment(0);
        }
        metrics::counter!("vkv_siblings_created_total", "source" => source).increment(0);
    }
    for name in [
        "vkv_write_conflicts_total",
        "vkv_read_repairs_total",
        "vkv_anti_entropy_repairs_total",
        "vkv_compactions_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for member in replica.layout().peers() {
        let peer = member.id.to_string();
        metrics::counter!("vkv_replicated_keys_total", "peer" => peer.clone()).increment(0);
        metrics::counter!("vkv_replication_failures_total", "peer" => peer).increment(0);
    }
}

/// How often histogram samples are drained into their buckets when nobody scrapes.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// The content type of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's metrics recorder (once; later calls return the same handle) and
/// describes every metric. If another recorder was installed first, ours stays empty.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder.set_buckets(LATENCY_BUCKETS).unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed: /metrics shows only the state gauges");
        }
        describe();
        // Histogram samples wait in lock-free buckets until drained: drain them every few
        // seconds even if nobody scrapes, so their memory stays bounded. Process-wide, like
        // the recorder, and it holds nothing that needs a shutdown.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
            std::thread::sleep(UPKEEP_PERIOD);
            upkeep.run_upkeep();
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the metrics upkeep thread ({e}): histograms are drained at scrapes only");
        }
        handle
    })
}

fn describe() {
    describe_counter!("vkv_http_requests_total", "HTTP requests answered, by route template, method and status");
    describe_histogram!(
        "vkv_http_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's head to its response, by route template and method"
    );
    describe_histogram!(
        "vkv_commit_duration_seconds",
        Unit::Seconds,
        "Duration of one durable store commit (fsync), which holds one or more grouped writes"
    );
    describe_counter!(
        "vkv_merges_total",
        "Versions merged from elsewhere, by source (replication, anti_entropy, recovery, read_repair) and outcome \
         (created, updated, stale, conflict)"
    );
    describe_counter!("vkv_siblings_created_total", "Merges that kept a concurrent version beside the local one");
    describe_counter!(
        "vkv_write_conflicts_total",
        "Client writes refused with 409: the replica held a version the write's context did not cover"
    );
    describe_counter!("vkv_read_repairs_total", "Quorum reads (?r=K) that found replicas behind and repaired them");
    describe_counter!("vkv_anti_entropy_repairs_total", "Keys changed here by anti-entropy pulls");
    describe_counter!("vkv_replicated_keys_total", "Keys delivered to a peer by this replica's sender");
    describe_counter!("vkv_replication_failures_total", "Replication batches a peer did not answer");
    describe_gauge!("vkv_outbox_depth", "Keys queued for a peer in this replica's durable outbox");
    describe_gauge!("vkv_peer_up", "1 if the peer answered this replica's probe at the last scrape, else 0");
    describe_gauge!("vkv_keys", "Keys this replica holds (tombstones included)");
    describe_gauge!("vkv_recovering", "1 while this replica recovers its keys from the peers (writes refused)");
    describe_gauge!("vkv_store_disk_bytes", "Bytes the store file and its write-ahead log take on disk (blocks)");
    describe_counter!(
        "vkv_compactions_total",
        "Compactions of the store file after a spell without commits or reads of the file"
    );
    describe_histogram!(
        "vkv_compaction_duration_seconds",
        Unit::Seconds,
        "How long one compaction took (with the rebuild of a sparse keys table before it)"
    );
    describe_gauge!("vkv_store_healthy", "1 if the store commits, 0 while it is failing (full disk, damage)");
}

/// The request metrics' handles, by route template, then method and status: looked up under a
/// read lock and reused. Building a metric's key on every request (label strings, hashing, the
/// registry's lookup) cost a quarter of a replica's GET throughput in `vkv-bench`.
static HTTP_HANDLES: OnceLock<RwLock<HashMap<String, RouteHandles>>> = OnceLock::new();

#[derive(Default)]
struct RouteHandles {
    latency: Vec<(&'static str, Histogram)>,
    answered: Vec<((&'static str, u16), Counter)>,
}

/// A method as a label: the standard ones by name, anything else as `other` (so a client cannot
/// grow the label's values).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The handles for one answered request, registered on first use.
fn handles_for(route: &str, method: &'static str, status: u16) -> (Histogram, Counter) {
    let cache = HTTP_HANDLES.get_or_init(Default::default);
    let found = {
        let routes = cache.read().unwrap_or_else(|e| e.into_inner());
        routes.get(route).and_then(|r| {
            let latency = r.latency.iter().find(|(m, _)| *m == method)?.1.clone();
            let answered = r.answered.iter().find(|(k, _)| *k == (method, status))?.1.clone();
            Some((latency, answered))
        })
    };
    if let Some(found) = found {
        return found;
    }
    let mut routes = cache.write().unwrap_or_else(|e| e.into_inner());
    let entry = routes.entry(route.to_string()).or_default();
    let latency = match entry.latency.iter().find(|(m, _)| *m == method) {
        Some((_, h)) => h.clone(),
        None => {
            let h = metrics::histogram!("vkv_http_request_duration_seconds", "route" => route.to_string(), "method" => method);
            entry.latency.push((method, h.clone()));
            h
        }
    };
    let answered = match entry.answered.iter().find(|(k, _)| *k == (method, status)) {
        Some((_, c)) => c.clone(),
        None => {
            let c = metrics::counter!("vkv_http_requests_total", "route" => route.to_string(), "method" => method,
                "status" => status.to_string());
            entry.answered.push(((method, status), c.clone()));
            c
        }
    };
    (latency, answered)
}

/// The layer that counts and times every request by its route template (`/kv/{key}`, never the
/// key itself, so a label's values stay few) and status.
///
/// A hand-written tower layer rather than axum's `from_fn`: `from_fn` clones and boxes the inner
/// service and boxes a future for every request, which cost ~7% of a GET-loaded replica's CPU
/// (see report/PERFORMANCE.md); this one adds no allocation to a request.
#[derive(Clone, Copy, Default)]
pub(crate) struct TrackLayer;

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track { inner }
    }
}

/// The service [`TrackLayer`] wraps around each route.
#[derive(Clone)]
pub(crate) struct Track<S> {
    inner: S,
}

impl<S, E> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response, Error = E>,
{
    type Response = Response;
    type Error = E;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        Tracked { inner: self.inner.call(request), route, method, started: Instant::now() }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer on its way: recorded in the metrics once it is ready.
    pub(crate) struct Tracked<F> {
        #[pin]
        inner: F,
        route: Option<MatchedPath>,
        method: &'static str,
        started: Instant,
    }
}

impl<F, E> Future for Tracked<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &answer {
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            let (latency, answered) = handles_for(route, this.method, response.status().as_u16());
            latency.record(this.started.elapsed().as_secs_f64());
            answered.increment(1);
        }
        Poll::Ready(answer)
    }
}

/// `GET /metrics`: the state gauges read now, then every metric rendered.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text exposition format 0.0.4", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8")))]
pub(crate) async fn serve(State(replica): State<Arc<Replica>>) -> Response {
    let handle = install();
    gauge!("vkv_recovering").set(if replica.is_recovering() { 1.0 } else { 0.0 });
    // The status probe reads the store and carries the readiness verdict (one store probe per
    // scrape); if it cannot read the store, the last readings stay and the store is probed alone.
    let healthy = match replica.status().await {
        Ok(status) => {
            gauge!("vkv_keys").set(status.keys as f64);
            for peer in &status.peers {
                let id = peer.id.to_string();
                gauge!("vkv_outbox_depth", "peer" => id.clone()).set(peer.outbox_depth as f64);
                gauge!("vkv_peer_up", "peer" => id).set(if peer.reachable { 1.0 } else { 0.0 });
            }
            status.health.as_deref() != Some("unhealthy")
        }
        Err(_) => replica.storage_problem().await.is_none(),
    };
    gauge!("vkv_store_healthy").set(if healthy { 1.0 } else { 0.0 });
    handle.run_upkeep();
    ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], handle.render()).into_response()
}
