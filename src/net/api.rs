//! The HTTP edge: axum routes translating JSON to replica calls and errors to status codes.
//!
//! Nothing here decides anything about causality; handlers parse, call the replica, and render.
//! Every error, including axum's own extractor rejections (bad path encoding, oversized body,
//! unknown route), leaves as `{"error": "..."}` with a 4xx/5xx status.
//!
//! Size: every route's handler with its OpenAPI annotation (the description is generated from
//! them, see `openapi`), the one error mapping, and the peer routes' gate and signed extractor.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, RawQuery, Request, State};
use axum::handler::Handler;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tracing::{error, warn};

use crate::core::versions::SiblingSet;
use crate::error::Error;
use crate::net::auth::{check_body, check_head, HeadError, PeerHead, FROM_HEADER, SIGNATURE_HEADER};
use crate::net::page::{self, read_only_cors};
use crate::net::protocol::{
    DeleteRequest, DigestRequest, EntriesRequest, ErrorBody, HealthBody, HelloRequest, KeyErrorBody, KeyListResponse,
    ListQuery, PeerReadRequest, PeerRequest, ReadQuery, ReadResponse, ReplicateRequest, StatusResponse, WriteQuery,
    WriteRequest, WriteResponse, MAX_REPLICATE_BODY_BYTES,
};
use crate::net::{exporter, openapi};
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
            tracing::warn!("request refused (503): {message}");
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
        // One line per answer that says something about the replica: an expected refusal
        // (recovering, quorum not met, overload) is a warning, only a failing store an error.
        // Client mistakes (4xx) are the client's to see, not the operator's.
        match status {
            StatusCode::INTERNAL_SERVER_ERROR => tracing::error!("request failed: {}", self.0),
            s if s.is_server_error() => tracing::warn!("request refused ({}): {}", s.as_u16(), self.0),
            _ => tracing::debug!("request rejected ({}): {}", status.as_u16(), self.0),
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
    // Every body is a JSON object (`null` too where the body is optional): serde would also
    // read a struct from an array of its fields (`["v"]` as a write of "v"), which is not the API.
    let text = body.trim_ascii_start();
    let optional_null = empty.is_some() && body.trim_ascii() == b"null";
    if !text.starts_with(b"{") && !optional_null {
        return Err(AppError(Error::InvalidInput("invalid JSON body: expected a JSON object".into())));
    }
    serde_json::from_slice(body).map_err(|e| AppError(Error::InvalidInput(format!("invalid JSON body: {e}"))))
}

type Shared = State<Arc<Replica>>;

fn from_query(rejection: QueryRejection) -> AppError {
    AppError(Error::InvalidInput(format!("bad query: {}", rejection.body_text())))
}

/// `GET /kv/{key}`: the key's value and clock, or every concurrent version and their context.
#[utoipa::path(get, path = "/kv/{key}", tag = "keys",
    params(("key" = String, Path, description = "The key: 1 to 1024 bytes of UTF-8, not `.` or `..` (longer: 413)",
        min_length = 1), ReadQuery),
    responses(
        (status = 200, description = "The versions (several: a conflict) and the context to write back with",
            body = ReadResponse),
        (status = 404, description = "Not found or deleted; the context for a first write", body = KeyErrorBody),
        (status = 400, description = "Bad key or query", body = ErrorBody),
        (status = 413, description = "The key is longer than 1024 bytes", body = ErrorBody),
        (status = 503, description = "`r` replicas did not answer", body = ErrorBody)))]
pub(crate) async fn read_key(
    State(replica): Shared,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Path(key) = key.map_err(from_path)?;
    let Query(query) = query.map_err(from_query)?;
    match query.r {
        // A local read: the answer rendered once per stored set and shared (the read cache).
        None => {
            let cached = coordinator::read_local(&replica, &key, render_read).await?;
            Ok(read_answer(cached.is_deleted(), cached.body()))
        }
        Some(r) => {
            let set = coordinator::read(&replica, &key, r).await?;
            Ok(read_answer(set.is_deleted(), render_read(&key, &set, replica.layout().n())))
        }
    }
}

/// The answer to a read: 200, or 404 for a key that is absent or deleted.
fn read_answer(deleted: bool, body: Bytes) -> Response {
    let status = if deleted { StatusCode::NOT_FOUND } else { StatusCode::OK };
    (status, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// The body of a read of `key` that found `set`: [`ReadResponse`], or for a key that is absent
/// or deleted, [`KeyErrorBody`] — still with the context (the tombstones' clocks, or zeros), so
/// a writer can always send one.
fn render_read(key: &str, set: &SiblingSet, n: usize) -> Bytes {
    let context = set.context(n);
    let key = key.to_string();
    let encoded = if set.is_deleted() {
        let error = format!("key {key:?} not found");
        serde_json::to_vec(&KeyErrorBody { error, state: ReadResponse { key, versions: Vec::new(), context } })
    } else {
        serde_json::to_vec(&ReadResponse { key, versions: set.versions().to_vec(), context })
    };
    Bytes::from(encoded.expect("a read's answer always serialises"))
}

/// `GET /kv?prefix=P&after=K&limit=N[&deleted=true]`: one page of keys (unknown parameters: 400).
#[utoipa::path(get, path = "/kv", tag = "keys", params(ListQuery), responses(
    (status = 200, description = "One page of keys in byte order; `next` is the cursor for the next page",
        body = KeyListResponse),
    (status = 400, description = "A bad or unknown parameter", body = ErrorBody)))]
pub(crate) async fn list_keys(
    State(replica): Shared,
    RawQuery(raw): RawQuery,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KeyListResponse>, AppError> {
    // The query decoder replaces bytes that are not UTF-8 with U+FFFD; a key never holds those
    // bytes, so such a prefix or cursor is refused, as a key in the path is.
    for pair in raw.as_deref().unwrap_or("").split('&') {
        if percent_encoding::percent_decode_str(&pair.replace('+', " ")).decode_utf8().is_err() {
            return Err(AppError(Error::InvalidInput(format!(
                "bad query: {pair:?} is not UTF-8 once percent-decoded"
            ))));
        }
    }
    let Query(query) = query.map_err(from_query)?;
    Ok(Json(replica.list(query).await?))
}

/// The answers PUT and DELETE share when a write is refused or half-done, for the OpenAPI
/// description.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: it only describes responses
enum WriteRefusals {
    #[response(status = 400, description = "Bad key, query, body or context")]
    BadRequest(ErrorBody),
    #[response(
        status = 409,
        description = "The context does not cover a version the replica holds: nothing was written"
    )]
    Conflict(KeyErrorBody),
    #[response(status = 408, description = "The body did not arrive in time")]
    TimedOut(ErrorBody),
    #[response(status = 413, description = "The key, the value or the body is too large")]
    TooLarge(ErrorBody),
    #[response(
        status = 503,
        description = "Recovering (nothing written), or `w` not met: then `written` is true and `clock` is the write's, durable here"
    )]
    Unavailable(ErrorBody),
}

/// `PUT /kv/{key}`: writes a value, answered once it is durable here (and at `w` replicas).
#[utoipa::path(put, path = "/kv/{key}", tag = "keys",
    params(("key" = String, Path, description = "The key: 1 to 1024 bytes of UTF-8, not `.` or `..` (longer: 413)",
        min_length = 1), WriteQuery),
    request_body = WriteRequest,
    responses(
        (status = 200, description = "Written and durable: the new version's clock", body = WriteResponse),
        WriteRefusals))]
pub(crate) async fn write_key(
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

/// `DELETE /kv/{key}`: writes a tombstone, which replicates and conflicts like a value.
#[utoipa::path(delete, path = "/kv/{key}", tag = "keys",
    params(("key" = String, Path, description = "The key: 1 to 1024 bytes of UTF-8, not `.` or `..` (longer: 413)",
        min_length = 1), WriteQuery),
    request_body(content = Option<DeleteRequest>, description = "Optional: the context read"),
    responses(
        (status = 200, description = "Deleted (a tombstone), durable: its clock", body = WriteResponse),
        WriteRefusals))]
pub(crate) async fn delete_key(
    State(replica): Shared,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WriteResponse>, AppError> {
    let Path(key) = key.map_err(from_path)?;
    let Query(query) = query.map_err(from_query)?;
    // No body, `null` and `{}` all mean a delete without a context.
    let request: Option<DeleteRequest> = parse(&body.map_err(from_body)?, Some(None))?;
    let request = request.unwrap_or_default();
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

/// `/livez`: 200 whenever the process answers HTTP at all — its event loop runs, whatever the
/// state of its store. A failed liveness check means restart the process; a failing store or a
/// recovery in progress is not cured by a restart, so it does not fail this check.
#[utoipa::path(get, path = "/livez", tag = "operations",
    responses((status = 200, description = "The process answers", body = HealthBody)))]
pub(crate) async fn livez(State(replica): Shared) -> Json<HealthBody> {
    Json(HealthBody {
        status: "alive".into(),
        replica: replica.id(),
        cluster: replica.cluster_id().to_string(),
        error: None,
    })
}

/// `/readyz` and `/health`: 200 when serving reads and writes; 503 while recovering from the
/// peers (reads only), or when the store is failing (full disk, damage) — take the replica out
/// of a load balancer's rotation, do not restart it.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Serving reads and writes", body = HealthBody),
    (status = 503, description = "Recovering (reads only) or the store is failing", body = HealthBody)))]
pub(crate) async fn readyz(state: Shared) -> Response {
    health(state).await
}

/// `/health`: the same answer as `/readyz`.
#[utoipa::path(get, path = "/health", tag = "operations", responses(
    (status = 200, description = "Serving reads and writes", body = HealthBody),
    (status = 503, description = "Recovering (reads only) or the store is failing", body = HealthBody)))]
pub(crate) async fn health(State(replica): Shared) -> Response {
    let (status, error) = replica.readiness().await;
    let code = if error.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body =
        HealthBody { status: status.into(), replica: replica.id(), cluster: replica.cluster_id().to_string(), error };
    (code, Json(body)).into_response()
}

/// `/status`: this replica's view of the cluster, its peers probed now.
#[utoipa::path(get, path = "/status", tag = "operations", responses(
    (status = 200, description = "Members, outbox depth and reachability per peer, key count", body = StatusResponse),
    (status = 500, description = "The store cannot be read", body = ErrorBody)))]
pub(crate) async fn status(State(replica): Shared) -> Result<Response, AppError> {
    Ok(Json(replica.status().await?).into_response())
}

async fn no_route() -> AppError {
    AppError(Error::NotFound(
        "no such route; see GET /kv (list), GET/PUT/DELETE /kv/{key}, GET /status, /health, /livez, /readyz, /metrics, /openapi.json, / (the cluster page)".into(),
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
    exporter::register(&replica);
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
        // The read-only client routes carry CORS (GET only) so the cluster page can read every member.
        .route(
            "/kv/{key}",
            get(read_key.layer(read_only_cors()))
                .put(write_key)
                .delete(delete_key)
                .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(client_limit)),
        )
        .merge(peer_routes)
        .route("/health", get(health.layer(read_only_cors())))
        .route("/readyz", get(readyz))
        .route("/livez", get(livez))
        .route("/status", get(status.layer(read_only_cors())))
        .route("/metrics", get(exporter::serve))
        .route("/openapi.json", get(openapi::serve))
        .route("/decisions", get(page::decisions.layer(read_only_cors())))
        .route("/", get(page::page))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            let body = ErrorBody { error: "internal error (a bug: please report it)".into() };
            (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
        }))
        // Every request counted and timed (the metrics), but no per-request log line or span:
        // tower-http's TraceLayer cost 4% of a replica's GET throughput even with its DEBUG lines
        // filtered out, and it logged failures a second time in its own format. Errors are logged
        // once, by the error path above, at a level that fits.
        .layer(exporter::TrackLayer)
        .with_state(replica)
}
