//! The replica's log as an operator reads it: expected refusals are warnings at most, in the
//! same format as every other line, and `--log-format json` gives one JSON object per line.

use std::time::{Duration, Instant};

use vkv::client::ClientError;
use vkv_testkit::{free_ports, LocalCluster, Stop};

const SERVER: &str = env!("CARGO_BIN_EXE_vkv-server");

/// Polls until `probe` holds, for at most 10 s.
async fn until(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replica 1 of 2 on a new data dir, its peer never started: it stays recovering. Its 503s (a
/// write refused while recovering, a `?w=2` it cannot meet) and the client's mistakes (404, 400)
/// are not logged as errors, and nothing but the replica's own format appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_refusals_are_not_errors_and_every_line_has_one_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::new(SERVER, free_ports(2).unwrap(), dir.path());
    cluster.start(1).unwrap();
    let client = cluster.client(1);
    until("replica 1 to answer", async || client.status().await.is_ok()).await;
    let refused = client.put("k", "v", None).await;
    assert!(matches!(refused, Err(ClientError::Server { status: 503, .. })), "{refused:?}");
    assert!(client.get("absent").await.unwrap().is_none());
    let bad = client.put_quorum("k", "v", None, Some(9)).await;
    assert!(matches!(bad, Err(ClientError::Rejected { status: 400, .. })), "{bad:?}");
    cluster.stop(1, Stop::Clean).unwrap();

    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
    let refusal = log.lines().find(|l| l.contains("request refused (503)")).unwrap_or_else(|| panic!("{log}"));
    assert!(refusal.contains(" WARN "), "{refusal}");
    assert!(!log.contains("ERROR"), "no error was logged for expected answers:\n{log}");
    assert!(!log.contains("response failed"), "the HTTP trace layer does not log in its own format:\n{log}");
    for line in log.lines() {
        assert!(line.contains("replica{id=1}"), "every line carries the replica's span: {line}");
    }
}

/// `--log-format json`: every line parses as one JSON object with a level and a message; a
/// decision line carries the decision and the key as fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_decision_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::new(SERVER, free_ports(1).unwrap(), dir.path()).with_args(["--log-format", "json"]);
    cluster.start(1).unwrap();
    cluster.wait_healthy(1, Duration::from_secs(10)).await.unwrap();
    cluster.client(1).put("a \"key\"\n", "v", None).await.unwrap();
    cluster.stop(1, Stop::Clean).unwrap();

    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        assert!(line["level"].is_string() && line["message"].is_string() && line["timestamp"].is_string(), "{line}");
        assert_eq!(line["spans"][0]["name"], "replica", "{line}");
        assert_eq!(line["spans"][0]["id"], 1, "{line}");
    }
    let write = lines.iter().find(|l| l["decision"] == "write").unwrap_or_else(|| panic!("{log}"));
    assert_eq!(write["key"], r#""a \"key\"\n""#, "the key field is the escaped key: {write}");
    assert_eq!(write["level"], "INFO");
}

/// A flag value that is not a format is refused before anything starts (exit 2).
#[test]
fn an_unknown_log_format_is_a_usage_error() {
    let out = std::process::Command::new(SERVER)
        .args(["--port", "1", "-N", "1", "--insecure", "--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-format"));
}
