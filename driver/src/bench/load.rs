//! The load generator: closed-loop, like wrk: `connections` kept-alive HTTP/1.1 connections,
//! each sending its next request as soon as the previous answer is in. Every latency goes into
//! an HDR histogram (microseconds, 3 significant digits); only requests *started* after the
//! warm-up count. Non-2xx answers are counted as errors (and their latencies kept apart), so a
//! target cannot look fast by failing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::cpu::Cpu;

/// Builds request number `seq` (unique across all connections of one run).
pub type MakeRequest = Arc<dyn Fn(u64) -> Request<Full<Bytes>> + Send + Sync>;

/// How long, how wide and how much.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Stop after this many requests (counted from the start, warm-up included).
    pub max_requests: Option<u64>,
    /// Total requests per second across all connections (`None`: as fast as answers come).
    pub rate: Option<f64>,
}

/// What one run measured.
#[derive(Debug)]
pub struct Outcome {
    pub ok: Histogram<u64>,
    /// Every 2xx answer, warm-up included (what the target's CPU over the whole run served).
    pub answered: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// The CPU the run took, when the caller measured it (see `cpu.rs`).
    pub cpu: Option<Cpu>,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.ok.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        ms(&self.ok, quantile)
    }

    pub fn merge(&mut self, other: Outcome) {
        self.ok.add(&other.ok).expect("histograms of the same bounds");
        self.answered += other.answered;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.elapsed += other.elapsed;
        match (&mut self.cpu, other.cpu) {
            (Some(mine), Some(theirs)) => mine.merge(&theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

/// The value at `quantile` of a [`histogram`] (which records microseconds), in milliseconds.
pub fn ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1000.0
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

struct Worker {
    ok: Histogram<u64>,
    answered: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Drives `addr` with `make` under `settings`.
pub async fn run(addr: SocketAddr, settings: Settings, make: MakeRequest) -> Outcome {
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + settings.warmup;
    let end = measure_from + settings.duration;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..settings.connections {
        let (seq, make) = (seq.clone(), make.clone());
        workers.spawn(async move {
            let mut me = Worker { ok: histogram(), answered: 0, errors: 0, first_error: None };
            // Paced runs: each connection owns every `connections`-th slot of the schedule.
            let interval = settings.rate.map(|r| Duration::from_secs_f64(settings.connections as f64 / r));
            let mut next_slot =
                start + interval.map(|i| i.mul_f64(w as f64 / settings.connections as f64)).unwrap_or_default();
            'connect: while Instant::now() < end {
                let mut sender = match connect(addr).await {
                    Ok(s) => s,
                    Err(e) => {
                        me.note_error(format!("connect: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                loop {
                    if let Some(interval) = interval {
                        tokio::time::sleep_until(next_slot.into()).await;
                        next_slot += interval;
                    }
                    let now = Instant::now();
                    if now >= end {
                        break 'connect;
                    }
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    if settings.max_requests.is_some_and(|max| n >= max) {
                        break 'connect;
                    }
                    let request = make(n);
                    let answer = async {
                        sender.ready().await?;
                        let response = sender.send_request(request).await?;
                        let status = response.status();
                        let body = response.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>((status, body))
                    }
                    .await;
                    let micros = now.elapsed().as_micros() as u64;
                    match answer {
                        Ok((status, _)) if status.is_success() => {
                            me.answered += 1;
                            if now >= measure_from {
                                me.ok.saturating_record(micros.max(1));
                            }
                        }
                        Ok((status, body)) => me
                            .note_error(format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]))),
                        Err(e) => {
                            me.note_error(format!("request: {e}"));
                            continue 'connect;
                        }
                    }
                }
            }
            me
        });
    }
    let mut outcome =
        Outcome { ok: histogram(), answered: 0, errors: 0, first_error: None, elapsed: Duration::ZERO, cpu: None };
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(w) => {
                outcome.ok.add(&w.ok).expect("same bounds");
                outcome.answered += w.answered;
                outcome.errors += w.errors;
                outcome.first_error = outcome.first_error.take().or(w.first_error);
            }
            Err(e) => outcome.first_error = Some(format!("load worker failed: {e}")),
        }
    }
    let stopped = Instant::now().min(end);
    outcome.elapsed = stopped.saturating_duration_since(measure_from).max(Duration::from_millis(1));
    outcome
}

impl Worker {
    fn note_error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<http1::SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A request with a JSON (or empty) body.
pub fn request(method: &str, addr: SocketAddr, path: &str, body: Option<String>) -> Request<Full<Bytes>> {
    let builder = Request::builder().method(method).uri(path).header("host", addr.to_string());
    match body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request"),
        None => builder.body(Full::new(Bytes::new())).expect("a valid request"),
    }
}
