//! `vkv-testkit`: a cluster of real `vkv-server` processes on loopback, for the driver, the
//! report and the end-to-end tests — kept out of the product crate.
//!
//! Size: one type, `LocalCluster`, and the verbs the driver and the tests use on it.
//!
//! Each replica gets its own data dir and log file under one root directory. Replicas can be
//! stopped cleanly (SIGTERM), crashed (SIGKILL) and started again on the same data dir. Dropping
//! the [`LocalCluster`] kills every replica it started, so a failing test leaves nothing behind.

use std::fs::OpenOptions;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use vkv::client::Client;

/// How a replica is taken offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: the replica finishes in-flight requests and closes its store.
    Clean,
    /// SIGKILL: the process dies at once, as in a crash or power loss.
    Crash,
}

/// Where one replica of a [`LocalCluster`] lives: its address as the peers know it, and
/// optionally a different address to listen on and the local address its peer connections leave
/// from (`vkv-server --listen`, `--peer-source`).
#[derive(Debug, Clone)]
pub struct LocalMember {
    /// Host the peers and clients use (`--host`).
    pub host: String,
    /// Port the peers and clients use (`--port`).
    pub port: u16,
    /// Where the process listens, if not `host:port` (`--listen`).
    pub listen: Option<SocketAddr>,
    /// The address its peer connections leave from (`--peer-source`).
    pub peer_source: Option<IpAddr>,
}

impl LocalMember {
    /// A replica on 127.0.0.1 at `port`, listening there itself.
    pub fn loopback(port: u16) -> Self {
        LocalMember { host: "127.0.0.1".into(), port, listen: None, peer_source: None }
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One replica process slot (id = index + 1).
struct Slot {
    member: LocalMember,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A local cluster of `vkv-server` processes.
pub struct LocalCluster {
    binary: PathBuf,
    key_file: PathBuf,
    slots: Vec<Slot>,
    extra_args: Vec<String>,
}

/// Polls `client`'s replica until it answers `/health` with 200, for at most `timeout`; true
/// once it did. For replicas this crate did not start (containers, say).
pub async fn wait_healthy(client: &Client, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if client.healthy().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Finds `n` free loopback ports, returned in ascending order (so index i is replica id i + 1).
///
/// A port is free when found, not when used: the kernel may hand the same ephemeral port to a
/// later call before the first caller's server binds it. So within one process (the tests of
/// one test binary run in parallel) no port is handed out twice.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Held open until all `n` are found, so one call never gets the same port twice either.
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..(n + 1000) {
        if ports.len() == n {
            break;
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if !handed_out.contains(&port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    if ports.len() < n {
        return Err(std::io::Error::other(format!("found only {} of {n} unused loopback ports", ports.len())));
    }
    handed_out.extend(&ports);
    ports.sort_unstable();
    Ok(ports)
}

/// The `vkv-server` binary next to the running executable (a driver, the report, a test
/// helper in `target/<profile>/`). When run through cargo (`CARGO` is set), builds it first with
/// the same profile, so it is never stale: `cargo run -p <other package>` alone does not build it.
pub fn server_binary() -> Result<PathBuf, String> {
    built_binary("vkv", &["vkv-server", "vkv"], "vkv-server").map_err(|e| format!("{e} or pass --server-bin"))
}

/// The binary `name` next to the running executable, built first (with `bins`, all of
/// `package`, in the running executable's profile) when run through cargo.
pub fn built_binary(package: &str, bins: &[&str], name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate myself: {e}"))?;
    let dir = exe.parent().ok_or("the executable has no parent directory")?;
    let binary = dir.join(name);
    let release = dir.file_name().is_some_and(|d| d == "release");
    if let Ok(cargo) = std::env::var("CARGO") {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package]);
        for bin in bins {
            cmd.args(["--bin", bin]);
        }
        cmd.arg("--manifest-path").arg(&manifest);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("building {name} failed"));
        }
    }
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!(
            "no {name} at {}; build it with `cargo build{} -p {package} --bin {name}`",
            binary.display(),
            if release { " --release" } else { "" }
        ))
    }
}

impl LocalCluster {
    /// Prepares (does not start) a cluster of replicas on 127.0.0.1 at `ports` (ascending), with
    /// data dirs and logs under `root`.
    pub fn new(binary: impl Into<PathBuf>, ports: Vec<u16>, root: &Path) -> Self {
        Self::with_log_dir(binary, ports, root, root)
    }

    /// Like [`LocalCluster::new`], with the replicas' logs in `log_dir` instead of `root`.
    /// Every replica gets `--cluster-key-file` with a random key written under `root`.
    pub fn with_log_dir(binary: impl Into<PathBuf>, ports: Vec<u16>, root: &Path, log_dir: &Path) -> Self {
        Self::with_members(binary, ports.into_iter().map(LocalMember::loopback).collect(), root, log_dir)
    }

    /// A cluster of the given members, in cluster order (sorted by host text, then port, as
    /// every replica orders them): replica `id` is `members[id - 1]`. Data dirs go under
    /// `root`, logs under `log_dir`.
    pub fn with_members(binary: impl Into<PathBuf>, members: Vec<LocalMember>, root: &Path, log_dir: &Path) -> Self {
        let slots = members
            .into_iter()
            .enumerate()
            .map(|(i, member)| Slot {
                member,
                data_dir: root.join(format!("replica-{}", i + 1)),
                log: log_dir.join(format!("replica-{}.log", i + 1)),
                child: None,
            })
            .collect();
        LocalCluster { binary: binary.into(), key_file: root.join("cluster.key"), slots, extra_args: Vec::new() }
    }

    /// Extra flags passed to every replica.
    pub fn with_args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.extra_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Number of replicas.
    pub fn n(&self) -> usize {
        self.slots.len()
    }

    /// `host:port` of replica `id` (1-based), as its peers and clients know it.
    pub fn address(&self, id: usize) -> String {
        self.slots[id - 1].member.address()
    }

    /// A client for replica `id`.
    pub fn client(&self, id: usize) -> Client {
        Client::new(&self.address(id)).expect("a loopback address is valid")
    }

    /// The log file of replica `id`.
    pub fn log_path(&self, id: usize) -> &Path {
        &self.slots[id - 1].log
    }

    /// The cluster layout as replica `id` sees it (to open its store while it is stopped).
    pub fn layout(&self, id: usize) -> vkv::cluster::Layout {
        let me = &self.slots[id - 1].member;
        let peers: Vec<&LocalMember> = self.peers_of(id).collect();
        let hosts: Vec<String> = peers.iter().map(|m| m.host.clone()).collect();
        let ports: Vec<u16> = peers.iter().map(|m| m.port).collect();
        vkv::cluster::Layout::from_flags(&me.host, me.port, self.slots.len(), &hosts, &ports)
            .expect("a local cluster's layout is valid")
    }

    fn peers_of(&self, id: usize) -> impl Iterator<Item = &LocalMember> {
        self.slots.iter().enumerate().filter(move |(i, _)| i + 1 != id).map(|(_, s)| &s.member)
    }

    /// The data dir of replica `id`.
    pub fn data_dir(&self, id: usize) -> &Path {
        &self.slots[id - 1].data_dir
    }

    /// The command line that starts replica `id`.
    pub fn command(&self, id: usize) -> Command {
        let slot = &self.slots[id - 1];
        let me = &slot.member;
        let peers: Vec<&LocalMember> = self.peers_of(id).collect();
        let hosts: Vec<&str> = peers.iter().map(|m| m.host.as_str()).collect();
        let ports: Vec<String> = peers.iter().map(|m| m.port.to_string()).collect();
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--host").arg(&me.host).arg("--port").arg(me.port.to_string());
        cmd.arg("-N").arg(self.slots.len().to_string());
        if !peers.is_empty() {
            cmd.arg("--hosts").arg(hosts.join(",")).arg("--ports").arg(ports.join(","));
        }
        if let Some(listen) = me.listen {
            cmd.arg("--listen").arg(listen.to_string());
        }
        if let Some(source) = me.peer_source {
            cmd.arg("--peer-source").arg(source.to_string());
        }
        cmd.arg("--data-dir").arg(&slot.data_dir);
        cmd.arg("--cluster-key-file").arg(&self.key_file);
        cmd.args(&self.extra_args);
        cmd
    }

    /// Starts replica `id` (its log is appended to, so restarts accumulate in one file).
    pub fn start(&mut self, id: usize) -> std::io::Result<()> {
        if self.is_running(id) {
            return Ok(());
        }
        if !self.key_file.exists() {
            if let Some(dir) = self.key_file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let key: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
            std::fs::write(&self.key_file, key)?;
        }
        let mut cmd = self.command(id);
        let slot = &mut self.slots[id - 1];
        let log = OpenOptions::new().create(true).append(true).open(&slot.log)?;
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        slot.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// Starts every replica.
    pub fn start_all(&mut self) -> std::io::Result<()> {
        for id in 1..=self.n() {
            self.start(id)?;
        }
        Ok(())
    }

    /// The process id of replica `id`, while it was started and not stopped here.
    pub fn pid(&self, id: usize) -> Option<u32> {
        self.slots[id - 1].child.as_ref().map(Child::id)
    }

    /// True while replica `id`'s process is alive.
    pub fn is_running(&mut self, id: usize) -> bool {
        match self.slots[id - 1].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Takes replica `id` offline and waits (up to 10 s) for the process to exit.
    pub fn stop(&mut self, id: usize, how: Stop) -> std::io::Result<()> {
        let Some(mut child) = self.slots[id - 1].child.take() else {
            return Ok(());
        };
        let signal = match how {
            Stop::Clean => Signal::SIGTERM,
            Stop::Crash => Signal::SIGKILL,
        };
        let pid = Pid::from_raw(child.id() as i32);
        if matches!(child.try_wait(), Ok(None)) {
            kill(pid, signal).map_err(std::io::Error::from)?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                return Err(std::io::Error::other(format!("replica {id} ignored {signal}; killed it")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes replica `id` (SIGSTOP): the process holds its sockets but answers nothing, like a
    /// hung or overloaded machine. [`LocalCluster::resume`] thaws it.
    pub fn pause(&mut self, id: usize) -> std::io::Result<()> {
        self.signal(id, Signal::SIGSTOP)
    }

    /// Thaws a replica frozen by [`LocalCluster::pause`] (SIGCONT).
    pub fn resume(&mut self, id: usize) -> std::io::Result<()> {
        self.signal(id, Signal::SIGCONT)
    }

    fn signal(&mut self, id: usize, signal: Signal) -> std::io::Result<()> {
        match self.slots[id - 1].child.as_ref() {
            Some(child) => kill(Pid::from_raw(child.id() as i32), signal).map_err(std::io::Error::from),
            None => Err(std::io::Error::other(format!("replica {id} is not running"))),
        }
    }

    /// Waits until replica `id` answers `/health`, or fails after `timeout` (or if it exited).
    pub async fn wait_healthy(&mut self, id: usize, timeout: Duration) -> Result<(), String> {
        let client = self.client(id);
        let deadline = Instant::now() + timeout;
        let expected: Vec<String> = self.slots.iter().map(|s| s.member.address()).collect();
        loop {
            if !self.is_running(id) {
                return Err(format!("replica {id} exited during startup; see {}", self.log_path(id).display()));
            }
            if client.healthy().await {
                // Make sure the answer comes from our replica, not another process on that port.
                let status = client.status().await.map_err(|e| format!("replica {id}: {e}"))?;
                let members: Vec<String> = status.members.iter().map(|m| m.address()).collect();
                if status.replica as usize != id || members != expected {
                    return Err(format!(
                        "{} answers as replica {} of {members:?}, not this cluster's replica {id}",
                        self.address(id),
                        status.replica
                    ));
                }
                return Ok(());
            }
            if !self.is_running(id) {
                return Err(format!("replica {id} exited during startup; see {}", self.log_path(id).display()));
            }
            if Instant::now() > deadline {
                return Err(format!("replica {id} not healthy after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every running replica is healthy.
    pub async fn wait_all_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        for id in 1..=self.n() {
            if self.slots[id - 1].child.is_some() {
                self.wait_healthy(id, timeout).await?;
            }
        }
        Ok(())
    }

    /// Kills every replica still running (SIGKILL) and reaps it.
    pub fn kill_all(&mut self) {
        for slot in &mut self.slots {
            if let Some(mut child) = slot.child.take() {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for LocalCluster {
    /// Kills every replica; if the test is failing (a panic is unwinding), first prints the last
    /// lines of each replica's log to stderr, so the failure comes with what the replicas saw.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, slot) in self.slots.iter().enumerate() {
                let text = std::fs::read_to_string(&slot.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_ON_FAILURE)..];
                eprintln!("---- replica {} log ({}), last {} lines ----", i + 1, slot.log.display(), tail.len());
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
        self.kill_all();
    }
}

/// Lines of each replica's log printed when a test using a [`LocalCluster`] fails.
pub const LOG_TAIL_ON_FAILURE: usize = 40;
