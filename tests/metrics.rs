//! `GET /metrics` as an operator uses it: a 5-replica cluster with one replica down, a conflict
//! and a refused write; the exposition passes `promtool check metrics`, shows what happened, and
//! a real Prometheus server scrapes the five replicas and answers a PromQL query on the outbox
//! depth. `promtool` and `prometheus` come from Debian's `prometheus` package; without them
//! those steps are skipped with a message, unless VKV_REQUIRE_PROMETHEUS=1 (CI sets it).

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vkv::client::ClientError;
use vkv::clock::VectorClock;
use vkv_testkit::{free_ports, LocalCluster, Stop};

const SERVER: &str = env!("CARGO_BIN_EXE_vkv-server");

/// True if `tool` is on the PATH; if it is not, false — or a failure when CI requires it.
fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("VKV_REQUIRE_PROMETHEUS").is_err(),
            "{tool} is not installed and VKV_REQUIRE_PROMETHEUS is set (apt-get install prometheus)"
        );
        eprintln!("SKIP: {tool} is not installed (apt-get install prometheus); that part of the test is skipped");
    }
    found
}

async fn scrape(address: &str) -> String {
    let response = reqwest::get(format!("http://{address}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.unwrap()
}

/// The value of the sample `series` (name with its labels, exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `probe` every 200 ms until it returns `Some`, for at most `limit`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Prometheus server this test started; killed (by PID) and reaped on drop.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_cluster_and_a_real_prometheus_scrapes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::new(SERVER, free_ports(5).unwrap(), dir.path());
    cluster.start_all().unwrap();
    cluster.wait_all_healthy(Duration::from_secs(20)).await.unwrap();
    // Every counter exists from the start, at zero (so `increase()` sees the first event).
    let fresh = scrape(&cluster.address(1)).await;
    for series in [
        "vkv_write_conflicts_total",
        "vkv_siblings_created_total{source=\"replication\"}",
        "vkv_merges_total{source=\"anti_entropy\",outcome=\"conflict\"}",
        "vkv_replication_failures_total{peer=\"5\"}",
        "vkv_anti_entropy_repairs_total",
    ] {
        assert_eq!(sample(&fresh, series), Some(0.0), "{series} at start:\n{fresh}");
    }
    cluster.stop(5, Stop::Clean).unwrap();

    // Writes that replica 5 cannot receive: they wait in replica 1's outbox for peer 5.
    let one = cluster.client(1);
    for i in 0..20 {
        one.put(&format!("queued-{i}"), "v", None).await.unwrap();
    }
    // A write whose context missed a version: refused with 409.
    let refused = one.put("queued-0", "stale", Some(VectorClock::zero(5))).await;
    assert!(matches!(refused, Err(ClientError::Conflict { .. })), "{refused:?}");
    // Concurrent writes at replicas 2 and 3: replica 1 keeps both as siblings.
    let (two, three) = (cluster.client(2), cluster.client(3));
    for attempt in 0..5 {
        let key = format!("both-{attempt}");
        let (a, b) = tokio::join!(two.put(&key, "from-2", None), three.put(&key, "from-3", None));
        if a.unwrap().clock.compare(&b.unwrap().clock) == vkv::clock::Causality::Concurrent {
            break;
        }
    }

    let address = cluster.address(1);
    let text = eventually("replica 1 to count a sibling created by replication", Duration::from_secs(20), || {
        let address = address.clone();
        async move {
            let text = scrape(&address).await;
            (sample(&text, "vkv_siblings_created_total{source=\"replication\"}")? >= 1.0).then_some(text)
        }
    })
    .await;
    assert!(sample(&text, "vkv_outbox_depth{peer=\"5\"}").unwrap() >= 20.0, "{text}");
    assert_eq!(sample(&text, "vkv_outbox_depth{peer=\"2\"}"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "vkv_peer_up{peer=\"5\"}"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "vkv_peer_up{peer=\"2\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "vkv_write_conflicts_total"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "vkv_recovering"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "vkv_store_healthy"), Some(1.0), "{text}");
    assert!(sample(&text, "vkv_keys").unwrap() >= 21.0, "{text}");
    assert!(sample(&text, "vkv_commit_duration_seconds_count").unwrap() >= 20.0, "{text}");
    let puts = "vkv_http_requests_total{route=\"/kv/{key}\",method=\"PUT\",status=\"200\"}";
    assert!(sample(&text, puts).unwrap() >= 20.0, "{text}");
    let conflicts = "vkv_http_requests_total{route=\"/kv/{key}\",method=\"PUT\",status=\"409\"}";
    assert_eq!(sample(&text, conflicts), Some(1.0), "{text}");
    assert!(text.contains("vkv_merges_total{source=\"replication\",outcome=\"conflict\"}"), "{text}");
    assert!(text.contains("# HELP vkv_outbox_depth "), "{text}");
    // Keys never become label values: the route is the template.
    assert!(!text.contains("queued-"), "{text}");

    if have("promtool") {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    if !have("prometheus") {
        return;
    }
    let port = free_ports(1).unwrap()[0];
    let targets: Vec<String> = (1..=5).map(|id| format!("'{}'", cluster.address(id))).collect();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: vkv\n    \
             static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let api = format!("http://127.0.0.1:{port}/api/v1/query");
    let http = reqwest::Client::new();
    let query = |q: &str| {
        let (http, api, q) = (http.clone(), api.clone(), q.to_string());
        async move {
            let response = http.get(&api).query(&[("query", q)]).send().await.ok()?;
            let body: serde_json::Value = response.json().await.ok()?;
            (body["status"] == "success").then_some(body["data"]["result"].clone())
        }
    };
    // The outbox depth toward the stopped replica, as Prometheus scraped it from replica 1.
    let depth_query = format!("vkv_outbox_depth{{job=\"vkv\",instance=\"{address}\",peer=\"5\"}}");
    let depth = eventually("Prometheus to answer the outbox-depth query", Duration::from_secs(60), || async {
        let result = query(&depth_query).await?;
        result[0]["value"][1].as_str()?.parse::<f64>().ok().filter(|d| *d > 0.0)
    })
    .await;
    assert!(depth >= 20.0, "Prometheus saw an outbox depth of {depth} toward replica 5");
    // Prometheus sees four replicas up and the stopped one down (a scrape can time out on this
    // loaded 2-core box, so the query is repeated until a round has all four answering).
    let down = eventually("Prometheus to see replicas 1-4 up and 5 down", Duration::from_secs(30), || async {
        let result = query("up{job=\"vkv\"} == 0").await?;
        let up = query("count(up{job=\"vkv\"} == 1)").await?;
        let four = up[0]["value"][1].as_str()? == "4";
        (four && result.as_array()?.len() == 1).then(|| result[0]["metric"]["instance"].as_str().map(str::to_string))
    })
    .await;
    assert_eq!(down, Some(cluster.address(5)));
}
