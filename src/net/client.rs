//! A typed HTTP client for one replica (or a list of them, tried in turn): used by the `vkv` CLI,
//! the driver and the tests.
//!
//! Given several endpoints (`"a:7000,b:7000"`), a request goes to the next one only when the
//! connection itself failed — nothing was sent, so trying elsewhere cannot apply a write twice.
//! Any answer, a 4xx or 5xx included, is the answer. The endpoint that answered is used first from
//! then on.
//!
//! Size: one type, the public API's every call, with the failover over endpoints and the mapping
//! of answers (JSON bodies, statuses, transport errors) to [`ClientError`].
//!
//! Read-modify-write sends the context it read, so it can only replace what it saw; if the
//! replica holds a version the read did not show, the write is refused with
//! [`ClientError::Conflict`], which carries the current versions and context. [`Client::update`]
//! does the whole loop: read, compute, write with the context, and on a conflict compute again
//! from the versions the replica returned.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vkv::client::ClientError> {
//! let client = vkv::client::Client::new("127.0.0.1:7000")?;
//! // Add "eggs" to a comma-separated cart, merging any concurrent siblings; at most 5 tries.
//! let written = client
//!     .update("cart", 5, |current| {
//!         let mut items: Vec<&str> =
//!             current.versions.iter().filter_map(|v| v.value.as_deref()).flat_map(|v| v.split(',')).collect();
//!         items.push("eggs");
//!         items.sort();
//!         items.dedup();
//!         items.join(",")
//!     })
//!     .await?;
//! println!("written with clock {}", written.clock);
//! // A blind write (no context) replaces whatever this replica holds: last writer wins.
//! client.put("motd", "hello", None).await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::core::clock::VectorClock;
use crate::net::protocol::{
    DeleteRequest, ErrorBody, KeyErrorBody, KeyListResponse, QuorumErrorBody, ReadResponse, StatusResponse,
    WriteRequest, WriteResponse,
};

/// Bytes of a key sent as they are in the URL path: RFC 3986's unreserved set.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Time a client request may take, connection included.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a client call failed, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address cannot be turned into a URL.
    #[error("invalid server address {0:?}: expected host:port or http://host:port (several: comma-separated)")]
    BadAddress(String),
    /// No answer: the replica is down, unreachable or too slow.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL tried (every one, when several endpoints were).
        url: String,
        /// What the transport said: the cause first (`connection refused`, `dns error`,
        /// `timed out`), then the whole chain of errors.
        reason: String,
    },
    /// The request was sent but no answer came (timed out, or the connection broke): a write
    /// may or may not have been applied — read the key to know. Not retried elsewhere.
    #[error(
        "sent to {url}, but no answer: {reason} — the request may or may not have been applied (read the key to see)"
    )]
    NoAnswer {
        /// The URL the request went to.
        url: String,
        /// What the transport said.
        reason: String,
    },
    /// The replica refused the request (4xx): fix the request.
    #[error("rejected ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The server's `error` text.
        message: String,
    },
    /// The replica failed (5xx): retry later or elsewhere.
    #[error("server error ({status}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's `error` text.
        message: String,
    },
    /// A conditional write was refused (409): the replica holds versions the context did not
    /// cover. Nothing was written. `current` holds every version the replica has and the context
    /// to write back with, once merged.
    #[error("{message}")]
    Conflict {
        /// The server's `error` text.
        message: String,
        /// What the replica holds for the key now.
        current: ReadResponse,
    },
    /// A write with `w` was not acknowledged by `w` replicas in time (503), but it **is** durable
    /// at the replica that answered and queued for every peer. Only [`Client::write`] returns
    /// this; the older calls report it as a `Server` 503.
    #[error("{message}")]
    QuorumNotMet {
        /// The server's `error` text.
        message: String,
        /// The clock of the version written.
        clock: VectorClock,
    },
    /// The key cannot be sent (empty, or `.`/`..`, which URLs treat as path steps).
    #[error("invalid key {0:?}: keys are non-empty and not \".\" or \"..\"")]
    InvalidKey(String),
    /// An error answer (a 404, a 5xx, …) without vkv's JSON error body: something else answers at
    /// that address.
    #[error("{0} is not a vkv server (an error answer without vkv's JSON)")]
    NotVkv(String),
    /// The replica answered something that is not the documented JSON.
    #[error("unexpected response: {0}")]
    BadResponse(String),
}

impl ClientError {
    /// Reports [`ClientError::QuorumNotMet`] as the `Server` 503 callers written before it expect.
    fn quorum_as_server(self) -> ClientError {
        match self {
            ClientError::QuorumNotMet { message, .. } => ClientError::Server { status: 503, message },
            other => other,
        }
    }
}

/// What a transport failure was, for a person: the cause (`connection refused`, `dns error`,
/// `timed out`), then every error of the source chain, since reqwest's own text ("error sending
/// request") hides the reason.
fn transport_reason(e: &reqwest::Error) -> String {
    let mut chain: Vec<String> = Vec::new();
    let mut refused = false;
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        refused |=
            cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        let text = cause.to_string();
        if !chain.contains(&text) {
            chain.push(text);
        }
        source = cause.source();
    }
    let dns = chain.iter().any(|c| c.to_lowercase().contains("dns error"));
    let cause = if e.is_timeout() {
        "timed out"
    } else if refused {
        "connection refused"
    } else if dns {
        "dns error"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "the connection failed"
    };
    if chain.is_empty() {
        format!("{cause} ({e})")
    } else {
        format!("{cause} ({})", chain.join(": "))
    }
}

/// A client for one replica, or for several tried in turn on connection failures.
#[derive(Debug, Clone)]
pub struct Client {
    bases: Vec<Url>,
    /// Index in `bases` of the endpoint that answered last: tried first.
    current: Arc<AtomicUsize>,
    http: reqwest::Client,
}

fn parse_base(server: &str) -> Result<Url, ClientError> {
    let server = server.trim();
    let text = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
    // A replica has no default port: `127.0.0.1` alone would silently mean port 80.
    let authority = text.split_once("://").map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
    let has_port =
        authority.rsplit_once(':').is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !has_port {
        return Err(ClientError::BadAddress(server.to_string()));
    }
    let base = Url::parse(&text).map_err(|_| ClientError::BadAddress(server.to_string()))?;
    if base.scheme() != "http" || base.host_str().is_none() || base.cannot_be_a_base() {
        return Err(ClientError::BadAddress(server.to_string()));
    }
    Ok(base)
}

impl Client {
    /// A client for the replica at `server` (`host:port` or `http://host:port`), or for several
    /// comma-separated ones, tried in order when a connection fails.
    pub fn new(server: &str) -> Result<Client, ClientError> {
        Client::with_timeout(server, CLIENT_TIMEOUT)
    }

    /// A client whose requests give up after `timeout` (connection included).
    pub fn with_timeout(server: &str, timeout: Duration) -> Result<Client, ClientError> {
        Client::with_source(server, timeout, None)
    }

    /// Like [`Client::with_timeout`], opening its connections from the local address `source`
    /// (an address of this host; `None`: the OS picks). The latency report uses it to place
    /// clients in the regions of its simulated WAN.
    pub fn with_source(
        server: &str,
        timeout: Duration,
        source: Option<std::net::IpAddr>,
    ) -> Result<Client, ClientError> {
        let bases = server.split(',').map(parse_base).collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            // hickory, not getaddrinfo: works in the statically linked binary (see peer_http_client).
            .hickory_dns(true)
            .timeout(timeout)
            .local_address(source)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .build()
            .map_err(|e| ClientError::BadAddress(format!("{server}: {e}")))?;
        Ok(Client { bases, current: Arc::new(AtomicUsize::new(0)), http })
    }

    /// The endpoint (`host:port`) that answered last, or the first one if none has yet.
    pub fn answering_endpoint(&self) -> String {
        let endpoints = self.endpoints();
        endpoints[self.current.load(Ordering::Relaxed) % endpoints.len()].clone()
    }

    /// The endpoints, `host:port` each, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.bases.iter().map(|b| b.as_str().trim_end_matches('/').trim_start_matches("http://").to_string()).collect()
    }

    fn key_path(key: &str) -> Result<String, ClientError> {
        if key.is_empty() || key == "." || key == ".." {
            return Err(ClientError::InvalidKey(key.to_string()));
        }
        // Every byte outside the URL's unreserved set is percent-encoded by hand: `Url`'s own
        // segment push drops tabs and newlines (as URL parsing does), which would silently
        // address another key.
        Ok(format!("/kv/{}", utf8_percent_encode(key, KEY_SEGMENT)))
    }

    fn url(&self, index: usize, path: &str, query: &[(&str, String)]) -> Url {
        let mut url = self.bases[index].clone();
        url.set_path(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends a request to the first endpoint that accepts a connection (starting with the one
    /// that answered last). A `404` for a key comes back as `Ok(Err(body))` (the body carries
    /// the key's context); any other failure as the matching error.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Result<T, KeyErrorBody>, ClientError> {
        let count = self.bases.len();
        let first = self.current.load(Ordering::Relaxed) % count;
        let mut failures = Vec::new();
        for step in 0..count {
            let index = (first + step) % count;
            let url = self.url(index, path, query);
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(body) = &body {
                request = request.header(CONTENT_TYPE, "application/json").body(body.clone());
            }
            match request.send().await {
                Ok(response) => {
                    self.current.store(index, Ordering::Relaxed);
                    return self.answer(response, index, &url).await;
                }
                // Only a failed connection moves on: once a request was sent, it may have been applied.
                Err(e) if e.is_connect() => failures.push((url.to_string(), transport_reason(&e))),
                Err(e) => return Err(ClientError::NoAnswer { url: url.to_string(), reason: transport_reason(&e) }),
            }
        }
        Err(match failures.as_slice() {
            [(url, reason)] => ClientError::Unreachable { url: url.clone(), reason: reason.clone() },
            many => ClientError::Unreachable {
                url: format!("any of {} endpoints", many.len()),
                reason: many.iter().map(|(u, r)| format!("{u}: {r}")).collect::<Vec<_>>().join("; "),
            },
        })
    }

    /// Turns an answer into the caller's result (see [`Client::send`]).
    async fn answer<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        index: usize,
        url: &Url,
    ) -> Result<Result<T, KeyErrorBody>, ClientError> {
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::NoAnswer { url: url.to_string(), reason: transport_reason(&e) })?;
        let not_vkv = || ClientError::NotVkv(self.endpoints()[index].clone());
        let for_key = url.path().starts_with("/kv/");
        if status == StatusCode::NOT_FOUND {
            if for_key {
                return serde_json::from_slice::<KeyErrorBody>(&bytes).map(Err).map_err(|_| not_vkv());
            }
            if serde_json::from_slice::<ErrorBody>(&bytes).is_err() {
                return Err(not_vkv());
            }
        }
        if status == StatusCode::CONFLICT && for_key {
            if let Ok(body) = serde_json::from_slice::<KeyErrorBody>(&bytes) {
                return Err(ClientError::Conflict { message: body.error, current: body.state });
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            if let Ok(body) = serde_json::from_slice::<QuorumErrorBody>(&bytes) {
                if body.written {
                    return Err(ClientError::QuorumNotMet { message: body.error, clock: body.clock });
                }
            }
        }
        if !status.is_success() {
            let Ok(message) = serde_json::from_slice::<ErrorBody>(&bytes).map(|b| b.error) else {
                // Every answer of vkv's, errors included, is JSON: this is something else.
                return Err(not_vkv());
            };
            let status = status.as_u16();
            return Err(if status < 500 {
                ClientError::Rejected { status, message }
            } else {
                ClientError::Server { status, message }
            });
        }
        serde_json::from_slice(&bytes)
            .map(Ok)
            .map_err(|e| ClientError::BadResponse(format!("{e}: {}", String::from_utf8_lossy(&bytes))))
    }

    fn expect_found<T>(found: Result<T, KeyErrorBody>) -> Result<T, ClientError> {
        found.map_err(|_| ClientError::BadResponse("404 for a write".into()))
    }

    fn json_body<T: serde::Serialize>(body: &T) -> Option<Vec<u8>> {
        Some(serde_json::to_vec(body).expect("request bodies serialise"))
    }

    fn optional_query(name: &'static str, k: Option<usize>) -> Vec<(&'static str, String)> {
        k.map(|k| (name, k.to_string())).into_iter().collect()
    }

    /// Reads a key: `None` when it does not exist (or was deleted).
    pub async fn get(&self, key: &str) -> Result<Option<ReadResponse>, ClientError> {
        self.get_quorum(key, None).await
    }

    /// Reads a key from `r` replicas (`?r=`), merged and read-repaired; `None` reads one.
    pub async fn get_quorum(&self, key: &str, r: Option<usize>) -> Result<Option<ReadResponse>, ClientError> {
        self.read_quorum(key, r).await.map(|read| (!read.versions.is_empty()).then_some(read))
    }

    /// Reads a key for read-modify-write: always the versions and the context to write back
    /// with. A key never written or deleted has no versions, and a context of zeros or of its
    /// tombstones — writing with it succeeds only if nothing was written here since.
    pub async fn read(&self, key: &str) -> Result<ReadResponse, ClientError> {
        self.read_quorum(key, None).await
    }

    /// [`Client::read`] from `r` replicas (`?r=`), merged and read-repaired; `None` reads one.
    pub async fn read_quorum(&self, key: &str, r: Option<usize>) -> Result<ReadResponse, ClientError> {
        let path = Self::key_path(key)?;
        Ok(match self.send(Method::GET, &path, &Self::optional_query("r", r), None).await? {
            Ok(found) => found,
            Err(absent) => absent.state,
        })
    }

    /// Read-modify-write with the context: reads `key`, writes `compute(what was read)` with
    /// the context read, and on a conflict computes again from the versions the replica
    /// returned, at most `tries` times in all. `compute` sees every sibling: merge them. Returns
    /// the write, or the last [`ClientError::Conflict`] if every try met one.
    pub async fn update(
        &self,
        key: &str,
        tries: usize,
        mut compute: impl FnMut(&ReadResponse) -> String,
    ) -> Result<WriteResponse, ClientError> {
        let mut current = self.read(key).await?;
        let mut attempt = 1;
        loop {
            let value = compute(&current);
            match self.put(key, &value, Some(current.context.clone())).await {
                Err(ClientError::Conflict { current: now, .. }) if attempt < tries => {
                    current = now;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// Writes a value. With `context` (the one read), a conditional write: it replaces what
    /// that read showed, or fails with [`ClientError::Conflict`] if the replica holds more.
    /// Without, a blind write: it replaces whatever this replica holds.
    pub async fn put(
        &self,
        key: &str,
        value: &str,
        context: Option<VectorClock>,
    ) -> Result<WriteResponse, ClientError> {
        self.put_quorum(key, value, context, None).await
    }

    /// Writes a value and waits until `w` replicas hold it (`?w=`); `None` answers once durable
    /// here. An unmet `w` is a `Server` 503 (see [`Client::write`] to tell it apart).
    pub async fn put_quorum(
        &self,
        key: &str,
        value: &str,
        context: Option<VectorClock>,
        w: Option<usize>,
    ) -> Result<WriteResponse, ClientError> {
        self.write(key, Some(value), context, w).await.map_err(ClientError::quorum_as_server)
    }

    /// A write (`value = Some`) or a delete (`None`, a tombstone), with an optional context and
    /// `w`. An unmet `w` is [`ClientError::QuorumNotMet`]: the write is durable at the replica
    /// that answered, with the clock it carries.
    pub async fn write(
        &self,
        key: &str,
        value: Option<&str>,
        context: Option<VectorClock>,
        w: Option<usize>,
    ) -> Result<WriteResponse, ClientError> {
        let path = Self::key_path(key)?;
        let query = Self::optional_query("w", w);
        let (method, body) = match value {
            Some(value) => (Method::PUT, Self::json_body(&WriteRequest { value: value.to_string(), context })),
            None => (Method::DELETE, Self::json_body(&DeleteRequest { context })),
        };
        Self::expect_found(self.send(method, &path, &query, body).await?)
    }

    /// Deletes a key (writes a tombstone); `context` works as for [`Client::put`].
    pub async fn delete(&self, key: &str, context: Option<VectorClock>) -> Result<WriteResponse, ClientError> {
        self.write(key, None, context, None).await.map_err(ClientError::quorum_as_server)
    }

    /// One page of keys in byte order (`GET /kv`): those starting with `prefix`, strictly after
    /// `after`, at most `limit` (the server's default without). Pass the answer's `next` as
    /// `after` for the next page; it is `None` on the last.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<KeyListResponse, ClientError> {
        let mut query = Vec::new();
        if !prefix.is_empty() {
            query.push(("prefix", prefix.to_string()));
        }
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        query.extend(Self::optional_query("limit", limit));
        Self::expect_found(self.send(Method::GET, "/kv", &query, None).await?)
    }

    /// The replica's status: members, outbox depths, peer reachability, key count.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        Self::expect_found(self.send(Method::GET, "/status", &[], None).await?)
    }

    /// True when the replica (the first endpoint) answers `GET /health`.
    pub async fn healthy(&self) -> bool {
        let url = self.url(0, "/health", &[]);
        matches!(
            self.http.get(url).timeout(Duration::from_millis(500)).send().await,
            Ok(r) if r.status().is_success()
        )
    }
}
