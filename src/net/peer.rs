//! The peer protocol's HTTP client: one per replica, handed to its senders, anti-entropy, the
//! coordinator and the status probes. It signs every request (see [`crate::net::auth`]) and
//! turns every failure into a [`PeerError`] that says what the caller should do about it.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::cluster::Member;
use crate::net::auth::PeerAuth;

/// Time allowed to open a connection to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed for one peer request, connection included, unless the caller sets another.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a health probe waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a peer request failed, classified for the caller's next step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No answer: the peer is down, unreachable or too slow. Retry later (back off).
    #[error("{path}: {reason}")]
    Unreachable {
        /// The route called.
        path: String,
        /// What the transport said ("timed out", "connection refused or unreachable", …).
        reason: String,
    },
    /// The peer refused the request's content (400, 413): something in it is wrong; retrying it
    /// unchanged will fail again.
    #[error("{path}: peer answered {status}: {message}")]
    Refused {
        /// The route called.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The peer's `error` text.
        message: String,
    },
    /// The peer does not count this replica as the member it claims to be (409 on a peer
    /// route): the two were started with different member lists. An operator must act.
    #[error("{path}: peer refuses this replica's membership: {message}")]
    Membership {
        /// The route called.
        path: String,
        /// The peer's `error` text.
        message: String,
    },
    /// The peer answered with another failure (401: another cluster key; 5xx: it is failing or
    /// recovering). Retry later.
    #[error("{path}: peer answered {status}: {message}")]
    Failed {
        /// The route called.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The peer's `error` text.
        message: String,
    },
    /// A 2xx whose body is not the expected JSON: a peer of another version, or not vkv.
    #[error("{path}: bad answer: {reason}")]
    BadAnswer {
        /// The route called.
        path: String,
        /// What did not parse.
        reason: String,
    },
}

impl PeerError {
    /// The peer's answer to a failed request, classified.
    fn from_status(path: &str, status: reqwest::StatusCode, body: &str) -> PeerError {
        let message = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.trim().to_string());
        let path = path.to_string();
        match status {
            reqwest::StatusCode::BAD_REQUEST | reqwest::StatusCode::PAYLOAD_TOO_LARGE => {
                PeerError::Refused { path, status: status.as_u16(), message }
            }
            reqwest::StatusCode::CONFLICT => PeerError::Membership { path, message },
            _ => PeerError::Failed { path, status: status.as_u16(), message },
        }
    }

    fn transport(path: &str, e: &reqwest::Error) -> PeerError {
        let reason = if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            "connection refused or unreachable".to_string()
        } else {
            e.to_string()
        };
        PeerError::Unreachable { path: path.to_string(), reason }
    }
}

/// How a replica's node and background tasks reach its peers. [`PeerClient`] is the real one;
/// tests put a fake in its place to drive the sender's and the coordinator's decisions without
/// HTTP.
pub trait PeerTransport: Clone + Send + Sync + 'static {
    /// The id of the replica this transport speaks for.
    fn from(&self) -> crate::core::cluster::ReplicaId;

    /// A `POST path` to `peer`, answered with JSON. `timeout` overrides [`PEER_TIMEOUT`].
    fn call<Req: Serialize + Sync, Resp: DeserializeOwned>(
        &self,
        peer: &Member,
        path: &str,
        body: &Req,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Resp, PeerError>> + Send;

    /// A `POST path` to `peer` whose answer carries nothing the caller needs.
    fn notify<Req: Serialize + Sync>(
        &self,
        peer: &Member,
        path: &str,
        body: &Req,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<(), PeerError>> + Send;
}

impl PeerTransport for PeerClient {
    fn from(&self) -> crate::core::cluster::ReplicaId {
        self.auth.from()
    }

    async fn call<Req: Serialize + Sync, Resp: DeserializeOwned>(
        &self,
        peer: &Member,
        path: &str,
        body: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, PeerError> {
        let response = self.post(peer, path, body, timeout).await?;
        response.json().await.map_err(|e| PeerError::BadAnswer { path: path.to_string(), reason: e.to_string() })
    }

    async fn notify<Req: Serialize + Sync>(
        &self,
        peer: &Member,
        path: &str,
        body: &Req,
        timeout: Option<Duration>,
    ) -> Result<(), PeerError> {
        self.post(peer, path, body, timeout).await.map(drop)
    }
}

/// A replica's client for the peer protocol.
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    auth: PeerAuth,
}

impl PeerClient {
    /// A client signing with `auth`, opening connections from `source` when given.
    pub fn new(source: Option<IpAddr>, auth: PeerAuth) -> Self {
        let http = reqwest::Client::builder()
            // Connections leave from this address when given (--peer-source): on a host with
            // several addresses, peers and the network see which one this replica is.
            .local_address(source)
            // Resolve peer names with hickory (reads /etc/resolv.conf and /etc/hosts), not
            // getaddrinfo: the release binary is linked statically and glibc's NSS does not work
            // in that case.
            .hickory_dns(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(PEER_TIMEOUT)
            // Shorter than a replica's idle timeout (--idle-timeout-secs, 30 s by default), so a
            // pooled connection is dropped here before the peer closes it.
            .pool_idle_timeout(Duration::from_secs(10))
            .build()
            .expect("a plain HTTP client always builds");
        PeerClient { http, auth }
    }

    /// The signer: this replica's id, cluster id and key.
    pub fn auth(&self) -> &PeerAuth {
        &self.auth
    }

    async fn post<Req: Serialize>(
        &self,
        peer: &Member,
        path: &str,
        body: &Req,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, PeerError> {
        let bytes = serde_json::to_vec(body).expect("protocol types always serialise");
        let mut request = self
            .http
            .post(format!("http://{}{path}", peer.address()))
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in self.auth.headers(path, &bytes) {
            request = request.header(name, value);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.body(bytes).send().await.map_err(|e| PeerError::transport(path, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(PeerError::from_status(path, status, &text))
    }

    /// Probes `peer`'s `/health`: `None` if it did not answer within [`PROBE_TIMEOUT`], else the
    /// cluster id its answer gives (`Some(None)`: answered, but without one). Any status counts
    /// as an answer ("recovering" and "unhealthy" replicas are reachable).
    pub async fn probe(&self, peer: &Member) -> Option<Option<String>> {
        let url = format!("http://{}/health", peer.address());
        let response = self.http.get(url).timeout(PROBE_TIMEOUT).send().await.ok()?;
        let body = response.json::<serde_json::Value>().await.ok();
        Some(body.and_then(|v| v["cluster"].as_str().map(str::to_string)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_for_the_callers_next_step() {
        let classify = |status: u16, body: &str| {
            PeerError::from_status("/replicate", reqwest::StatusCode::from_u16(status).unwrap(), body)
        };
        assert!(
            matches!(classify(400, r#"{"error":"bad key"}"#), PeerError::Refused { status: 400, message, .. } if message == "bad key")
        );
        assert!(matches!(classify(413, "too large"), PeerError::Refused { status: 413, .. }));
        assert!(matches!(classify(409, r#"{"error":"MEMBERSHIP MISMATCH"}"#), PeerError::Membership { .. }));
        assert!(matches!(classify(401, "{}"), PeerError::Failed { status: 401, .. }));
        assert!(matches!(classify(503, r#"{"error":"recovering"}"#), PeerError::Failed { status: 503, .. }));
        let shown = classify(500, r#"{"error":"disk full"}"#).to_string();
        assert_eq!(shown, "/replicate: peer answered 500: disk full");
    }
}
