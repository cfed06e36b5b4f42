//! The simulated WAN: every byte between two regions is delayed by that pair's one-way latency.
//!
//! Size: the delay proxy and its timer thread, and their tests (a third of the file).
//!
//! ```text
//!   region i = loopback address 127.0.1.(i+1)
//!
//!   client in region j ──► 127.0.1.(i+1):P   delay proxy of region i ──► 127.0.1.(i+1):L   vkv-server i
//!   (binds 127.0.1.(j+1))   (the address the     one-way(j→i) on each       (--listen)
//!                            cluster knows:       chunk sent, one-way(i→j)
//!                            --host/--port)       on each chunk back
//!   vkv-server j's peer connections leave from 127.0.1.(j+1) (--peer-source), so they are delayed too.
//! ```
//!
//! The proxy tells the sending region by the connection's source address, so one proxy per
//! replica serves every other region and the replicas keep one member list, as in production.
//! Nothing inside `vkv-server` sleeps: the product's code path is the one that runs in production.
//!
//! What is modelled: a constant propagation delay per direction (half the pair's RTT), applied to
//! every chunk in order, and TCP's handshake — the first bytes of a new connection leave one RTT
//! after it opens, as data waits for the SYN/SYN-ACK exchange on a real network. What is not:
//! bandwidth limits, loss, jitter. A source address outside 127.0.1.x (a health probe from the
//! harness) passes undelayed.
//!
//! Tokio's timer wheel has millisecond resolution, which would turn a 0.5 ms intra-region hop
//! into ~1 ms. [`PreciseTimer`] waits on one helper thread's condition variable instead
//! (microsecond resolution), so a 1 ms RTT measures as 1 ms.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::regions::Regions;

/// Deadlines met to within tens of microseconds, for any number of async waiters, by one thread.
#[derive(Clone)]
pub struct PreciseTimer {
    shared: Arc<TimerShared>,
}

struct TimerShared {
    state: Mutex<TimerState>,
    wake: Condvar,
}

#[derive(Default)]
struct TimerState {
    due: BinaryHeap<Reverse<Due>>,
    next_seq: u64,
    stopped: bool,
}

struct Due {
    at: Instant,
    seq: u64,
    fire: oneshot::Sender<()>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// How long before a deadline the timer thread stops sleeping and spins.
const SPIN_AHEAD: Duration = Duration::from_micros(40);

/// Below this, a wait goes straight to the precise thread; above, tokio's timer takes it most
/// of the way first.
const COARSE_MARGIN: Duration = Duration::from_millis(3);

impl PreciseTimer {
    /// Starts the timer thread; it ends when the last clone is dropped.
    pub fn start() -> PreciseTimer {
        let shared = Arc::new(TimerShared { state: Mutex::new(TimerState::default()), wake: Condvar::new() });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("wan-timer".into())
            .spawn(move || {
                // The kernel may defer a timed wake-up by the thread's "timer slack" (50 µs by
                // default) to batch wake-ups; this thread wants none.
                let _ = nix::sys::prctl::set_timerslack(1);
                while let Some(shared) = weak.upgrade() {
                    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                    if state.stopped {
                        return;
                    }
                    // Deadlines within SPIN_AHEAD are met by spinning: a wake-up from the
                    // condition variable arrives some tens of microseconds late.
                    if let Some(Reverse(d)) = state.due.peek() {
                        let at = d.at;
                        if at > Instant::now() && at - Instant::now() <= SPIN_AHEAD {
                            drop(state);
                            while Instant::now() < at {
                                std::hint::spin_loop();
                            }
                            state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    let now = Instant::now();
                    while state.due.peek().is_some_and(|Reverse(d)| d.at <= now) {
                        if let Some(Reverse(d)) = state.due.pop() {
                            let _ = d.fire.send(());
                        }
                    }
                    // Wait for the next deadline, a new earlier one, or at most 50 ms (so that
                    // the thread notices when the timer is dropped).
                    let wait = state
                        .due
                        .peek()
                        .map_or(Duration::from_millis(50), |Reverse(d)| (d.at - now).saturating_sub(SPIN_AHEAD));
                    drop(shared.wake.wait_timeout(state, wait.min(Duration::from_millis(50))));
                }
            })
            .expect("spawning the timer thread");
        PreciseTimer { shared }
    }

    /// Waits until `at`.
    pub async fn sleep_until(&self, at: Instant) {
        let now = Instant::now();
        if at <= now {
            return;
        }
        if at - now > COARSE_MARGIN {
            tokio::time::sleep_until((at - COARSE_MARGIN + Duration::from_millis(1)).into()).await;
        }
        let (fire, fired) = oneshot::channel();
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let seq = state.next_seq;
            state.next_seq += 1;
            state.due.push(Reverse(Due { at, seq, fire }));
        }
        self.shared.wake.notify_one();
        let _ = fired.await;
    }
}

impl Drop for TimerShared {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.lock() {
            state.stopped = true;
        }
        self.wake.notify_all();
    }
}

/// The delay proxies and echo servers of one simulated WAN. Dropping it closes them all.
pub struct Wan {
    regions: Arc<Regions>,
    timer: PreciseTimer,
    tasks: JoinSet<()>,
}

impl Wan {
    /// A WAN with the latencies of `regions` (use [`Regions::without_delay`] for a baseline).
    pub fn new(regions: Regions) -> Wan {
        Wan { regions: Arc::new(regions), timer: PreciseTimer::start(), tasks: JoinSet::new() }
    }

    /// Serves a new address of region `dst` (its IP, a port the OS picks, so no other socket
    /// on that IP can hold it) and returns it: each connection is forwarded to `upstream`,
    /// delayed by the one-way latency between its source region and `dst`.
    pub async fn expose(&mut self, dst: usize, upstream: SocketAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(SocketAddr::new(Regions::sim_ip(dst), 0)).await?;
        let address = listener.local_addr()?;
        let (regions, timer) = (self.regions.clone(), self.timer.clone());
        self.tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, peer)) = listener.accept().await else { continue };
                let src = regions.region_of_ip(peer.ip());
                let (there, back) = match src {
                    Some(s) => (regions.one_way(s, dst), regions.one_way(dst, s)),
                    None => (Duration::ZERO, Duration::ZERO),
                };
                let timer = timer.clone();
                connections.spawn(async move {
                    let opened = Instant::now();
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    // Data can leave only once the handshake would have completed: one RTT.
                    let handshake = opened + there + back;
                    tokio::join!(
                        pump(client_read, server_write, there, handshake, timer.clone()),
                        pump(server_read, client_write, back, opened, timer),
                    );
                });
                // Reap finished connections so the set does not grow without bound.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(address)
    }

    /// A TCP echo server in region `dst`, behind a delay proxy whose address it returns:
    /// pinging it from another region measures what the WAN does to a round trip and nothing else.
    pub async fn echo(&mut self, dst: usize) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(SocketAddr::new(Regions::sim_ip(dst), 0)).await?;
        let backend = listener.local_addr()?;
        self.tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { continue };
                connections.spawn(async move {
                    let _ = socket.set_nodelay(true);
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        self.expose(dst, backend).await
    }
}

/// Copies `from` to `to`, each chunk leaving `delay` after it arrived (and not before
/// `not_before`), in order; the end of the stream is delayed the same way.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    not_before: Instant,
    timer: PreciseTimer,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let at = Instant::now().max(not_before) + delay;
            if tx.send((at, buf[..n].to_vec())).is_err() || n == 0 {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            timer.sleep_until(at).await;
            if chunk.is_empty() || to.write_all(&chunk).await.is_err() {
                let _ = to.shutdown().await;
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

/// Round trips of one byte to an echo server at `to`, from the local address `from`: the first
/// (which pays the handshake) is dropped, the next `count` are returned.
pub async fn ping(from: IpAddr, to: SocketAddr, count: usize) -> io::Result<Vec<Duration>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    let mut rtts = Vec::with_capacity(count);
    let mut byte = [0u8; 1];
    for i in 0..=count {
        let start = Instant::now();
        stream.write_all(&[i as u8]).await?;
        stream.read_exact(&mut byte).await?;
        if i > 0 {
            rtts.push(start.elapsed());
        }
    }
    Ok(rtts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn regions() -> Regions {
        Regions::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("regions.json")).unwrap()
    }

    /// A WAN with the committed regions and an echo server in `region`; returns the WAN (keep it:
    /// dropping it closes the echo) and the echo's address.
    async fn echo_in(region: usize) -> (Wan, SocketAddr) {
        let mut wan = Wan::new(regions());
        let front = wan.echo(region).await.unwrap();
        (wan, front)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_timer_meets_sub_millisecond_deadlines() {
        let timer = PreciseTimer::start();
        let mut late = Vec::new();
        for i in 0..40u64 {
            let at = Instant::now() + Duration::from_micros(300 + i * 37);
            timer.sleep_until(at).await;
            late.push(Instant::now() - at);
        }
        late.sort();
        eprintln!("lateness p10 {:?} p50 {:?} p90 {:?}", late[4], late[20], late[36]);
        assert!(late[20] < Duration::from_micros(400), "median lateness {:?}", late[20]);
    }

    /// A ping through the emulator between two regions measures their configured RTT (median
    /// within ±10%). Within one region the RTT is 1 ms, where the proxy's own cost (and, on a
    /// loaded machine, scheduling) weighs: there the fastest of the pings must lie between the
    /// configured RTT and half a millisecond more — never faster than configured.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pings_measure_the_configured_rtt() {
        let r = regions();
        let (_wan, front) = echo_in(2).await;
        for src in [0usize, 1, 2] {
            let mut rtts: Vec<f64> =
                ping(Regions::sim_ip(src), front, 9).await.unwrap().iter().map(|d| d.as_secs_f64() * 1000.0).collect();
            rtts.sort_by(f64::total_cmp);
            let (fastest, median, want) = (rtts[0], rtts[4], r.rtt_ms(src, 2));
            eprintln!("ping {src}→2: fastest {fastest:.3} ms, median {median:.3} ms (configured {want} ms)");
            if src == 2 {
                assert!(
                    fastest >= want * 0.95 && fastest <= want + 0.5,
                    "{src}→2: fastest {fastest:.2} ms vs {want} ms"
                );
            } else {
                assert!((median - want).abs() <= want * 0.10, "{src}→2: median {median:.2} ms vs {want} ms");
            }
        }
    }

    /// The first bytes of a new connection pay the handshake: one RTT more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_connection_pays_one_rtt_first() {
        let r = regions();
        let (_wan, front) = echo_in(0).await;
        let start = Instant::now();
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(Regions::sim_ip(1), 0)).unwrap();
        let mut stream = socket.connect(front).await.unwrap();
        stream.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await.unwrap();
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let want = 2.0 * r.rtt_ms(1, 0);
        assert!((ms - want).abs() <= want * 0.1, "first byte echoed after {ms:.1} ms; want {want} ms");
    }
}
