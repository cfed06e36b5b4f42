//! The HTTP ceiling for `vkv-bench`: a plain axum server holding keys in memory, with vkv's
//! routes and JSON shapes but no clocks, no disk and no replication. Whatever it serves per
//! second on this box is the most any axum server doing JSON per request can serve here.
//!
//! `vkv-ceiling --port P` (loopback only). Bench-only; not part of vkv.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Port on 127.0.0.1.
    #[arg(long)]
    port: u16,
}

type Keys = Arc<RwLock<HashMap<String, (String, u64)>>>;

async fn put(
    State(keys): State<Keys>,
    Path(key): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, StatusCode> {
    let value = body.get("value").and_then(Value::as_str).ok_or(StatusCode::BAD_REQUEST)?.to_string();
    let mut keys = keys.write().map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let entry = keys.entry(key.clone()).or_insert((String::new(), 0));
    *entry = (value, entry.1 + 1);
    Ok(Json(json!({"key": key, "clock": [entry.1, 0, 0, 0, 0]})))
}

async fn read(State(keys): State<Keys>, Path(key): Path<String>) -> Result<Json<Value>, StatusCode> {
    let keys = keys.read().map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let (value, counter) = keys.get(&key).ok_or(StatusCode::NOT_FOUND)?;
    let clock = [*counter, 0, 0, 0, 0];
    Ok(Json(json!({"key": key, "versions": [{"value": value, "clock": clock}], "context": clock})))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let app = Router::new()
        .route("/kv/{key}", get(read).put(put))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(Keys::default());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    axum::serve(listener, app).await
}
