//! A typed HTTP client for one replica: used by the `vkv` CLI, the driver and the tests.
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

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::core::clock::VectorClock;
use crate::net::protocol::{
    DeleteRequest, ErrorBody, KeyErrorBody, ReadResponse, StatusResponse, WriteRequest, WriteResponse,
};

/// Bytes of a key sent as they are in the URL path: RFC 3986's unreserved set.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Time a client request may take, connection included.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a client call failed, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address cannot be turned into a URL.
    #[error("invalid server address {0:?}: expected host:port or http://host:port")]
    BadAddress(String),
    /// No answer: the replica is down, unreachable or too slow.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL tried.
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
    /// The key cannot be sent (empty, or `.`/`..`, which URLs treat as path steps).
    #[error("invalid key {0:?}: keys are non-empty and not \".\" or \"..\"")]
    InvalidKey(String),
    /// The replica answered something that is not the documented JSON.
    #[error("unexpected response: {0}")]
    BadResponse(String),
}

/// A client for one replica.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
}

impl Client {
    /// A client for the replica at `server` (`host:port` or `http://host:port`).
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
        let text = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
        let base = Url::parse(&text).map_err(|_| ClientError::BadAddress(server.to_string()))?;
        if base.scheme() != "http" || base.host_str().is_none() || base.cannot_be_a_base() {
            return Err(ClientError::BadAddress(server.to_string()));
        }
        let http = reqwest::Client::builder()
            // hickory, not getaddrinfo: works in the statically linked binary (see peer_http_client).
            .hickory_dns(true)
            .timeout(timeout)
            .local_address(source)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .build()
            .map_err(|e| ClientError::BadAddress(format!("{server}: {e}")))?;
        Ok(Client { base, http })
    }

    fn key_url(&self, key: &str) -> Result<Url, ClientError> {
        if key.is_empty() || key == "." || key == ".." {
            return Err(ClientError::InvalidKey(key.to_string()));
        }
        // Every byte outside the URL's unreserved set is percent-encoded by hand: `Url`'s own
        // segment push drops tabs and newlines (as URL parsing does), which would silently
        // address another key.
        let mut url = self.base.clone();
        url.set_path(&format!("/kv/{}", utf8_percent_encode(key, KEY_SEGMENT)));
        Ok(url)
    }

    fn path_url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url
    }

    /// Sends a request; a `404` for a key comes back as `Ok(None)` with its body (which carries
    /// the key's context), any other failure as the matching error.
    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<Result<T, Option<KeyErrorBody>>, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            reason: if e.is_timeout() { "timed out".into() } else { e.to_string() },
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable { url: url.to_string(), reason: e.to_string() })?;
        let for_key = url.path().starts_with("/kv/");
        if status == StatusCode::NOT_FOUND && for_key {
            return Ok(Err(serde_json::from_slice::<KeyErrorBody>(&bytes).ok()));
        }
        if status == StatusCode::CONFLICT && for_key {
            if let Ok(body) = serde_json::from_slice::<KeyErrorBody>(&bytes) {
                return Err(ClientError::Conflict { message: body.error, current: body.state });
            }
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
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

    fn expect_found<T>(found: Result<T, Option<KeyErrorBody>>) -> Result<T, ClientError> {
        found.map_err(|_| ClientError::BadResponse("404 for a write".into()))
    }

    /// Reads a key: `None` when it does not exist (or was deleted).
    pub async fn get(&self, key: &str) -> Result<Option<ReadResponse>, ClientError> {
        self.get_quorum(key, None).await
    }

    /// Reads a key from `r` replicas (`?r=`), merged and read-repaired; `None` reads one.
    pub async fn get_quorum(&self, key: &str, r: Option<usize>) -> Result<Option<ReadResponse>, ClientError> {
        let mut url = self.key_url(key)?;
        if let Some(r) = r {
            url.query_pairs_mut().append_pair("r", &r.to_string());
        }
        Ok(self.send(self.http.get(url.clone()), &url).await?.ok())
    }

    /// Reads a key for read-modify-write: always the versions and the context to write back
    /// with. A key never written or deleted has no versions, and a context of zeros or of its
    /// tombstones — writing with it succeeds only if nothing was written here since.
    pub async fn read(&self, key: &str) -> Result<ReadResponse, ClientError> {
        self.read_quorum(key, None).await
    }

    /// [`Client::read`] from `r` replicas (`?r=`), merged and read-repaired; `None` reads one.
    pub async fn read_quorum(&self, key: &str, r: Option<usize>) -> Result<ReadResponse, ClientError> {
        let mut url = self.key_url(key)?;
        if let Some(r) = r {
            url.query_pairs_mut().append_pair("r", &r.to_string());
        }
        match self.send(self.http.get(url.clone()), &url).await? {
            Ok(found) => Ok(found),
            Err(Some(absent)) => Ok(absent.state),
            Err(None) => Err(ClientError::BadResponse("a 404 without the key's context".into())),
        }
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

    /// Writes a value and waits until `w` replicas hold it (`?w=`); `None` answers once durable here.
    pub async fn put_quorum(
        &self,
        key: &str,
        value: &str,
        context: Option<VectorClock>,
        w: Option<usize>,
    ) -> Result<WriteResponse, ClientError> {
        let mut url = self.key_url(key)?;
        if let Some(w) = w {
            url.query_pairs_mut().append_pair("w", &w.to_string());
        }
        let body = WriteRequest { value: value.to_string(), context };
        Self::expect_found(self.send(self.http.put(url.clone()).json(&body), &url).await?)
    }

    /// Deletes a key (writes a tombstone); `context` works as for [`Client::put`].
    pub async fn delete(&self, key: &str, context: Option<VectorClock>) -> Result<WriteResponse, ClientError> {
        let url = self.key_url(key)?;
        let body = DeleteRequest { context };
        Self::expect_found(self.send(self.http.delete(url.clone()).json(&body), &url).await?)
    }

    /// The replica's status: members, outbox depths, peer reachability, key count.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        let url = self.path_url("/status");
        Self::expect_found(self.send(self.http.get(url.clone()), &url).await?)
    }

    /// True when the replica answers `GET /health`.
    pub async fn healthy(&self) -> bool {
        let url = self.path_url("/health");
        matches!(
            self.http.get(url).timeout(Duration::from_millis(500)).send().await,
            Ok(r) if r.status().is_success()
        )
    }
}
