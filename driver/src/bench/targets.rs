//! The systems under load, each started on loopback by the bench and killed (by the PID it
//! started) when dropped: the plain-axum ceiling, a 5-replica vkv cluster, a 5-member etcd.
//! For each, how a PUT and a GET of key number `i` look on the wire.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use super::load::request;

/// Which system a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ceiling,
    Vkv,
    Etcd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ceiling => "ceiling",
            Kind::Vkv => "vkv",
            Kind::Etcd => "etcd",
        }
    }

    /// PUT of `key` := `value`.
    pub fn put(self, addr: SocketAddr, key: &str, value: &str) -> Request<Full<Bytes>> {
        match self {
            Kind::Ceiling | Kind::Vkv => {
                request("PUT", addr, &format!("/kv/{key}"), Some(serde_json::json!({ "value": value }).to_string()))
            }
            Kind::Etcd => request(
                "POST",
                addr,
                "/v3/kv/put",
                Some(serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)}).to_string()),
            ),
        }
    }

    /// GET of `key` (etcd: a linearizable range read, its default).
    pub fn get(self, addr: SocketAddr, key: &str) -> Request<Full<Bytes>> {
        match self {
            Kind::Ceiling | Kind::Vkv => request("GET", addr, &format!("/kv/{key}"), None),
            Kind::Etcd => {
                request("POST", addr, "/v3/kv/range", Some(serde_json::json!({"key": B64.encode(key)}).to_string()))
            }
        }
    }
}

/// Child processes killed (SIGKILL, by PID) and reaped on drop.
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, String> {
    std::fs::File::create(dir.join(name)).map_err(|e| format!("cannot create a log in {}: {e}", dir.display()))
}

/// Waits until `GET url` answers 200 (and, if given, the body contains `needle`).
pub async fn wait_http(url: &str, needle: Option<&str>, timeout: Duration) -> Result<(), String> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(1)).send().await {
            if r.status().is_success() {
                let body = r.text().await.unwrap_or_default();
                if needle.is_none_or(|n| body.contains(n)) {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{url} not ready after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the plain-axum ceiling server on `port`.
pub async fn start_ceiling(port: u16, logs: &Path) -> Result<(Processes, SocketAddr), String> {
    let binary = vkv_testkit::built_binary("vkv-driver", &["vkv-ceiling"], "vkv-ceiling")?;
    let child = Command::new(binary)
        .args(["--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log_file(logs, "ceiling.log")?)
        .stderr(log_file(logs, "ceiling.err")?)
        .spawn()
        .map_err(|e| format!("cannot start vkv-ceiling: {e}"))?;
    let processes = Processes(vec![child]);
    wait_http(&format!("http://127.0.0.1:{port}/health"), None, Duration::from_secs(10)).await?;
    Ok((processes, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// The `etcd` binary on the PATH, if installed.
pub fn etcd_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("etcd")).find(|p| p.is_file())
}

/// Starts a `members`-member etcd cluster on loopback (data under `root`, fsync on, as shipped).
/// Returns the processes and the client address of each member.
pub async fn start_etcd(
    binary: &Path,
    members: usize,
    root: &Path,
    logs: &Path,
) -> Result<(Processes, Vec<SocketAddr>), String> {
    let ports = vkv_testkit::free_ports(members * 2).map_err(|e| format!("no free ports: {e}"))?;
    let (client_ports, peer_ports) = ports.split_at(members);
    let initial: Vec<String> = (0..members).map(|i| format!("e{}=http://127.0.0.1:{}", i + 1, peer_ports[i])).collect();
    let mut processes = Processes(Vec::new());
    for i in 0..members {
        let client = format!("http://127.0.0.1:{}", client_ports[i]);
        let peer = format!("http://127.0.0.1:{}", peer_ports[i]);
        let child = Command::new(binary)
            .arg("--name")
            .arg(format!("e{}", i + 1))
            .arg("--data-dir")
            .arg(root.join(format!("e{}", i + 1)))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "vkv-bench", "--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log_file(logs, &format!("etcd{}.log", i + 1))?)
            .stderr(log_file(logs, &format!("etcd{}.err", i + 1))?)
            .spawn()
            .map_err(|e| format!("cannot start etcd: {e}"))?;
        processes.0.push(child);
    }
    for port in client_ports {
        wait_http(&format!("http://127.0.0.1:{port}/health"), Some("true"), Duration::from_secs(30)).await?;
    }
    Ok((processes, client_ports.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))).collect()))
}
