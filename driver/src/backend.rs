//! Where the replicas run: local processes, or the docker compose deployment.
//!
//! Both give the scenarios the same verbs: a client per replica, stop (clean or crash), start
//! (waiting until healthy), and each replica's log. Docker adds network partitions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use vkv::client::Client;
use vkv_testkit::{LocalCluster, Stop};

/// Time a (re)started replica has to answer `/health`.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How a stop is described in the story.
pub fn describe(how: Stop) -> &'static str {
    match how {
        Stop::Clean => "SIGTERM, a clean stop",
        Stop::Crash => "SIGKILL, a crash",
    }
}

/// The five (or more) replicas under test.
pub enum Backend {
    /// `vkv-server` processes on 127.0.0.1.
    Local(LocalCluster),
    /// Containers kv1..kvN of the compose project.
    Docker(Docker),
}

/// The docker compose deployment.
pub struct Docker {
    /// `docker compose` (v2 plugin) or `docker-compose` (v1), whichever this machine has.
    program: Vec<String>,
    compose_file: PathBuf,
    n: usize,
    base_port: u16,
}

async fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().await.map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Docker {
    /// The deployment described by `compose_file`, with replica i published on base_port + i - 1.
    pub fn new(compose_file: &Path, n: usize, base_port: u16) -> Self {
        let plugin = std::process::Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
        let program = if plugin { vec!["docker".into(), "compose".into()] } else { vec!["docker-compose".into()] };
        Docker { program, compose_file: compose_file.to_path_buf(), n, base_port }
    }

    fn compose(&self) -> Command {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..]).arg("-f").arg(&self.compose_file);
        cmd
    }

    /// `docker compose <args>`.
    pub async fn compose_run(&self, args: &[&str]) -> Result<String, String> {
        run(self.compose().args(args)).await
    }

    /// Fresh deployment: remove old containers and volumes, build, start all.
    pub async fn up(&self) -> Result<(), String> {
        self.compose_run(&["down", "-v", "--remove-orphans"]).await?;
        self.compose_run(&["up", "-d", "--build"]).await?;
        Ok(())
    }

    async fn container(&self, id: usize) -> Result<String, String> {
        let out = self.compose_run(&["ps", "-a", "-q", &format!("kv{id}")]).await?;
        out.lines().next().map(str::to_string).ok_or_else(|| format!("no container for kv{id}"))
    }

    async fn network(&self, container: &str) -> Result<String, String> {
        let out = run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            container,
        ]))
        .await?;
        out.split_whitespace().next().map(str::to_string).ok_or_else(|| format!("{container} is on no network"))
    }
}

impl Backend {
    /// Number of replicas.
    pub fn n(&self) -> usize {
        match self {
            Backend::Local(c) => c.n(),
            Backend::Docker(d) => d.n,
        }
    }

    /// `host:port` of replica `id` (1-based), as seen from this machine.
    pub fn address(&self, id: usize) -> String {
        match self {
            Backend::Local(c) => c.address(id),
            Backend::Docker(d) => format!("127.0.0.1:{}", d.base_port as usize + id - 1),
        }
    }

    /// A client for replica `id` (1-based).
    pub fn client(&self, id: usize) -> Client {
        Client::new(&self.address(id)).expect("a loopback address is valid")
    }

    /// Waits until replica `id` answers `/health`.
    pub async fn wait_healthy(&mut self, id: usize) -> Result<(), String> {
        match self {
            Backend::Local(c) => c.wait_healthy(id, START_TIMEOUT).await,
            Backend::Docker(_) => match vkv_testkit::wait_healthy(&self.client(id), START_TIMEOUT).await {
                true => Ok(()),
                false => Err(format!("kv{id} not healthy after {START_TIMEOUT:?}")),
            },
        }
    }

    /// Starts every replica and waits until all are healthy.
    pub async fn start_all(&mut self) -> Result<(), String> {
        if let Backend::Local(c) = self {
            c.start_all().map_err(|e| format!("cannot start replicas: {e}"))?;
        } else if let Backend::Docker(d) = self {
            d.up().await?;
        }
        for id in 1..=self.n() {
            self.wait_healthy(id).await?;
        }
        Ok(())
    }

    /// Starts replica `id` again (same data) and waits until it is healthy.
    pub async fn start(&mut self, id: usize) -> Result<(), String> {
        match self {
            Backend::Local(c) => c.start(id).map_err(|e| format!("cannot start replica {id}: {e}"))?,
            Backend::Docker(d) => {
                d.compose_run(&["start", &format!("kv{id}")]).await?;
            }
        }
        self.wait_healthy(id).await
    }

    /// Takes replica `id` offline: SIGTERM (clean) or SIGKILL (crash).
    pub async fn stop(&mut self, id: usize, how: Stop) -> Result<(), String> {
        match self {
            // LocalCluster::stop waits for the process to exit (up to 10 s) on this thread: tell
            // the runtime, so the other tasks move to another worker meanwhile.
            Backend::Local(c) => {
                tokio::task::block_in_place(|| c.stop(id, how)).map_err(|e| format!("cannot stop replica {id}: {e}"))
            }
            Backend::Docker(d) => {
                let service = format!("kv{id}");
                match how {
                    Stop::Clean => d.compose_run(&["stop", "-t", "10", &service]).await.map(drop),
                    Stop::Crash => d.compose_run(&["kill", "-s", "SIGKILL", &service]).await.map(drop),
                }
            }
        }
    }

    /// Freezes replica `id` (SIGSTOP, or `docker compose pause`).
    pub async fn pause(&mut self, id: usize) -> Result<(), String> {
        match self {
            Backend::Local(c) => c.pause(id).map_err(|e| format!("cannot pause replica {id}: {e}")),
            Backend::Docker(d) => d.compose_run(&["pause", &format!("kv{id}")]).await.map(drop),
        }
    }

    /// Thaws a paused replica (SIGCONT, or `docker compose unpause`).
    pub async fn resume(&mut self, id: usize) -> Result<(), String> {
        match self {
            Backend::Local(c) => c.resume(id).map_err(|e| format!("cannot resume replica {id}: {e}")),
            Backend::Docker(d) => d.compose_run(&["unpause", &format!("kv{id}")]).await.map(drop),
        }
    }

    /// Replica `id`'s log so far.
    pub async fn log_text(&self, id: usize) -> String {
        match self {
            Backend::Local(c) => std::fs::read_to_string(c.log_path(id)).unwrap_or_default(),
            Backend::Docker(d) => d
                .compose_run(&["logs", "--no-color", "--no-log-prefix", &format!("kv{id}")])
                .await
                // docker-compose 1.x adds its own "Attaching to …" line: not the replica's.
                .map(|text| {
                    text.lines().filter(|l| !l.starts_with("Attaching to ")).map(|l| format!("{l}\n")).collect()
                })
                .unwrap_or_else(|e| format!("(cannot read logs: {e})")),
        }
    }

    /// Cuts replica `id` off the network (docker only).
    pub async fn partition(&self, id: usize) -> Result<(), String> {
        let Backend::Docker(d) = self else {
            return Err("partitions need --docker".into());
        };
        let container = d.container(id).await?;
        let network = d.network(&container).await?;
        run(Command::new("docker").args(["network", "disconnect", &network, &container])).await.map(drop)
    }

    /// Reconnects replica `id`, with its service name as alias (docker only).
    pub async fn heal(&self, id: usize, network: &str) -> Result<(), String> {
        let Backend::Docker(d) = self else {
            return Err("partitions need --docker".into());
        };
        let container = d.container(id).await?;
        let alias = format!("kv{id}");
        run(Command::new("docker").args(["network", "connect", "--alias", &alias, network, &container])).await.map(drop)
    }

    /// The network replica `id` is on (docker only).
    pub async fn network_of(&self, id: usize) -> Result<String, String> {
        let Backend::Docker(d) = self else {
            return Err("networks need --docker".into());
        };
        d.network(&d.container(id).await?).await
    }

    /// Runs the `vkv` client inside replica `id`'s container, against itself (docker only):
    /// reaches a replica that is cut off from the host's network.
    pub async fn exec_cli(&self, id: usize, args: &[&str]) -> Result<String, String> {
        let Backend::Docker(d) = self else {
            return Err("exec needs --docker".into());
        };
        let container = d.container(id).await?;
        let mut cmd = Command::new("docker");
        cmd.args(["exec", &container, "/usr/local/bin/vkv", "--server", "127.0.0.1:7000"]).args(args);
        run(&mut cmd).await
    }

    /// Stops everything this run started.
    pub async fn shutdown(&mut self) {
        match self {
            Backend::Local(c) => c.kill_all(),
            Backend::Docker(d) => {
                let _ = d.compose_run(&["unpause"]).await; // a paused container would not stop
                let _ = d.compose_run(&["stop", "-t", "5"]).await;
            }
        }
    }
}
