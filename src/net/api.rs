//! The HTTP edge: axum routes translating JSON to replica calls and errors to status codes.
//!
//! Nothing here decides anything about causality; handlers parse, call the replica, and render.
//! Every error, including axum's own extractor rejections (bad path encoding, oversized body,
//! unknown route), leaves as `{"error": "..."}` with a 4xx/5xx status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tracing::{error, warn};

use crate::error::Error;
use crate::net::auth::{check_body, check_head, HeadError, PeerHead, FROM_HEADER, SIGNATURE_HEADER};
use crate::net::protocol::{
    DeleteRequest, DigestRequest, EntriesRequest, ErrorBody, HelloRequest, KeyErrorBody, KeyListResponse, ListQuery,
    PeerReadRequest, PeerRequest, ReadQuery, ReadResponse, ReplicateRequest, WriteQuery, WriteRequest, WriteResponse,
    MAX_REPLICATE_BODY_BYTES,
};
use crate::node::coordinator;
use crate::node::replica::Replica;
use crate::sync::anti_entropy::{serve_digest, serve_entries};

/// An error on its way to the client.
pub(crate) struct AppError(Error);

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let Error::StaleContext { message, key, versions, context } = self.0 {
            let body = KeyErrorBody { error: message, state: ReadResponse { key, versions, context } };
            return (StatusCode::CONFLICT, Json(body)).into_response();
        }
        if let Error::QuorumNotMet { message, clock } = &self.0 {
            // Unlike every other 503, the write happened: say so, with its clock.
            let body = serde_json::json!({"error": message, "written": true, "clock": clock});
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
        let status = match &self.0 {
            Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            Error::Conflict(_) | Error::StaleContext { .. } => StatusCode::CONFLICT,
            Error::Unavailable(_) | Error::QuorumNotMet { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!("request failed: {}", self.0);
        }
        (status, Json(ErrorBody { error: self.0.to_string() })).into_response()
    }
}

fn from_path(rejection: PathRejection) -> AppError {
    AppError(Error::InvalidInput(format!("bad key in path: {}", rejection.body_text())))
}

fn from_body(rejection: BytesRejection) -> AppError {
    let text = rejection.body_text();
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError(Error::TooLarge(format!("request body too large: {text}")))
    } else if text.contains(crate::net::server::BODY_TIMEOUT_MESSAGE) {
        AppError(Error::TimedOut(format!("cannot read request body: {text}")))
    } else {
        AppError(Error::InvalidInput(format!("cannot read request body: {text}")))
    }
}

/// Parses a JSON body; `empty` is what an empty body means (None = an empty body is an error).
fn parse<T: DeserializeOwned>(body: &Bytes, empty: Option<T>) -> Result<T, AppError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        if let Some(default) = empty {
            return Ok(default);
        }
        return Err(AppError(Error::InvalidInput("the request needs a JSON body".into())));
    }
    serde_json::from_slice(body).map_err(|e| AppError(Error::InvalidInput(format!("invalid JSON body: {e}"))))
}

type Shared = State<Arc<Replica>>;

fn from_query(rejection: QueryRejection) -> AppError {
    AppError(Error::InvalidInput(format!("bad query: {}", rejection.body_text())))
}

async fn read_key(
    State(replica): Shared,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Path(key) = key.map_err(from_path)?;
    let Query(query) = query.map_err(from_query)?;
    let set = coordinator::read(&replica, &key, query.r).await?;
    let context = set.context(replica.layout().n());
    if set.is_deleted() {
        // Still give the context (the tombstones' clocks, or zeros): a writer can always send one.
        let error = format!("key {key:?} not found");
        let body = KeyErrorBody { error, state: ReadResponse { key, versions: Vec::new(), context } };
        return Ok((StatusCode::NOT_FOUND, Json(body)).into_response());
    }
    Ok(Json(ReadResponse { key, versions: set.versions().to_vec(), context }).into_response())
}

/// `GET /kv?prefix=P&after=K&limit=N[&deleted=true]`: one page of keys (unknown parameters: 400).
async fn list_keys(
    State(replica): Shared,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KeyListResponse>, AppError> {
    let Query(query) = query.map_err(from_query)?;
    Ok(Json(replica.list(query).await?))
}

async fn write_key(
    State(replica): Shared,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WriteResponse>, AppError> {
    let Path(key) = key.map_err(from_path)?;
    let Query(query) = query.map_err(from_query)?;
    let request: WriteRequest = parse(&body.map_err(from_body)?, None)?;
    Ok(Json(coordinator::write(&replica, key, Some(request.value), request.context, query.w).await?))
}

async fn delete_key(
    State(replica): Shared,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WriteResponse>, AppError> {
    let Path(key) = key.map_err(from_path)?;
    let Query(query) = query.map_err(from_query)?;
    let request: DeleteRequest = parse(&body.map_err(from_body)?, Some(DeleteRequest::default()))?;
    Ok(Json(coordinator::write(&replica, key, None, request.context, query.w).await?))
}

async fn peer_read(State(replica): Shared, Signed(request): Signed<PeerReadRequest>) -> Result<Response, AppError> {
    Ok(Json(replica.serve_peer_read(request).await?).into_response())
}

/// The gate of every peer route, before the body is read: the sender's identity and cluster id
/// are present and — under a cluster key — signed, over the declared body length, recently
/// (see [`crate::net::auth`]); the cluster id is this replica's. A refusal is logged, and a
/// membership mismatch loudly: it is an operator's mistake that loses writes if ignored.
async fn peer_gate(State(replica): Shared, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let headers = request.headers();
    let length = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    let head = check_head(replica.cluster_key(), request.method().as_str(), &path, length, |name| {
        headers.get(name).and_then(|v| v.to_str().ok())
    });
    let me = replica.id();
    let head = match head {
        Ok(head) => head,
        Err(e) => {
            warn!("refused a peer request to {path}: {e}");
            return match e {
                HeadError::Malformed(m) => AppError(Error::InvalidInput(m)),
                HeadError::Unauthorized(m) => AppError(Error::Unauthorized(m)),
            }
            .into_response();
        }
    };
    if head.cluster != replica.cluster_id() {
        let message = format!(
            "MEMBERSHIP MISMATCH: replica {me} ({}) of cluster {} (members {}) refuses {path} from a replica \
             calling itself {} of cluster {}: the two were started with different member lists (N, or an \
             address spelled differently — localhost vs 127.0.0.1); fix --host/--hosts/--ports so that every \
             replica lists the same members",
            replica.layout().me().address(),
            replica.cluster_id(),
            replica.layout().describe(),
            head.from,
            head.cluster
        );
        error!("{message}");
        return AppError(Error::Conflict(message)).into_response();
    }
    request.extensions_mut().insert(head);
    next.run(request).await
}

/// A peer request body, authenticated (signature checked against the raw bytes, chained to the
/// head [`peer_gate`] checked) and parsed; its `from` must be the signed sender. Every peer route
/// takes its input through this extractor.
struct Signed<T>(T);

impl<T: DeserializeOwned + PeerRequest + Send> FromRequest<Arc<Replica>> for Signed<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, replica: &Arc<Replica>) -> Result<Self, AppError> {
        let head =
            request.extensions().get::<PeerHead>().cloned().ok_or_else(|| {
                AppError(Error::Unauthorized("a peer route was reached without its gate (a bug)".into()))
            })?;
        let signature = request.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = Bytes::from_request(request, replica).await.map_err(from_body)?;
        if let Some(key) = replica.cluster_key() {
            if !signature.is_some_and(|sig| check_body(key, &head, &body, &sig)) {
                return Err(AppError(Error::Unauthorized(format!(
                    "bad peer body signature ({SIGNATURE_HEADER}): the body is not the one the cluster key signed"
                ))));
            }
        }
        let parsed: T = parse(&body, None)?;
        if parsed.from() != head.from {
            return Err(AppError(Error::InvalidInput(format!(
                "the body says it is from replica {}, the {FROM_HEADER} header says {}",
                parsed.from(),
                head.from
            ))));
        }
        Ok(Signed(parsed))
    }
}

async fn replicate(State(replica): Shared, Signed(request): Signed<ReplicateRequest>) -> Result<Response, AppError> {
    Ok(Json(replica.apply_replication(request).await?).into_response())
}

async fn hello(State(replica): Shared, Signed(request): Signed<HelloRequest>) -> Result<StatusCode, AppError> {
    replica.peer_hello(request.from)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn digest(State(replica): Shared, Signed(request): Signed<DigestRequest>) -> Result<Response, AppError> {
    Ok(Json(serve_digest(&replica, request).await?).into_response())
}

async fn entries(State(replica): Shared, Signed(request): Signed<EntriesRequest>) -> Result<Response, AppError> {
    Ok(Json(serve_entries(&replica, request).await?).into_response())
}

/// `/health` and `/readyz`: 200 when serving reads and writes; 503 while recovering from the
/// peers (reads only), or when the store is failing (full disk, damage).
async fn health(State(replica): Shared) -> Response {
    let (id, cluster) = (replica.id(), replica.cluster_id());
    if let Some(problem) = replica.storage_problem().await {
        let body = serde_json::json!({"status": "unhealthy", "error": format!("the store is failing: {problem}"),
            "replica": id, "cluster": cluster});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if replica.is_recovering() {
        let body = serde_json::json!({"status": "recovering", "error": "recovering from peers: writes are refused",
            "replica": id, "cluster": cluster});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(serde_json::json!({"status": "ok", "replica": id, "cluster": cluster})).into_response()
}

async fn status(State(replica): Shared) -> Result<Response, AppError> {
    Ok(Json(replica.status().await?).into_response())
}

async fn no_route() -> AppError {
    AppError(Error::NotFound(
        "no such route; see GET/PUT/DELETE /kv/{key}, POST /replicate, GET /health, GET /status".into(),
    ))
}

async fn wrong_method() -> Response {
    let body = ErrorBody { error: "method not allowed on this route".into() };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// Largest client request body: room for a value at the limit even if every byte is escaped as
/// `\u00XX` (6 bytes each), plus the context. The value itself is checked after decoding.
pub(crate) fn client_body_limit(max_value_bytes: usize) -> usize {
    max_value_bytes.saturating_mul(6).saturating_add(64 * 1024)
}

/// The replica's HTTP application.
pub fn app(replica: Arc<Replica>) -> Router {
    let client_limit = client_body_limit(replica.max_value_bytes());
    // Peer routes: a request whose head is not signed with the cluster key is turned away before
    // its body is read, so an outsider cannot make a replica buffer a 64 MiB body.
    let peer_routes = Router::new()
        .route("/replicate", post(replicate).layer(DefaultBodyLimit::max(MAX_REPLICATE_BODY_BYTES)))
        .route("/peer/hello", post(hello))
        .route("/peer/digest", post(digest))
        .route("/peer/read", post(peer_read))
        .route("/peer/entries", post(entries))
        .route_layer(middleware::from_fn_with_state(replica.clone(), peer_gate));
    Router::new()
        .route("/kv", get(list_keys))
        .route("/kv/", get(list_keys))
        .route("/kv/{key}", get(read_key).put(write_key).delete(delete_key).layer(DefaultBodyLimit::max(client_limit)))
        .merge(peer_routes)
        .route("/health", get(health))
        .route("/readyz", get(health))
        .route("/status", get(status))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            let body = ErrorBody { error: "internal error (a bug: please report it)".into() };
            (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(replica)
}
