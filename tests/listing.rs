//! Key listing, `GET /kv?prefix=P&after=K&limit=N`, on a real replica: byte order, the prefix
//! filter, pagination that visits every key exactly once, tombstone-only keys hidden unless
//! `deleted=true`, keys with odd bytes, and a JSON 400 for every bad parameter.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Url;
use serde_json::Value;
use vkv_testkit::{free_ports, LocalCluster};

const SERVER: &str = env!("CARGO_BIN_EXE_vkv-server");

/// One healthy replica (N = 1) with its temp dir (keep it alive) and a runtime.
fn one_replica() -> (tempfile::TempDir, LocalCluster, tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::new(SERVER, free_ports(1).unwrap(), dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    cluster.start_all().unwrap();
    rt.block_on(cluster.wait_all_healthy(Duration::from_secs(10))).unwrap();
    (dir, cluster, rt)
}

/// `GET {path}` with the query pairs, percent-encoded: the status and the JSON body.
async fn list(cluster: &LocalCluster, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
    let mut url = Url::parse(&format!("http://{}{path}", cluster.address(1))).unwrap();
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")))
}

fn keys_of(body: &Value) -> Vec<String> {
    body["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect()
}

/// Keys come back in byte order, only those with the prefix; `/kv/` answers as `/kv` does; keys
/// holding spaces, unicode, `/`, `?`, `&`, `%` and a newline round-trip as prefix, key and cursor.
#[test]
fn keys_are_sorted_filtered_by_prefix_and_odd_bytes_round_trip() {
    let (_dir, cluster, rt) = one_replica();
    let client = cluster.client(1);
    let odd = ["dir/a b", "dir/é☃", "dir/q?x=1&y", "dir/100%", "dir/line\nbreak", "dirt", "Z", "a"];
    rt.block_on(async {
        for key in odd {
            client.put(key, "v", None).await.unwrap();
        }
        let mut sorted = odd.map(String::from).to_vec();
        sorted.sort(); // String's order is byte order
        for path in ["/kv", "/kv/"] {
            let (status, body) = list(&cluster, path, &[]).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_eq!(keys_of(&body), sorted, "{path}");
            assert_eq!(body["next"], Value::Null, "{path}: one page holds all");
        }
        let (_, body) = list(&cluster, "/kv", &[("prefix", "dir/")]).await;
        let with_prefix: Vec<String> = sorted.iter().filter(|k| k.starts_with("dir/")).cloned().collect();
        assert_eq!(keys_of(&body), with_prefix, "prefix dir/ leaves out dirt, Z and a");
        for key in odd {
            let (_, body) = list(&cluster, "/kv", &[("prefix", key)]).await;
            assert_eq!(keys_of(&body), vec![key.to_string()], "the key itself as a prefix: {key:?}");
            assert_eq!(client.get(key).await.unwrap().unwrap().key, key, "and it reads back");
        }
        let cursor = with_prefix[1].as_str();
        let (_, body) = list(&cluster, "/kv", &[("prefix", "dir/"), ("after", cursor), ("limit", "2")]).await;
        assert_eq!(keys_of(&body), with_prefix[2..4].to_vec());
        assert_eq!(body["next"], Value::from(with_prefix[3].clone()));
        let (_, body) = list(&cluster, "/kv", &[("prefix", "nothing")]).await;
        assert_eq!(keys_of(&body), Vec::<String>::new());
        assert_eq!(body["next"], Value::Null);
    });
}

/// 250 keys in pages of 7 (and of 1000 by default): every key exactly once, in order, `next` null
/// only on the last page; a cursor before the prefix starts at the prefix.
#[test]
fn pagination_visits_every_key_exactly_once() {
    let (_dir, cluster, rt) = one_replica();
    let client = cluster.client(1);
    rt.block_on(async {
        let written: BTreeSet<String> = (0..250).map(|i| format!("p/{i:04}")).collect();
        for key in &written {
            client.put(key, "v", None).await.unwrap();
        }
        client.put("q/outside", "v", None).await.unwrap();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(pages <= 40, "pagination does not end");
            let mut query = vec![("prefix", "p/"), ("limit", "7")];
            if let Some(a) = &after {
                query.push(("after", a));
            }
            let (status, body) = list(&cluster, "/kv", &query).await;
            assert_eq!(status, 200, "{body}");
            let keys = keys_of(&body);
            assert!(keys.len() <= 7, "a page holds at most limit keys");
            seen.extend(keys.iter().cloned());
            match &body["next"] {
                Value::Null => break,
                Value::String(next) => {
                    assert_eq!(Some(next), keys.last(), "next is the last key returned");
                    after = Some(next.clone());
                }
                other => panic!("next is {other}"),
            }
        }
        assert_eq!(pages, 36, "250 keys in pages of 7");
        assert_eq!(seen, written.iter().cloned().collect::<Vec<_>>(), "every key once, in order");
        let (_, body) = list(&cluster, "/kv", &[]).await;
        assert_eq!(keys_of(&body).len(), 251, "the default limit (1000) holds them all");
        let (_, body) = list(&cluster, "/kv", &[("prefix", "p/"), ("after", "a"), ("limit", "1")]).await;
        assert_eq!(keys_of(&body), vec!["p/0000".to_string()], "a cursor before the prefix");
    });
}

/// A key whose every version is a tombstone is not listed, unless `deleted=true`; a key with a
/// live version again is listed again.
#[test]
fn tombstone_only_keys_are_hidden_unless_deleted_true() {
    let (_dir, cluster, rt) = one_replica();
    let client = cluster.client(1);
    rt.block_on(async {
        for key in ["a", "b", "c"] {
            client.put(key, "v", None).await.unwrap();
        }
        client.delete("b", None).await.unwrap();
        let (_, body) = list(&cluster, "/kv", &[]).await;
        assert_eq!(keys_of(&body), ["a", "c"]);
        let (_, body) = list(&cluster, "/kv", &[("deleted", "true")]).await;
        assert_eq!(keys_of(&body), ["a", "b", "c"]);
        let (_, body) = list(&cluster, "/kv", &[("deleted", "false"), ("limit", "1")]).await;
        assert_eq!(keys_of(&body), ["a"]);
        assert_eq!(body["next"], "a", "a hidden key between pages does not end the listing early");
        let (_, body) = list(&cluster, "/kv", &[("after", "a"), ("limit", "1")]).await;
        assert_eq!(keys_of(&body), ["c"]);
        assert_eq!(body["next"], Value::Null, "b is hidden, so nothing follows c");
        client.put("b", "back", None).await.unwrap();
        let (_, body) = list(&cluster, "/kv", &[]).await;
        assert_eq!(keys_of(&body), ["a", "b", "c"]);
    });
}

/// Bad parameters are a 400 with a JSON error naming the problem, never a listing.
#[test]
fn bad_parameters_are_a_json_400() {
    let (_dir, cluster, rt) = one_replica();
    let long = "x".repeat(1025);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "10001")], "limit"),
        (vec![("limit", "ten")], "limit"),
        (vec![("limit", "-1")], "limit"),
        (vec![("limit", "")], "limit"),
        (vec![("limt", "5")], "limt"),
        (vec![("deleted", "yes")], "deleted"),
        (vec![("limit", "1"), ("limit", "2")], "limit"),
        (vec![("prefix", &long)], "prefix"),
        (vec![("after", &long)], "after"),
    ];
    rt.block_on(async {
        cluster.client(1).put("k", "v", None).await.unwrap();
        for (query, needle) in &cases {
            let (status, body) = list(&cluster, "/kv", query).await;
            assert_eq!(status, 400, "{query:?}: {body}");
            let error = body["error"].as_str().unwrap_or_else(|| panic!("{query:?}: no error in {body}"));
            assert!(error.contains(needle), "{query:?}: {error:?} should mention {needle:?}");
            assert!(body.get("keys").is_none(), "{query:?}: {body}");
        }
        let (status, body) = list(&cluster, "/kv", &[("limit", "10000")]).await;
        assert_eq!((status, keys_of(&body)), (200, vec!["k".to_string()]), "the maximum itself is fine");
        // Percent-encoded bytes that are not UTF-8 are refused, not decoded into U+FFFD.
        for raw in ["prefix=%FF", "after=%C3", "prefix=ok&after=a%80b"] {
            let response = reqwest::get(format!("http://{}/kv?{raw}", cluster.address(1))).await.unwrap();
            assert_eq!(response.status().as_u16(), 400, "{raw}");
            let body: Value = response.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("UTF-8"), "{raw}: {body}");
        }
    });
}
