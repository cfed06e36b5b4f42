//! `GET /openapi.json`: the OpenAPI 3.1 description of the client routes, generated from the
//! handlers' annotations and the protocol types (utoipa), so it cannot drift from the code.
//!
//! The peer routes (`/replicate`, `/peer/*`) are left out: they take signed requests from the
//! other replicas only. CI runs schemathesis against a live replica with this description.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::core::clock::MAX_COUNTER;
use crate::net::{api, exporter, page};
use crate::node::replica::Replica;

/// The description, assembled from every annotated handler.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "vkv",
        description = "A replicated Dynamo-style key-value store with vector clocks and sibling versions. \
            Talk to any replica; writes are durable (fsync) before the answer and reach every other replica \
            in the background.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        api::list_keys,
        api::read_key,
        api::write_key,
        api::delete_key,
        api::status,
        api::health,
        api::readyz,
        api::livez,
        exporter::serve,
        page::page,
        page::decisions,
        serve
    ),
    tags(
        (name = "keys", description = "Reading and writing keys"),
        (name = "operations", description = "Health, status and metrics")
    )
)]
pub struct ApiDoc;

/// The description for a replica of a cluster of `n` that accepts values up to
/// `max_value_bytes`: the generated one, with the limits only known at startup filled in (a
/// clock has exactly `n` counters, `r` and `w` are at most `n`, the longest value).
pub fn for_replica(n: usize, max_value_bytes: usize) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let zeros = vec![0u64; n];
    if let Some(clock) = doc.pointer_mut("/components/schemas/VectorClock").and_then(Value::as_object_mut) {
        clock.insert("minItems".into(), json!(n));
        clock.insert("maxItems".into(), json!(n));
        clock.insert("examples".into(), json!([zeros]));
        clock.insert("items".into(), json!({"type": "integer", "minimum": 0, "maximum": MAX_COUNTER}));
        clock.remove("example");
    }
    if let Some(value) =
        doc.pointer_mut("/components/schemas/WriteRequest/properties/value").and_then(Value::as_object_mut)
    {
        // A limit in bytes, which JSON Schema's maxLength (characters) cannot state: said in
        // words; a longer value is refused with 413.
        let limit = format!("The new value: at most {max_value_bytes} bytes of UTF-8 (longer: 413).");
        value.insert("description".into(), json!(limit));
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|p| p.values_mut()) {
            let parameters = operation.get_mut("parameters").and_then(Value::as_array_mut);
            for parameter in parameters.into_iter().flatten() {
                if matches!(parameter["name"].as_str(), Some("r" | "w")) {
                    parameter["schema"]["maximum"] = json!(n);
                }
            }
        }
    }
    doc
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "operations",
    responses((status = 200, description = "This description (OpenAPI 3.1)", content_type = "application/json")))]
pub(crate) async fn serve(State(replica): State<Arc<Replica>>) -> Json<Value> {
    Json(for_replica(replica.layout().n(), replica.max_value_bytes()))
}
