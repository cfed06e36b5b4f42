//! The live cluster page (`GET /`) and the decision history it shows (`GET /decisions`).
//!
//! `GET /` returns one self-contained HTML page (`page.html`, compiled into the binary: no CDN,
//! no external font, nothing fetched but the replicas' own JSON routes). Its script shows every
//! member as up, recovering or down with its outbox depth toward each peer, the recent merge
//! decisions and conflicts of every replica, and a key inspector that puts the key's siblings
//! (values and clocks) on every replica side by side; `/?key=K` opens the inspector on `K`. It
//! refreshes itself every 2 s.
//!
//! # Why the browser asks each replica itself (CORS) rather than a fan-out endpoint
//!
//! The page could have asked the replica that served it to gather everyone's state
//! server-side. It asks every member directly instead, allowed by a permissive CORS policy on
//! the read-only client routes (`/health`, `/status`, `/decisions`, `GET /kv/{key}`; GET only —
//! writes stay same-origin, a cross-site PUT fails its preflight):
//!
//! - what the page shows is what each replica answers, not one replica's relay of it: "down"
//!   means *this browser* cannot reach it, and a replica that is up but cut off from the others
//!   still shows its own siblings;
//! - no replica does extra outbound work or holds extra code for a page viewer, and the page
//!   keeps working when the replica that served it dies (the others still answer);
//! - the routes opened are ones any client can already read with curl; they carry no
//!   credentials (the peer routes, which do, get no CORS headers).
//!
//! The cost: the browser must reach every member at the address the cluster knows it by
//! (`--host`/`--port`). Behind NAT or a proxy that only one replica is published through, the
//! other members show as down; the page says so under its member table.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::core::cluster::ReplicaId;
use crate::error::Error;
use crate::net::api::AppError;
use crate::node::decisions::Decision;
use crate::node::replica::Replica;

/// The page, HTML with its script and style inline.
const PAGE: &str = include_str!("page.html");

/// What the page may load: its own inline script and style, and JSON from any replica (the
/// members' addresses are only known at run time). Nothing else — no remote script, font or
/// frame — so a value that slipped into the DOM as markup could not load anything either.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src *; img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// How many decisions `GET /decisions` returns without `?limit=`.
const DEFAULT_DECISIONS: usize = 50;

/// `GET /`: the cluster page.
#[utoipa::path(get, path = "/", tag = "operations", responses(
    (status = 200, description = "The live cluster page (HTML with its script inline)", body = String,
        content_type = "text/html; charset=utf-8")))]
pub(crate) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        ],
        PAGE,
    )
        .into_response()
}

/// `?limit=N` of `GET /decisions`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DecisionsQuery {
    /// How many decisions, newest first (1 to the history's capacity, 200; default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
}

/// Answer to `GET /decisions`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DecisionsResponse {
    /// The replica that took them.
    replica: ReplicaId,
    /// Most decisions it remembers.
    capacity: usize,
    /// Newest first.
    decisions: Vec<Decision>,
}

/// `GET /decisions?limit=N`: the last `N` (1 to the history's capacity, default 50) decisions
/// this replica took, newest first. A limit out of range or not a number is a 400.
#[utoipa::path(get, path = "/decisions", tag = "operations", params(DecisionsQuery), responses(
    (status = 200, description = "The replica's recent decisions, newest first", body = DecisionsResponse),
    (status = 400, description = "A bad limit or an unknown parameter", body = crate::net::protocol::ErrorBody)))]
pub(crate) async fn decisions(
    State(replica): State<Arc<Replica>>,
    query: Result<Query<DecisionsQuery>, QueryRejection>,
) -> Result<Json<DecisionsResponse>, AppError> {
    let Query(query) = query.map_err(|r| Error::InvalidInput(format!("bad query: {}", r.body_text())))?;
    let log = replica.decisions();
    let capacity = log.capacity();
    let limit = query.limit.unwrap_or(DEFAULT_DECISIONS.min(capacity));
    if limit == 0 || limit > capacity {
        return Err(Error::InvalidInput(format!("limit must be between 1 and {capacity}, got {limit}")).into());
    }
    Ok(Json(DecisionsResponse { replica: replica.id(), capacity, decisions: log.latest(limit) }))
}

/// The CORS policy of the read-only client routes (see the module doc), layered on their GET
/// handlers only: `access-control-allow-origin: *` on every GET answer, no credentials. The
/// page's GETs are "simple" requests, sent without a preflight; a preflight (which any
/// cross-site PUT or DELETE needs) meets no OPTIONS handler — 405 without CORS headers — so the
/// browser refuses those. One constant header rather than tower-http's `CorsLayer`, which
/// cloned its policy and built `Vary` on every request: a tenth of a replica's GET throughput.
pub(crate) fn read_only_cors() -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use crate::core::clock::VectorClock;
    use crate::core::versions::Version;
    use crate::net::api::app;
    use crate::net::protocol::{ReplicateEntry, ReplicateRequest};
    use crate::node::replica::test_replica;

    async fn call(replica: &std::sync::Arc<super::Replica>, request: Request<Body>) -> (StatusCode, String, String) {
        let response = app(replica.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, kind, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get(replica: &std::sync::Arc<super::Replica>, uri: &str) -> (StatusCode, String, String) {
        call(replica, Request::get(uri).body(Body::empty()).unwrap()).await
    }

    #[tokio::test]
    async fn the_page_is_html_with_its_script_inline() {
        let dir = tempfile::tempdir().unwrap();
        let replica = test_replica(dir.path(), 7000);
        let (status, kind, body) = get(&replica, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(kind, "text/html; charset=utf-8");
        assert!(body.starts_with("<!DOCTYPE html>"), "{body:.80}");
        assert!(body.contains("<script>") && body.contains("function refresh("), "the script is embedded");
        assert!(!body.contains("https://") && !body.contains("src=\"http"), "nothing is loaded from elsewhere");
        assert!(!body.contains("innerHTML"), "data reaches the DOM through textContent only");
    }

    #[tokio::test]
    async fn decisions_lists_a_write_then_a_replicated_conflict_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let replica = test_replica(dir.path(), 7000);
        let put = Request::put("/kv/cart").body(Body::from(r#"{"value": "milk"}"#)).unwrap();
        assert_eq!(call(&replica, put).await.0, StatusCode::OK);
        let concurrent = Version::value("eggs", VectorClock::from(vec![0, 1, 0]));
        let batch = ReplicateRequest {
            from: 2,
            entries: vec![ReplicateEntry { key: "cart".into(), versions: vec![concurrent] }],
        };
        replica.apply_replication(batch).await.unwrap();

        let (status, _, body) = get(&replica, "/decisions?limit=5").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["replica"], 1);
        let list = json["decisions"].as_array().unwrap();
        assert_eq!(list.len(), 2, "{body}");
        let (conflict, write) = (&list[0], &list[1]);
        assert_eq!(conflict["outcome"], "conflict");
        assert_eq!(conflict["key"], "cart");
        assert_eq!(conflict["source"], "replication from replica 2");
        assert_eq!(conflict["value"], "\"eggs\"");
        assert_eq!(conflict["local"], serde_json::json!([[1, 0, 0]]));
        assert_eq!(conflict["clock"], serde_json::json!([0, 1, 0]));
        assert_eq!(conflict["siblings"], 2);
        assert_eq!(
            (&write["outcome"], &write["source"], &write["clock"]),
            (&"write".into(), &"client".into(), &serde_json::json!([1, 0, 0]))
        );
        assert!(conflict["time_ms"].as_u64().unwrap() >= write["time_ms"].as_u64().unwrap());

        let (_, _, one) = get(&replica, "/decisions?limit=1").await;
        assert_eq!(serde_json::from_str::<Value>(&one).unwrap()["decisions"].as_array().unwrap().len(), 1);
        let (_, _, default) = get(&replica, "/decisions").await;
        assert_eq!(serde_json::from_str::<Value>(&default).unwrap()["decisions"].as_array().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_bad_limit_is_a_400_with_a_json_error() {
        let dir = tempfile::tempdir().unwrap();
        let replica = test_replica(dir.path(), 7000);
        for uri in [
            "/decisions?limit=0",
            "/decisions?limit=201",
            "/decisions?limit=abc",
            "/decisions?limit=-1",
            "/decisions?lim=3",
        ] {
            let (status, kind, body) = get(&replica, uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert_eq!(kind, "application/json", "{uri}");
            let error = serde_json::from_str::<Value>(&body).unwrap()["error"].as_str().unwrap().to_string();
            assert!(!error.is_empty(), "{uri}");
        }
    }

    #[tokio::test]
    async fn read_routes_allow_any_origin_and_writes_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let replica = test_replica(dir.path(), 7000);
        for uri in ["/health", "/status", "/decisions", "/kv/cart"] {
            let request = Request::get(uri).header("origin", "http://127.0.0.1:9").body(Body::empty()).unwrap();
            let response = app(replica.clone()).oneshot(request).await.unwrap();
            assert_eq!(
                response.headers().get("access-control-allow-origin").map(|v| v.as_bytes()),
                Some(&b"*"[..]),
                "{uri}"
            );
        }
        let preflight = Request::options("/kv/cart")
            .header("origin", "http://127.0.0.1:9")
            .header("access-control-request-method", "PUT")
            .body(Body::empty())
            .unwrap();
        let response = app(replica.clone()).oneshot(preflight).await.unwrap();
        // The page's GETs are "simple" requests (no preflight); a PUT's preflight must not be granted.
        let allowed = response.headers().get("access-control-allow-methods").map(|v| v.to_str().unwrap().to_string());
        assert!(!allowed.unwrap_or_default().contains("PUT"), "a cross-site PUT is not allowed");
        assert!(response.headers().get("access-control-allow-origin").is_none(), "{:?}", response.headers());
        let request = Request::post("/replicate").header("origin", "http://127.0.0.1:9").body(Body::empty()).unwrap();
        let response = app(replica).oneshot(request).await.unwrap();
        assert!(response.headers().get("access-control-allow-origin").is_none(), "peer routes get no CORS headers");
    }
}
