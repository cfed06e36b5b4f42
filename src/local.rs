//! A cluster of real `vkv-server` processes on loopback, for the driver and the end-to-end tests.
//!
//! Each replica gets its own data dir and log file under one root directory. Replicas can be
//! stopped cleanly (SIGTERM), crashed (SIGKILL) and started again on the same data dir. Dropping
//! the [`LocalCluster`] kills every replica it started, so a failing test leaves nothing behind.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::client::Client;

/// How a replica is taken offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: the replica finishes in-flight requests and closes its store.
    Clean,
    /// SIGKILL: the process dies at once, as in a crash or power loss.
    Crash,
}

/// One replica process slot (id = index + 1).
struct Slot {
    port: u16,
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

/// Finds `n` free loopback ports, returned in ascending order (so index i is replica id i + 1).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    let mut ports: Vec<u16> =
        listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<std::io::Result<_>>()?;
    ports.sort_unstable();
    Ok(ports)
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
        let slots = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| Slot {
                port,
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

    /// `127.0.0.1:port` of replica `id` (1-based).
    pub fn address(&self, id: usize) -> String {
        format!("127.0.0.1:{}", self.slots[id - 1].port)
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
    pub fn layout(&self, id: usize) -> crate::cluster::Layout {
        let me = self.slots[id - 1].port;
        let peers: Vec<u16> = self.slots.iter().map(|s| s.port).filter(|&p| p != me).collect();
        let hosts = vec!["127.0.0.1".to_string(); peers.len()];
        crate::cluster::Layout::from_flags("127.0.0.1", me, self.slots.len(), &hosts, &peers)
            .expect("a local cluster's layout is valid")
    }

    /// The data dir of replica `id`.
    pub fn data_dir(&self, id: usize) -> &Path {
        &self.slots[id - 1].data_dir
    }

    /// The command line that starts replica `id`.
    pub fn command(&self, id: usize) -> Command {
        let me = &self.slots[id - 1];
        let peers: Vec<&Slot> = self.slots.iter().filter(|s| s.port != me.port).collect();
        let hosts = vec!["127.0.0.1"; peers.len()].join(",");
        let ports: Vec<String> = peers.iter().map(|s| s.port.to_string()).collect();
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--host").arg("127.0.0.1").arg("--port").arg(me.port.to_string());
        cmd.arg("-N").arg(self.slots.len().to_string());
        if !peers.is_empty() {
            cmd.arg("--hosts").arg(hosts).arg("--ports").arg(ports.join(","));
        }
        cmd.arg("--data-dir").arg(&me.data_dir);
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

    /// True while replica `id`'s process is alive.
    pub fn is_running(&mut self, id: usize) -> bool {
        match self.slots[id - 1].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The OS process id of replica `id`, if running.
    pub fn pid(&self, id: usize) -> Option<u32> {
        self.slots[id - 1].child.as_ref().map(Child::id)
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
        let expected: Vec<String> = self.slots.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
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
                        "port {} answers as replica {} of {members:?}, not this cluster's replica {id}",
                        self.slots[id - 1].port,
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
    fn drop(&mut self) {
        self.kill_all();
    }
}
