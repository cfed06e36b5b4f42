//! Hostile input through the real HTTP app (`oneshot`, real redb store): random bytes and
//! mutated valid requests against every route that decodes a body or a path. The properties:
//! no panic, never a 5xx, every 4xx has a JSON `error`, and a rejected request writes nothing.
//!
//! Each property runs `CASES` generated cases (printed when the test runs with `--nocapture`).

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tower::ServiceExt;

use vkv::api::app;
use vkv::auth::{ClusterKey, PeerAuth};
use vkv::cluster::Layout;
use vkv::replica::{Config as ReplicaConfig, Replica};

const CASES: u32 = 2000;
const KEY: &str = "fuzz-cluster-key-0123456789";

fn replica(dir: &std::path::Path) -> Arc<Replica> {
    let layout = Layout::from_flags("127.0.0.1", 1, 3, &["127.0.0.1".into(), "127.0.0.1".into()], &[2, 3]).unwrap();
    Replica::open(ReplicaConfig {
        layout,
        data_dir: dir.join("data"),
        max_value_bytes: 64,
        cluster_key: Some(ClusterKey::new(KEY).unwrap()),
        anti_entropy: None,
        skip_recovery: true,
        peer_source: None,
        compact_after: None,
    })
    .unwrap()
}

/// Valid requests to mutate: the fuzzer starts near the grammar so it reaches deep into decoding.
const SEEDS: &[&str] = &[
    r#"{"value": "v", "context": [0, 1, 2]}"#,
    r#"{"value": "v"}"#,
    r#"{"context": [1, 0, 0]}"#,
    r#"{"from": 2, "entries": [{"key": "k", "versions": [{"value": "v", "clock": [0, 1, 0]}, {"deleted": true, "clock": [0, 0, 1]}]}]}"#,
    r#"{"from": 3}"#,
    r#"{"from": 2, "ranges": 64}"#,
    r#"{"from": 2, "of": 64, "ranges": [0, 5, 63], "limit": 10, "after": "k"}"#,
    r#"{"from": 2, "key": "k"}"#,
];

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        (0..SEEDS.len(), proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6))
            .prop_map(|(seed, edits)| {
                let mut b = SEEDS[seed].as_bytes().to_vec();
                for (at, byte, op) in edits {
                    let i = at.index(b.len().max(1)).min(b.len());
                    match op {
                        0 if i < b.len() => b[i] = byte,       // replace
                        1 => b.insert(i, byte),                // insert
                        _ if i < b.len() => drop(b.remove(i)), // delete
                        _ => b.push(byte),
                    }
                }
                b
            }),
    ]
}

fn route() -> impl Strategy<Value = (&'static str, String)> {
    let key = prop_oneof![Just("k".to_string()), "[a-zA-Z0-9%./ ~-]{0,12}".prop_map(|s| s.replace(' ', "%20"))];
    (0..8usize, key).prop_map(|(r, key)| match r {
        0 => ("PUT", format!("/kv/{key}")),
        1 => ("DELETE", format!("/kv/{key}")),
        2 => ("GET", format!("/kv/{key}")),
        3 => ("POST", "/replicate".to_string()),
        4 => ("POST", "/peer/digest".to_string()),
        5 => ("POST", "/peer/entries".to_string()),
        6 => ("POST", "/peer/read".to_string()),
        _ => ("POST", "/peer/hello".to_string()),
    })
}

/// A range count whose digests come from a scan of the store file, not from the ones kept in
/// memory by the commits (64): so a change that bypassed the commits would show too.
const SCANNED_RANGES: usize = 128;

#[test]
fn random_requests_never_panic_5xx_or_half_apply() {
    let dir = tempfile::tempdir().unwrap();
    let replica = replica(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key = ClusterKey::new(KEY).unwrap();
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    let tried = std::sync::atomic::AtomicU32::new(0);
    let outcome = runner.run(&(route(), body(), any::<bool>()), |((method, uri), body, signed)| {
        tried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(async {
            // The digests cover every key and every version: any change at all shows in them.
            let before = vkv::anti_entropy::range_digests(&replica, SCANNED_RANGES)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut request = Request::builder().method(method).uri(&uri);
            if signed {
                let path = uri.split('?').next().unwrap_or("");
                for (name, value) in
                    PeerAuth::with_parts(2, replica.cluster_id(), Some(key.clone())).headers(path, &body)
                {
                    request = request.header(name, value);
                }
            }
            request = request.header("content-length", body.len());
            let Ok(request) = request.body(Body::from(body.clone())) else {
                return Ok(()); // not even a valid HTTP request line: nothing to send
            };
            let response = app(replica.clone()).oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            prop_assert!(!status.is_server_error(), "{method} {uri} {body:?} → {status}");
            if status.is_client_error() {
                let json: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| TestCaseError::fail(format!("{status} without JSON body ({e}): {bytes:?}")))?;
                prop_assert!(json["error"].is_string(), "{status}: {json}");
                let after = vkv::anti_entropy::range_digests(&replica, SCANNED_RANGES)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(before == after, "a rejected request changed the store");
            } else {
                prop_assert!(status.is_success(), "{status}");
            }
            if status.is_success() && method == "POST" {
                prop_assert!(signed, "an unsigned peer request was accepted");
            }
            Ok(())
        })
    });
    let tried = tried.into_inner();
    eprintln!("fuzz: {tried} generated requests");
    outcome.unwrap();
    assert!(tried >= CASES);
}
