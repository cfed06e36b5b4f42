//! The HTTP handlers through `oneshot`: no socket, a real redb store in a temp dir.
//! Replica 1 of a 3-member cluster; senders are not started, so nothing leaves the process.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use vkv::api::app;
use vkv::auth::{ClusterKey, PeerAuth, AUTH_HEADER, CLUSTER_HEADER, SIGNATURE_HEADER};
use vkv::cluster::Layout;
use vkv::replica::{Config, Replica};

struct Fixture {
    replica: Arc<Replica>,
    _dir: tempfile::TempDir,
}

const KEY: &str = "test-cluster-key-0123456789";

fn fixture_with_limit(max_value_bytes: usize) -> Fixture {
    fixture_with(max_value_bytes, Some(ClusterKey::new(KEY).unwrap()))
}

fn fixture_with(max_value_bytes: usize, cluster_key: Option<ClusterKey>) -> Fixture {
    fixture_opts(max_value_bytes, cluster_key, true)
}

/// Replica 1 of 3; `skip_recovery: false` leaves it recovering (its peers never answer).
fn fixture_opts(max_value_bytes: usize, cluster_key: Option<ClusterKey>, skip_recovery: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // Privileged ports nobody listens on; this replica is 127.0.0.1:1 = replica 1.
    let layout = Layout::from_flags("127.0.0.1", 1, 3, &["127.0.0.1".into(), "127.0.0.1".into()], &[2, 3]).unwrap();
    let replica = Replica::open(Config {
        layout,
        data_dir: dir.path().join("data"),
        max_value_bytes,
        cluster_key,
        anti_entropy: None,
        skip_recovery,
        peer_source: None,
        compact_after: None,
    })
    .unwrap();
    Fixture { replica, _dir: dir }
}

fn fixture() -> Fixture {
    fixture_with_limit(1024)
}

impl Fixture {
    /// Calls the app; peer routes are signed with the cluster key by the replica the body's
    /// `from` names (2 if none), as a peer would.
    async fn call(&self, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
        let peer_route = uri == "/replicate" || uri.starts_with("/peer/");
        let headers = if peer_route { self.peer_headers(uri, body.unwrap_or(""), Some(KEY)) } else { Vec::new() };
        self.call_with(method, uri, body, headers).await
    }

    /// The headers replica `from` (the body's, or 2) of this cluster sends with `body` to `path`,
    /// signed with `key` (`None`: an insecure cluster's).
    fn peer_headers(&self, path: &str, body: &str, key: Option<&str>) -> Vec<(&'static str, String)> {
        let from = serde_json::from_str::<Value>(body).ok().and_then(|v| v["from"].as_u64()).unwrap_or(2) as u32;
        let key = key.map(|k| ClusterKey::new(k).unwrap());
        PeerAuth::with_parts(from, self.replica.cluster_id(), key).headers(path, body.as_bytes())
    }

    async fn call_with(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
        headers: Vec<(&'static str, String)>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.header("content-length", body.len());
        }
        let request = request
            .header("content-type", "application/json")
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
            .unwrap();
        let response = app(self.replica.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{method} {uri}: body is not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes))
            })
        };
        (status, value)
    }

    async fn put(&self, key: &str, body: Value) -> (StatusCode, Value) {
        self.call("PUT", &format!("/kv/{key}"), Some(&body.to_string())).await
    }

    async fn get(&self, key: &str) -> (StatusCode, Value) {
        self.call("GET", &format!("/kv/{key}"), None).await
    }

    /// Asserts `status` and an `{"error": "..."}` body mentioning `needle`.
    async fn expect_error(&self, method: &str, uri: &str, body: Option<&str>, status: StatusCode, needle: &str) {
        let (got, value) = self.call(method, uri, body).await;
        assert_eq!(got, status, "{method} {uri} {body:?} → {value}");
        let error = value["error"].as_str().unwrap_or_else(|| panic!("no error field: {value}"));
        assert!(error.contains(needle), "error {error:?} should mention {needle:?}");
    }
}

#[tokio::test]
async fn put_then_get_returns_value_clock_and_context() {
    let f = fixture();
    let (status, body) = f.put("cart", json!({"value": "milk"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"key": "cart", "clock": [1, 0, 0], "replica": 1}));
    let (status, body) = f.put("cart", json!({"value": "milk,eggs"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["clock"], json!([2, 0, 0]));
    let (status, body) = f.get("cart").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"key": "cart", "versions": [{"value": "milk,eggs", "clock": [2, 0, 0]}], "context": [2, 0, 0]})
    );
}

#[tokio::test]
async fn write_clock_joins_the_context() {
    let f = fixture();
    let (_, body) = f.put("k", json!({"value": "a", "context": [0, 4, 2]})).await;
    assert_eq!(body["clock"], json!([1, 4, 2]));
}

#[tokio::test]
async fn a_context_cannot_run_ahead_of_this_replica() {
    let f = fixture();
    // This replica (position 0) has issued counter 1 for the key; a context claiming 2 is forged.
    f.put("k", json!({"value": "a"})).await;
    let (status, body) = f.put("k", json!({"value": "b", "context": [2, 0, 0]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("ahead of this replica"));
    let (status, body) = f.put("k", json!({"value": "b", "context": [1, 7, 0]})).await;
    assert_eq!(
        (status, &body["clock"]),
        (StatusCode::OK, &json!([2, 7, 0])),
        "other positions are the peers' to judge"
    );
    assert_eq!(f.get("k").await.1["versions"][0]["value"], "b");
}

#[tokio::test]
async fn peer_values_are_not_held_to_this_replicas_client_limit() {
    // The coordinator accepted the value under its own limit; refusing it here would wedge
    // replication to this replica forever.
    let f = fixture_with_limit(16);
    let big = "x".repeat(2000);
    let body = batch(2, json!([{"key": "big", "versions": [{"value": big, "clock": [0, 1, 0]}]}]));
    let (status, resp) = f.call("POST", "/replicate", Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(f.get("big").await.1["versions"][0]["value"].as_str().unwrap().len(), 2000);
}

#[tokio::test]
async fn dot_keys_are_refused() {
    let f = fixture();
    f.expect_error("PUT", "/kv/..", Some(r#"{"value": "v"}"#), StatusCode::BAD_REQUEST, "path step").await;
    f.expect_error("GET", "/kv/.", None, StatusCode::BAD_REQUEST, "path step").await;
}

#[tokio::test]
async fn a_value_at_the_limit_fits_even_fully_escaped() {
    let f = fixture_with_limit(1000);
    let escaped = format!("{{\"value\": \"{}\"}}", "\\u0001".repeat(1000));
    let (status, body) = f.call("PUT", "/kv/esc", Some(&escaped)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn replace(headers: &[(&'static str, String)], name: &'static str, value: &str) -> Vec<(&'static str, String)> {
    let mut out: Vec<_> = headers.iter().filter(|(k, _)| *k != name).cloned().collect();
    out.push((name, value.to_string()));
    out
}

/// Peer routes need the cluster's signature over the head and the body: none, a wrong one, one
/// from another key, or a body other than the one signed → 401, nothing applied. Client routes
/// stay open.
#[tokio::test]
async fn peer_routes_require_the_cluster_signature() {
    let f = fixture();
    let body = batch(2, json!([{"key": "k", "versions": [{"value": "v", "clock": [0, 1, 0]}]}]));
    let signed = f.peer_headers("/replicate", &body, Some(KEY));
    let other_body = body.replace("\"v\"", "\"w\"");
    let for_other_body = f.peer_headers("/replicate", &other_body, Some(KEY));
    let body_sig = &for_other_body.iter().find(|(k, _)| *k == SIGNATURE_HEADER).unwrap().1;
    for (headers, needle) in [
        (Vec::new(), "x-vkv-from"),
        (f.peer_headers("/replicate", &body, None), "signed with the cluster key"),
        (f.peer_headers("/replicate", &body, Some("some-other-cluster-key")), "bad peer signature"),
        (replace(&signed, AUTH_HEADER, "zz"), "bad peer signature"),
        (replace(&signed, SIGNATURE_HEADER, body_sig), "body signature"),
        (f.peer_headers("/peer/hello", &body, Some(KEY)), "bad peer signature"),
    ] {
        let (status, resp) = f.call_with("POST", "/replicate", Some(&body), headers.clone()).await;
        let expected = if needle == "x-vkv-from" { StatusCode::BAD_REQUEST } else { StatusCode::UNAUTHORIZED };
        assert_eq!(status, expected, "{headers:?}: {resp}");
        assert!(resp["error"].as_str().unwrap().contains(needle), "{needle}: {resp}");
    }
    for (route, body) in [
        ("/peer/hello", r#"{"from": 2}"#),
        ("/peer/digest", r#"{"from": 2, "ranges": 64}"#),
        ("/peer/entries", r#"{"from": 2, "of": 64, "ranges": [0, 1], "limit": 10}"#),
        ("/peer/read", r#"{"from": 2, "key": "k"}"#),
    ] {
        let unsigned = f.peer_headers(route, body, None);
        let (status, resp) = f.call_with("POST", route, Some(body), unsigned).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{route}: {resp}");
        let (status, resp) = f.call("POST", route, Some(body)).await;
        assert!(status.is_success(), "{route} signed: {status} {resp}");
    }
    f.expect_error("GET", "/kv/k", None, StatusCode::NOT_FOUND, "not found").await;
    let (status, _) = f.call("POST", "/replicate", Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "correctly signed");
}

/// The signed sender id must be the body's, and a head signed long ago is refused.
#[tokio::test]
async fn peer_heads_bind_the_sender_and_the_time() {
    let f = fixture();
    let body = batch(2, json!([{"key": "k", "versions": [{"value": "v", "clock": [0, 1, 0]}]}]));
    let as_three = PeerAuth::with_parts(3, f.replica.cluster_id(), Some(ClusterKey::new(KEY).unwrap()))
        .headers("/replicate", body.as_bytes());
    let (status, resp) = f.call_with("POST", "/replicate", Some(&body), as_three).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(resp["error"].as_str().unwrap().contains("header says 3"), "{resp}");
    let old = PeerAuth::with_parts(2, f.replica.cluster_id(), Some(ClusterKey::new(KEY).unwrap())).headers_at(
        "/replicate",
        body.as_bytes(),
        1_000_000,
        "00",
    );
    let (status, resp) = f.call_with("POST", "/replicate", Some(&body), old).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{resp}");
    assert!(resp["error"].as_str().unwrap().contains("NTP"), "{resp}");
    assert_eq!(f.get("k").await.0, StatusCode::NOT_FOUND, "nothing applied");
}

/// A peer with another member list (another cluster id) is refused with 409, even with the
/// right key, and nothing it sends is applied; `/health` tells the cluster id.
#[tokio::test]
async fn a_peer_of_another_membership_is_refused() {
    let f = fixture();
    let (status, health) = f.call("GET", "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["cluster"].as_str(), Some(f.replica.cluster_id()));
    let body = batch(2, json!([{"key": "k", "versions": [{"value": "v", "clock": [0, 1, 0]}]}]));
    let headers = PeerAuth::with_parts(2, "0123456789abcdef", Some(ClusterKey::new(KEY).unwrap()))
        .headers("/replicate", body.as_bytes());
    assert!(headers.iter().any(|(k, v)| *k == CLUSTER_HEADER && v == "0123456789abcdef"));
    let (status, resp) = f.call_with("POST", "/replicate", Some(&body), headers).await;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    let error = resp["error"].as_str().unwrap();
    assert!(error.contains("MEMBERSHIP MISMATCH") && error.contains(f.replica.cluster_id()), "{resp}");
    assert_eq!(f.get("k").await.0, StatusCode::NOT_FOUND, "nothing applied");
}

/// A version claiming this replica's clock position with a counter it never issued for the key,
/// or reusing one of its clocks with another value, is refused (400, nothing of the batch
/// applied): two members share a position, and merging would drop an acknowledged write.
#[tokio::test]
async fn versions_claiming_counters_this_replica_never_issued_are_refused() {
    let f = fixture();
    let (status, _) = f.put("mine", json!({"value": "ours"})).await; // [1, 0, 0]
    assert_eq!(status, StatusCode::OK);
    let other = json!({"key": "other", "versions": [{"value": "v", "clock": [0, 1, 0]}]});
    for (entry, needle) in [
        (json!({"key": "mine", "versions": [{"value": "theirs", "clock": [1, 0, 0]}]}), "issued twice"),
        (json!({"key": "mine", "versions": [{"value": "theirs", "clock": [2, 0, 0]}]}), "issued at most 1"),
        (json!({"key": "new", "versions": [{"value": "theirs", "clock": [1, 0, 0]}]}), "issued at most 0"),
    ] {
        let body = batch(2, json!([other.clone(), entry]));
        let (status, resp) = f.call("POST", "/replicate", Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
        assert!(resp["error"].as_str().unwrap().contains(needle), "{needle}: {resp}");
        assert_eq!(f.get("other").await.0, StatusCode::NOT_FOUND, "nothing of the batch applied");
    }
    let (_, read) = f.get("mine").await;
    assert_eq!(read["versions"], json!([{"value": "ours", "clock": [1, 0, 0]}]));
    let body = batch(2, json!([{"key": "mine", "versions": [{"value": "ours", "clock": [1, 0, 0]}]}]));
    assert_eq!(f.call("POST", "/replicate", Some(&body)).await.0, StatusCode::OK, "a duplicate is fine");
}

/// An unsigned peer request is refused before its body is read: even a body over the size limit
/// gets 401, not 413.
#[tokio::test]
async fn unsigned_peer_requests_are_refused_before_the_body_is_read() {
    let f = fixture();
    let huge = "x".repeat(vkv::protocol::MAX_REPLICATE_BODY_BYTES + 1024);
    let headers = f.peer_headers("/replicate", "", None);
    let (status, body) = f.call_with("POST", "/replicate", Some(&huge), headers).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn an_insecure_replica_accepts_unsigned_peers() {
    let f = fixture_with(1024, None);
    let body = batch(2, json!([{"key": "k", "versions": [{"value": "v", "clock": [0, 1, 0]}]}]));
    let headers = f.peer_headers("/replicate", &body, None);
    let (status, resp) = f.call_with("POST", "/replicate", Some(&body), headers).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

/// A replica on a new data dir whose peers cannot be reached stays in recovery: writes get 503
/// with the reason, reads are served, /health says recovering.
#[tokio::test]
async fn a_recovering_replica_refuses_writes_but_serves_reads() {
    let f = fixture_opts(1024, None, false);
    f.expect_error("PUT", "/kv/k", Some(r#"{"value": "v"}"#), StatusCode::SERVICE_UNAVAILABLE, "still pulling").await;
    f.expect_error("DELETE", "/kv/k", None, StatusCode::SERVICE_UNAVAILABLE, "clock counter").await;
    f.expect_error("GET", "/kv/k", None, StatusCode::NOT_FOUND, "not found").await;
    let (status, body) = f.call("GET", "/health", None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("recovering")));
    // Not ready (keep it out of rotation), but alive (do not restart it): /readyz vs /livez.
    let (status, body) = f.call("GET", "/readyz", None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("recovering")));
    let (status, body) = f.call("GET", "/livez", None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("alive")));
    assert!(f.replica.status().await.unwrap().recovering);
    let (status, _) = f.call("POST", "/peer/read", Some(r#"{"from": 2, "key": "k"}"#)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a recovering replica does not count toward r");
    f.replica.finish_recovery().await.unwrap();
    let (status, _) = f.put("k", json!({"value": "v"})).await;
    assert_eq!(status, StatusCode::OK, "writes are accepted once recovered");
}

/// A key whose counter at this replica's position already sits at the limit (a forged context
/// written elsewhere, pulled back while this replica recovered) cannot be written here: 400,
/// rather than a clock every peer would refuse.
#[tokio::test]
async fn a_write_cannot_mint_a_counter_past_the_limit() {
    let f = fixture_opts(1024, Some(ClusterKey::new(KEY).unwrap()), false);
    let body = batch(2, json!([{"key": "p", "versions": [{"value": "x", "clock": [9007199254740992u64, 1, 0]}]}]));
    let (status, resp) = f.call("POST", "/replicate", Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    f.replica.finish_recovery().await.unwrap();
    f.expect_error("PUT", "/kv/p", Some(r#"{"value": "y"}"#), StatusCode::BAD_REQUEST, "counter limit").await;
}

/// `?w=K` that cannot be met (the peers of this fixture never answer) is a 503 that says the
/// write happened, with its clock; the value is readable here. Bad quorum queries are 400.
#[tokio::test]
async fn an_unmet_write_quorum_says_the_write_is_durable_here() {
    let f = fixture();
    let (status, body) = f.call("PUT", "/kv/k?w=2", Some(r#"{"value": "v"}"#)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["written"], json!(true));
    assert_eq!(body["clock"], json!([1, 0, 0]));
    assert!(body["error"].as_str().unwrap().contains("durable at replica 1 and queued"), "{body}");
    assert_eq!(f.get("k").await.1["versions"][0]["value"], "v");
    let (status, body) = f.call("PUT", "/kv/k?w=1", Some(r#"{"value": "w"}"#)).await;
    assert_eq!((status, &body["acks"]), (StatusCode::OK, &json!(1)));
    for (method, uri) in [("PUT", "/kv/k?w=abc"), ("PUT", "/kv/k?w=4"), ("PUT", "/kv/k?x=1"), ("GET", "/kv/k?r=0")] {
        let (status, body) = f.call(method, uri, Some(r#"{"value": "v"}"#)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {body}");
        assert!(body["error"].is_string());
    }
}

#[tokio::test]
async fn absent_key_is_404_json() {
    let f = fixture();
    f.expect_error("GET", "/kv/nothing", None, StatusCode::NOT_FOUND, "not found").await;
}

#[tokio::test]
async fn keys_are_percent_decoded() {
    let f = fixture();
    let (status, body) = f.put("a%20b%2Fc", json!({"value": "v"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["key"], "a b/c");
    assert_eq!(f.get("a%20b%2Fc").await.1["key"], "a b/c");
    f.expect_error("GET", "/kv/%FF", None, StatusCode::BAD_REQUEST, "bad key").await;
}

#[tokio::test]
async fn bad_client_bodies_are_rejected_and_nothing_is_written() {
    let f = fixture();
    let cases: &[(&str, StatusCode, &str)] = &[
        ("{not json", StatusCode::BAD_REQUEST, "invalid JSON"),
        ("", StatusCode::BAD_REQUEST, "needs a JSON body"),
        ("{}", StatusCode::BAD_REQUEST, "missing field `value`"),
        (r#"{"value": 5}"#, StatusCode::BAD_REQUEST, "expected a string"),
        (r#"{"value": "v", "extra": 1}"#, StatusCode::BAD_REQUEST, "unknown field"),
        (r#"{"value": "v", "context": [1, 2]}"#, StatusCode::BAD_REQUEST, "N = 3"),
        (r#"{"value": "v", "context": [1, -2, 0]}"#, StatusCode::BAD_REQUEST, "invalid JSON"),
        (r#"{"value": "v", "context": [18446744073709551615, 0, 0]}"#, StatusCode::BAD_REQUEST, "above the limit"),
        (r#"{"value": "v", "context": [0, 9007199254740993, 0]}"#, StatusCode::BAD_REQUEST, "above the limit"),
        (r#"{"value": "v", "context": [3, 0, 0]}"#, StatusCode::BAD_REQUEST, "ahead of this replica"),
        (r#"{"value": "v", "context": "1,2,3"}"#, StatusCode::BAD_REQUEST, "invalid JSON"),
        // serde would read a struct from an array of its fields; the API takes objects only.
        (r#"["v"]"#, StatusCode::BAD_REQUEST, "expected a JSON object"),
        ("null", StatusCode::BAD_REQUEST, "expected a JSON object"),
    ];
    for (body, status, needle) in cases {
        f.expect_error("PUT", "/kv/k", Some(body), *status, needle).await;
    }
    // A delete's body is optional: none, `null` or an object; an array is refused.
    f.expect_error("DELETE", "/kv/k", Some("[]"), StatusCode::BAD_REQUEST, "expected a JSON object").await;
    f.expect_error("DELETE", "/kv/k", Some("[[0, 0, 0]]"), StatusCode::BAD_REQUEST, "expected a JSON object").await;
    f.expect_error("GET", "/kv/k", None, StatusCode::NOT_FOUND, "not found").await;
    assert_eq!(f.replica.status().await.unwrap().keys, 0, "nothing was written");
}

#[tokio::test]
async fn size_limits_are_enforced_with_413() {
    let f = fixture_with_limit(16);
    let long_key = "k".repeat(vkv::protocol::MAX_KEY_BYTES + 1);
    f.expect_error("PUT", &format!("/kv/{long_key}"), Some(r#"{"value": "v"}"#), StatusCode::PAYLOAD_TOO_LARGE, "key")
        .await;
    let (status, _) = f.put(&"k".repeat(vkv::protocol::MAX_KEY_BYTES), json!({"value": "v"})).await;
    assert_eq!(status, StatusCode::OK, "a key at the limit is fine");
    f.expect_error(
        "PUT",
        "/kv/v",
        Some(&json!({"value": "x".repeat(17)}).to_string()),
        StatusCode::PAYLOAD_TOO_LARGE,
        "limit is 16",
    )
    .await;
    let (status, _) = f.put("v", json!({"value": "x".repeat(16)})).await;
    assert_eq!(status, StatusCode::OK, "a value at the limit is fine");
    // A body far beyond the limit is cut off before parsing, still with a JSON error.
    let huge = json!({"value": "x".repeat(200_000)}).to_string();
    f.expect_error("PUT", "/kv/w", Some(&huge), StatusCode::PAYLOAD_TOO_LARGE, "too large").await;
    f.expect_error("GET", "/kv/w", None, StatusCode::NOT_FOUND, "not found").await;
}

#[tokio::test]
async fn delete_writes_a_tombstone_that_reads_as_404() {
    let f = fixture();
    f.put("k", json!({"value": "v"})).await;
    let (status, body) = f.call("DELETE", "/kv/k", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["clock"], json!([2, 0, 0]));
    f.expect_error("GET", "/kv/k", None, StatusCode::NOT_FOUND, "not found").await;
    let (status, body) = f.call("DELETE", "/kv/k", Some(r#"{"context": [2, 5, 0]}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["clock"], json!([3, 5, 0]));
    f.expect_error("DELETE", "/kv/k", Some("{bad"), StatusCode::BAD_REQUEST, "invalid JSON").await;
    f.expect_error("DELETE", "/kv/k", Some(r#"{"context": [1]}"#), StatusCode::BAD_REQUEST, "N = 3").await;
    // A write after a delete supersedes the tombstone.
    let (_, body) = f.put("k", json!({"value": "back"})).await;
    assert_eq!(body["clock"], json!([4, 5, 0]));
}

fn batch(from: u32, entries: Value) -> String {
    json!({"from": from, "entries": entries}).to_string()
}

#[tokio::test]
async fn replicate_merges_by_clock_and_reports() {
    let f = fixture();
    f.put("k", json!({"value": "local"})).await; // [1, 0, 0]
    let body = batch(
        2,
        json!([
            {"key": "k", "versions": [{"value": "remote", "clock": [0, 1, 0]}]},
            {"key": "new", "versions": [{"value": "n", "clock": [0, 1, 0]}]},
        ]),
    );
    let (status, resp) = f.call("POST", "/replicate", Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp, json!({"keys": 2, "changed": 2}));
    let (_, read) = f.get("k").await;
    assert_eq!(read["versions"].as_array().unwrap().len(), 2, "concurrent → siblings: {read}");
    assert_eq!(read["context"], json!([1, 1, 0]));
    // Replaying the same batch changes nothing (idempotent).
    let (_, resp) = f.call("POST", "/replicate", Some(&body)).await;
    assert_eq!(resp["changed"], 0);
    // A client write with the read context resolves the conflict.
    let (_, w) = f.put("k", json!({"value": "merged", "context": [1, 1, 0]})).await;
    assert_eq!(w["clock"], json!([2, 1, 0]));
    let (_, read) = f.get("k").await;
    assert_eq!(read["versions"], json!([{"value": "merged", "clock": [2, 1, 0]}]));
    // A tombstone sibling is shown as deleted.
    let body = batch(3, json!([{"key": "k", "versions": [{"deleted": true, "clock": [0, 0, 1]}]}]));
    f.call("POST", "/replicate", Some(&body)).await;
    let (_, read) = f.get("k").await;
    assert_eq!(
        read["versions"],
        json!([{"deleted": true, "clock": [0, 0, 1]}, {"value": "merged", "clock": [2, 1, 0]}])
    );
}

#[tokio::test]
async fn bad_replication_batches_apply_nothing() {
    let f = fixture();
    let good = json!({"key": "good", "versions": [{"value": "g", "clock": [0, 1, 0]}]});
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (batch(1, json!([good])), StatusCode::CONFLICT, "not a peer"),
        (batch(9, json!([good])), StatusCode::CONFLICT, "not a peer"),
        (
            batch(2, json!([good, {"key": "bad", "versions": [{"value": "b", "clock": [1, 1]}]}])),
            StatusCode::BAD_REQUEST,
            "N = 3",
        ),
        (batch(2, json!([good, {"key": "bad", "versions": []}])), StatusCode::BAD_REQUEST, "versions"),
        (
            batch(2, json!([good, {"key": "", "versions": [{"value": "b", "clock": [0, 1, 0]}]}])),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            batch(2, json!([good, {"key": "bad", "versions": [{"value": "b", "deleted": true, "clock": [0, 1, 0]}]}])),
            StatusCode::BAD_REQUEST,
            "either a value or deleted",
        ),
        (
            batch(2, json!([good, {"key": "bad", "versions": [{"value": "b", "clock": [0, 9007199254740993u64, 0]}]}])),
            StatusCode::BAD_REQUEST,
            "above the limit",
        ),
        (
            batch(2, json!([good, {"key": "..", "versions": [{"value": "b", "clock": [0, 1, 0]}]}])),
            StatusCode::BAD_REQUEST,
            "path step",
        ),
        (r#"{"from": 2}"#.to_string(), StatusCode::BAD_REQUEST, "missing field `entries`"),
        ("[]".to_string(), StatusCode::BAD_REQUEST, "invalid JSON"),
    ];
    for (body, status, needle) in &cases {
        f.expect_error("POST", "/replicate", Some(body), *status, needle).await;
    }
    let too_many: Vec<Value> = (0..=vkv::protocol::MAX_BATCH_KEYS)
        .map(|i| json!({"key": format!("k{i}"), "versions": [{"value": "v", "clock": [0, 1, 0]}]}))
        .collect();
    f.expect_error("POST", "/replicate", Some(&batch(2, json!(too_many))), StatusCode::PAYLOAD_TOO_LARGE, "batch")
        .await;
    f.expect_error("GET", "/kv/good", None, StatusCode::NOT_FOUND, "not found").await;
    assert_eq!(f.replica.status().await.unwrap().keys, 0, "no batch was half-applied");
}

#[tokio::test]
async fn health_status_and_hello() {
    let f = fixture();
    let (status, body) = f.call("GET", "/health", None).await;
    let cluster = f.replica.cluster_id();
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok", "replica": 1, "cluster": cluster})));
    f.put("a", json!({"value": "1"})).await;
    f.put("b", json!({"value": "1"})).await;
    f.put("a", json!({"value": "2"})).await;
    let (status, body) = f.call("GET", "/status", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["replica"], 1);
    assert_eq!(body["n"], 3);
    assert_eq!(body["keys"], 2);
    assert_eq!(body["members"][2], json!({"id": 3, "host": "127.0.0.1", "port": 3}));
    assert_eq!(body["cluster"], cluster);
    assert_eq!(
        body["peers"][0],
        json!({"id": 2, "address": "127.0.0.1:2", "outbox_depth": 2, "reachable": false, "cluster": null,
               "same_cluster": null})
    );
    let (status, _) = f.call("POST", "/peer/hello", Some(r#"{"from": 2}"#)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    f.expect_error("POST", "/peer/hello", Some(r#"{"from": 1}"#), StatusCode::CONFLICT, "not a peer").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let f = fixture();
    f.expect_error("GET", "/nope", None, StatusCode::NOT_FOUND, "no such route").await;
    // `/kv/` lists keys now (issue 12); a second path segment is still no route.
    f.expect_error("GET", "/kv/a/b", None, StatusCode::NOT_FOUND, "no such route").await;
    f.expect_error("POST", "/kv", Some("{}"), StatusCode::METHOD_NOT_ALLOWED, "method").await;
    f.expect_error("POST", "/kv/k", Some("{}"), StatusCode::METHOD_NOT_ALLOWED, "method").await;
}

// The write contract: a write with a context replaces only what that context covers.

/// Two clients read the same version; the first writes back with it and wins; the second,
/// still holding the old context, is refused with 409, the version it missed and the context
/// to retry with — and nothing it sent is written.
#[tokio::test]
async fn a_write_with_a_stale_context_is_refused_with_the_versions_it_missed() {
    let f = fixture();
    f.put("k", json!({"value": "v1"})).await; // [1, 0, 0]
    let (_, read) = f.get("k").await;
    let ctx = read["context"].clone();
    let (status, first) = f.put("k", json!({"value": "v1+a", "context": ctx})).await;
    assert_eq!((status, &first["clock"]), (StatusCode::OK, &json!([2, 0, 0])));
    let (status, body) = f.put("k", json!({"value": "v1+b", "context": ctx})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("conflict"), "{body}");
    assert_eq!(body["key"], "k");
    assert_eq!(body["versions"], json!([{"value": "v1+a", "clock": [2, 0, 0]}]));
    assert_eq!(body["context"], json!([2, 0, 0]));
    // Nothing written: the replica still holds exactly the first writer's version.
    assert_eq!(f.get("k").await.1["versions"], json!([{"value": "v1+a", "clock": [2, 0, 0]}]));
    // Retrying with the context from the 409 succeeds and supersedes it.
    let (status, w) = f.put("k", json!({"value": "v1+a+b", "context": body["context"]})).await;
    assert_eq!((status, &w["clock"]), (StatusCode::OK, &json!([3, 0, 0])));
}

/// A sibling that arrived from a peer after the client's read is a version the client never
/// saw: the write is refused and the 409 lists every sibling, tombstones included.
#[tokio::test]
async fn a_sibling_that_arrived_after_the_read_makes_the_write_a_conflict() {
    let f = fixture();
    f.put("k", json!({"value": "local"})).await; // [1, 0, 0]
    let ctx = f.get("k").await.1["context"].clone();
    let body = batch(2, json!([{"key": "k", "versions": [{"deleted": true, "clock": [0, 1, 0]}]}]));
    assert_eq!(f.call("POST", "/replicate", Some(&body)).await.0, StatusCode::OK);
    let (status, body) = f.put("k", json!({"value": "mine", "context": ctx})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["versions"],
        json!([{"deleted": true, "clock": [0, 1, 0]}, {"value": "local", "clock": [1, 0, 0]}])
    );
    assert_eq!(body["context"], json!([1, 1, 0]));
    // A delete with the stale context is refused the same way.
    let (status, del) = f.call("DELETE", "/kv/k", Some(&json!({"context": ctx}).to_string())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{del}");
    assert_eq!(del["versions"], body["versions"]);
    // A blind write is the seed's plain update: last writer at this replica wins.
    let (status, w) = f.put("k", json!({"value": "blind"})).await;
    assert_eq!((status, &w["clock"]), (StatusCode::OK, &json!([2, 1, 0])));
}

/// A 404 carries the context a first write needs: zeros for a key never written, the
/// tombstone's clock for a deleted one. An all-zero context succeeds only while the key has no
/// version here.
#[tokio::test]
async fn a_404_carries_the_context_for_a_first_write() {
    let f = fixture();
    let (status, body) = f.get("fresh").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["versions"], json!([]));
    assert_eq!(body["context"], json!([0, 0, 0]));
    assert_eq!(body["key"], "fresh");
    assert!(body["error"].as_str().unwrap().contains("not found"));
    let (status, w) = f.put("fresh", json!({"value": "first", "context": [0, 0, 0]})).await;
    assert_eq!((status, &w["clock"]), (StatusCode::OK, &json!([1, 0, 0])));
    let (status, body) = f.put("fresh", json!({"value": "also first", "context": [0, 0, 0]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["versions"], json!([{"value": "first", "clock": [1, 0, 0]}]));

    // Deleted: 404 with the tombstone's clock as context.
    let (status, d) = f.call("DELETE", "/kv/fresh", Some(r#"{"context": [1, 0, 0]}"#)).await;
    assert_eq!((status, &d["clock"]), (StatusCode::OK, &json!([2, 0, 0])));
    let (status, body) = f.get("fresh").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["context"], json!([2, 0, 0]));
    assert_eq!(body["versions"], json!([]));
    // The tombstone is a version: a zero context no longer covers it.
    assert_eq!(f.put("fresh", json!({"value": "x", "context": [0, 0, 0]})).await.0, StatusCode::CONFLICT);
    let (status, w) = f.put("fresh", json!({"value": "again", "context": [2, 0, 0]})).await;
    assert_eq!((status, &w["clock"]), (StatusCode::OK, &json!([3, 0, 0])));
}

/// With `?w=K` the 409 is decided here, before anything is written or sent to a peer (the
/// peers of this fixture do not exist: a write that got as far as the quorum would be a 503).
#[tokio::test]
async fn a_quorum_write_with_a_stale_context_is_refused_before_it_is_sent() {
    let f = fixture();
    f.put("k", json!({"value": "v"})).await; // [1, 0, 0]
    let (status, body) =
        f.call("PUT", "/kv/k?w=3", Some(&json!({"value": "stale", "context": [0, 0, 0]}).to_string())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["versions"], json!([{"value": "v", "clock": [1, 0, 0]}]));
    assert_eq!(f.get("k").await.1["versions"], json!([{"value": "v", "clock": [1, 0, 0]}]));
    let status = f.replica.status().await.unwrap();
    assert!(status.peers.iter().all(|p| p.outbox_depth == 1), "only the first write is queued: {status:?}");
}
