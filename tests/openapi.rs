//! `GET /openapi.json`: generated from the handlers and the protocol types, with this replica's
//! runtime limits filled in. (CI also runs schemathesis against a live replica with it:
//! scripts/schemathesis.sh.)

use std::time::Duration;

use serde_json::Value;
use vkv_testkit::{free_ports, LocalCluster};

const SERVER: &str = env!("CARGO_BIN_EXE_vkv-server");

fn operation<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not described");
    op
}

#[test]
fn every_client_route_is_described_with_the_clusters_limits() {
    let doc = vkv::openapi::for_replica(5, 4096);
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/kv", "get"),
        ("/kv/{key}", "get"),
        ("/kv/{key}", "put"),
        ("/kv/{key}", "delete"),
        ("/status", "get"),
        ("/health", "get"),
        ("/readyz", "get"),
        ("/livez", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/", "get"),
        ("/decisions", "get"),
    ] {
        let op = operation(&doc, path, method);
        assert!(op["responses"]["200"].is_object(), "{method} {path}: {op}");
    }
    // Every operation has its own id (a duplicate makes the description invalid, and tools such
    // as schemathesis silently skip one of the two).
    let mut ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "duplicate operationId: {ids:?}");
    // Descriptions are for API readers: no rustdoc link syntax.
    assert!(!doc.to_string().contains("[`"), "a rustdoc link leaked into the description");
    // Peer routes take signed requests from replicas only: not part of the client API.
    assert!(doc["paths"]["/replicate"].is_null());
    let put = operation(&doc, "/kv/{key}", "put");
    for status in ["400", "408", "409", "413", "503"] {
        assert!(put["responses"][status].is_object(), "PUT documents {status}: {put}");
    }
    let w = put["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "w").unwrap();
    assert_eq!(
        (w["in"].as_str(), w["schema"]["minimum"].as_u64(), w["schema"]["maximum"].as_u64()),
        (Some("query"), Some(1), Some(5))
    );
    let clock = &doc["components"]["schemas"]["VectorClock"];
    assert_eq!((clock["minItems"].as_u64(), clock["maxItems"].as_u64()), (Some(5), Some(5)), "{clock}");
    assert_eq!(clock["items"]["maximum"].as_u64(), Some(1 << 53));
    let value = &doc["components"]["schemas"]["WriteRequest"]["properties"]["value"];
    assert!(value["description"].as_str().unwrap().contains("4096 bytes"), "{value}");
    // A version on the wire: a value or `deleted`, and a clock.
    let version = &doc["components"]["schemas"]["Version"];
    assert!(version["properties"]["deleted"].is_object() && version["properties"]["value"].is_object(), "{version}");
    assert_eq!(version["required"], serde_json::json!(["clock"]));
}

/// The route serves the same description, with the replica's own N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_serves_the_description_for_this_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::new(SERVER, free_ports(3).unwrap(), dir.path());
    cluster.start(1).unwrap();
    let url = format!("http://{}/openapi.json", cluster.address(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let response = loop {
        match reqwest::get(&url).await {
            Ok(r) => break r,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["components"]["schemas"]["VectorClock"]["maxItems"], 3);
    assert_eq!(doc, vkv::openapi::for_replica(3, vkv::protocol::DEFAULT_MAX_VALUE_BYTES));
}
