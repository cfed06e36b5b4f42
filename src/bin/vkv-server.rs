//! `vkv-server`: one replica of a vkv cluster.
//!
//! ```text
//! vkv-server --host 127.0.0.1 --port 7000 -N 5 \
//!     --hosts 127.0.0.1,127.0.0.1,127.0.0.1,127.0.0.1 --ports 7001,7002,7003,7004
//! vkv-server --host kv-0.vkv --port 7000 \
//!     --members kv-0.vkv:7000,kv-1.vkv:7000,kv-2.vkv:7000,kv-3.vkv:7000,kv-4.vkv:7000
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing::{error, info, warn, Instrument};

use vkv::auth::{ClusterKey, KEY_ENV};
use vkv::cluster::Layout;
use vkv::protocol::{DEFAULT_MAX_VALUE_BYTES, MAX_REPLICATE_BODY_BYTES, MAX_VALUE_BYTES_LIMIT};
use vkv::replica::AntiEntropyConfig;

/// Shortest anti-entropy period accepted (0 turns it off): each round hashes the whole store on
/// both sides, so much shorter periods keep idle replicas busy.
const MIN_ANTI_ENTROPY_SECS: f64 = 0.1;
use vkv::replica::{Config, Replica};
use vkv::server::{connection_cap, Limits};
use vkv::store::{Repair, DEFAULT_READ_CACHE_BUDGET};

/// mimalloc instead of glibc's allocator: under load glibc's arena locks and chunk consolidation
/// were ~17% of a replica's CPU (see report/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One replica of a vkv cluster. Peers are the *other* replicas: N = 1 + number of peers.
/// Give them either as --hosts/--ports (the others) or as --members (everyone).
#[derive(Parser, Debug)]
#[command(name = "vkv-server", version)]
struct Args {
    /// This replica's host, as the peers know it.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// This replica's HTTP port.
    #[arg(long)]
    port: u16,
    /// Number of replicas in the cluster (this one included). Required with --hosts/--ports;
    /// optional with --members (if given, it must equal the number of members).
    #[arg(short = 'N', long = "replicas")]
    n: Option<usize>,
    /// The other replicas' hosts, comma-separated, in the same order as --ports.
    #[arg(long, value_delimiter = ',', conflicts_with = "members")]
    hosts: Vec<String>,
    /// The other replicas' ports, comma-separated, in the same order as --hosts.
    #[arg(long, value_delimiter = ',', conflicts_with = "members")]
    ports: Vec<u16>,
    /// Every replica as HOST:PORT, comma-separated, this one included (found by --host/--port):
    /// the same list on every replica, e.g. from a template. Instead of --hosts/--ports.
    #[arg(long, value_delimiter = ',')]
    members: Vec<String>,
    /// Where this replica keeps its data and outbox [default: vkv-data/HOST-PORT].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on, if not --host:--port (e.g. 0.0.0.0:7000 in a container).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Local address to open peer connections from (an address of this host), if the OS's
    /// choice will not do: with several addresses per host, the peers then see this one.
    #[arg(long)]
    peer_source: Option<std::net::IpAddr>,
    /// Longest value a client may write, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_VALUE_BYTES)]
    max_value_bytes: usize,
    /// File holding the cluster's shared secret (≥ 16 bytes); peer requests are signed with it.
    /// The environment variable VKV_CLUSTER_KEY may hold the key instead.
    #[arg(long)]
    cluster_key_file: Option<PathBuf>,
    /// Run without peer authentication: anyone who reaches the port can replicate into this
    /// replica. For experiments only.
    #[arg(long, conflicts_with = "cluster_key_file")]
    insecure: bool,
    /// Accept writes at once on an empty data dir, without first pulling every key from every
    /// peer. Only for a brand-new cluster, or when a peer is lost for good.
    #[arg(long)]
    skip_recovery: bool,
    /// Mean seconds between anti-entropy rounds (digest comparison with one peer); 0 turns it off.
    #[arg(long, default_value_t = 10.0)]
    anti_entropy_secs: f64,
    /// Most keys one anti-entropy round pulls (the bandwidth bound; big repairs take more rounds).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    anti_entropy_max_keys: u64,
    /// Before starting, check the store and, if it is damaged, move it aside
    /// (`vkv.redb.damaged-<time>`) and recover every key from the peers, as after a lost disk.
    #[arg(long)]
    repair: bool,
    /// Seconds a client has to send a request's head, from connecting or from the previous
    /// response on a kept-alive connection (so also how long an idle connection stays open).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_timeout_secs: u64,
    /// Seconds a client has to send a request's body, from its head (in total).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    body_timeout_secs: u64,
    /// Most client and peer connections open at once; past it, a new connection evicts the one
    /// idle the longest. Lowered to the open-files limit (ulimit -n) minus 64 if that is smaller.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Seconds requests in flight get to finish at shutdown (SIGTERM, ctrl-c) before their
    /// connections are closed.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    shutdown_grace_secs: u64,
    /// Budget of the read cache, in MiB: the rendered answers of recent GETs, kept coherent with
    /// every commit, so a GET of a hot key does not touch the store. 0 turns it off.
    #[arg(long, default_value_t = (DEFAULT_READ_CACHE_BUDGET >> 20) as u64, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    read_cache_mib: u64,
    /// Compact the store file once no write or merge was committed, and no read went to the
    /// file, for this many seconds, and the file takes over 1.1× what its data needs (it grows
    /// under load: copy-on-write pages, drained outboxes). Writes and reads the read cache does
    /// not answer wait while it runs, about 0.1 s per 100,000 keys. 0 turns it off.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    compact_idle_secs: u64,
    /// Log line format: `text` for people (one line per decision), `json` for log shippers (one
    /// JSON object per line, with the same message and the decision, key and replica as fields).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The formats `--log-format` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The cluster key from --cluster-key-file or VKV_CLUSTER_KEY; `None` only with --insecure.
fn cluster_key(args: &Args) -> Result<Option<ClusterKey>, String> {
    if let Some(path) = &args.cluster_key_file {
        return ClusterKey::from_file(path).map(Some);
    }
    match std::env::var(KEY_ENV) {
        Ok(_) if args.insecure => {
            Err(format!("--insecure contradicts {KEY_ENV}, which is set: unset it or drop --insecure"))
        }
        Ok(text) => ClusterKey::new(&text).map(Some).map_err(|e| format!("{KEY_ENV}: {e}")),
        _ if args.insecure => Ok(None),
        _ => Err(format!(
            "no cluster key: pass --cluster-key-file FILE or set {KEY_ENV} (the same secret on every replica), \
             or --insecure to run without peer authentication"
        )),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("ctrl-c received: shutting down"),
        _ = term => info!("SIGTERM received: shutting down"),
    }
}

/// The log writer thread's buffer: a burst of decision lines (~200 bytes each) per write(2).
const LOG_BUFFER_BYTES: usize = 64 << 10;

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("vkv-server: {message}");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Log lines go to a writer thread through a bounded queue, so a request never waits for a
    // write(2) to stdout. Not lossy: when the queue is full, callers wait rather than drop a
    // decision line. The writer thread buffers what it takes off the queue and flushes whenever
    // the queue is empty: one write(2) per burst of lines rather than per line (stdout alone is
    // line-buffered), and no line waits in the buffer once the thread has caught up. The guard
    // flushes the queue and the buffer when main returns.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(LOG_BUFFER_BYTES, std::io::stdout()));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs =
        tracing_subscriber::fmt().with_writer(writer).with_env_filter(filter).with_target(false).with_ansi(false);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).with_span_list(true).init(),
    }

    let layout = match (args.members.is_empty(), args.n) {
        (false, n) => Layout::from_members(&args.host, args.port, n, &args.members),
        (true, Some(n)) => Layout::from_flags(&args.host, args.port, n, &args.hosts, &args.ports),
        (true, None) => {
            return usage_error("-N is required with --hosts/--ports (or list every member with --members)")
        }
    };
    let layout = match layout {
        Ok(layout) => layout,
        Err(e) => return usage_error(e),
    };
    if args.max_value_bytes == 0 || args.max_value_bytes > MAX_VALUE_BYTES_LIMIT {
        return usage_error(format!(
            "--max-value-bytes {}: must be between 1 and {MAX_VALUE_BYTES_LIMIT} — a value escaped in JSON takes up to \
             6 bytes a byte, and a larger one would not fit in the {} MiB a peer accepts in one replication request",
            args.max_value_bytes,
            MAX_REPLICATE_BODY_BYTES >> 20
        ));
    }
    let key = match cluster_key(&args) {
        Ok(key) => key,
        Err(e) => return usage_error(e),
    };
    let ae = args.anti_entropy_secs;
    if !(ae.is_finite() && (ae == 0.0 || (MIN_ANTI_ENTROPY_SECS..=86_400.0).contains(&ae))) {
        return usage_error(format!(
            "--anti-entropy-secs {ae}: must be 0 (off) or between {MIN_ANTI_ENTROPY_SECS} and 86400 — shorter periods \
             spend the CPU hashing the store"
        ));
    }
    let anti_entropy = (args.anti_entropy_secs > 0.0).then(|| AntiEntropyConfig {
        period: Duration::from_secs_f64(args.anti_entropy_secs),
        max_keys_per_round: args.anti_entropy_max_keys as usize,
    });
    let data_dir =
        args.data_dir.unwrap_or_else(|| PathBuf::from("vkv-data").join(format!("{}-{}", args.host, args.port)));
    let listen = args.listen.map(|a| a.to_string()).unwrap_or_else(|| layout.me().address());

    // Every line this replica logs carries its id: `replica{id=3}: …`, in every task.
    let span = tracing::info_span!("replica", id = layout.self_id());
    async move {
        // Bind first: a port in use is a startup error like any other (exit 2, reason on stderr),
        // and it must not leave a freshly created store behind.
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                error!("cannot listen on {listen}: {e}");
                return usage_error(format!("cannot listen on {listen}: {e}"));
            }
        };
        if args.repair {
            match vkv::store::Store::repair(&data_dir, &layout) {
                Ok(Repair::NoStore) => info!("--repair: no store in {} yet; starting as new", data_dir.display()),
                Ok(Repair::Intact) => info!("--repair: the store in {} is intact", data_dir.display()),
                Ok(Repair::MovedAside(aside)) if layout.n() == 1 => warn!(
                    "--repair: the damaged store was moved to {}; with no peers, this replica starts EMPTY",
                    aside.display()
                ),
                Ok(Repair::MovedAside(aside)) => warn!(
                    "--repair: the damaged store was moved to {}; recovering every key from the peers",
                    aside.display()
                ),
                Err(e) => {
                    error!("--repair failed: {e}");
                    return usage_error(format!("--repair failed: {e}"));
                }
            }
        }
        let replica = match Replica::open(Config {
            layout: layout.clone(),
            data_dir: data_dir.clone(),
            max_value_bytes: args.max_value_bytes,
            cluster_key: key.clone(),
            anti_entropy,
            skip_recovery: args.skip_recovery,
            peer_source: args.peer_source,
            compact_after: (args.compact_idle_secs > 0).then(|| Duration::from_secs(args.compact_idle_secs)),
        }) {
            Ok(r) => {
                r.set_read_cache_budget((args.read_cache_mib as usize).saturating_mul(1 << 20));
                r
            }
            Err(e) => {
                error!("cannot open the store: {e}");
                return usage_error(format!("cannot open the store: {e}"));
            }
        };
        info!(
            "replica {} of {} starting on {listen} · clock position {} · members {} · data dir {}",
            layout.self_id(),
            layout.n(),
            layout.me().position(),
            layout.describe(),
            data_dir.display()
        );
        match &key {
            Some(_) => info!("peer requests are authenticated: HMAC-SHA256 under the cluster key"),
            None => warn!("INSECURE: --insecure given, peer requests are not authenticated"),
        }
        let (max_connections, nofile) = connection_cap(args.max_connections as usize);
        if max_connections < args.max_connections as usize {
            warn!(
                "--max-connections {} lowered to {max_connections}: the open-files limit is {} (ulimit -n) and {} \
                 descriptors are kept for the store and the peers",
                args.max_connections,
                nofile.unwrap_or_default(),
                vkv::server::RESERVED_FDS
            );
        }
        let limits = Limits {
            header_timeout: Duration::from_secs(args.idle_timeout_secs),
            body_timeout: Duration::from_secs(args.body_timeout_secs),
            max_connections,
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        };
        let background = vkv::start_background(&replica);
        vkv::server::serve(listener, vkv::api::app(replica.clone()), limits, shutdown_signal()).await;
        info!("replica {} stopped accepting requests; stopping senders", layout.self_id());
        background.stop(Duration::from_secs(5)).await;
        drop(replica);
        info!("replica {} stopped cleanly", layout.self_id());
        ExitCode::SUCCESS
    }
    .instrument(span)
    .await
}
