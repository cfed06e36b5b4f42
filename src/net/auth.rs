//! Peer authentication and membership: every peer-to-peer request says who sends it and which
//! cluster it believes in, and — under a cluster key — proves both before its body is read.
//!
//! # Headers of a peer request
//!
//! ```text
//!   x-vkv-from       sender's replica id
//!   x-vkv-cluster    the sender's cluster id: a hash of N and the ordered member list
//!   x-vkv-time       sender's clock, Unix milliseconds
//!   x-vkv-nonce      random, 16 hex digits
//!   x-vkv-auth       HMAC-SHA256 (hex) of "vkv-peer-1", method, path, cluster, from, time,
//!                    nonce and Content-Length, one per line
//!   x-vkv-signature  HMAC-SHA256 (hex) of the x-vkv-auth tag followed by the body
//! ```
//!
//! The receiver checks `x-vkv-auth` from the headers alone — before a byte of the body is read,
//! so an outsider cannot make a replica buffer a large body — then reads at most the declared
//! length and checks `x-vkv-signature` against it. `x-vkv-cluster` must equal the receiver's own
//! cluster id: two replicas that disagree on the members (one started with `localhost` where the
//! others say `127.0.0.1`, say) would give the same clock position to two members and lose
//! writes, so they refuse to exchange data (409), and both log it.
//!
//! What this protects: only holders of the cluster key can make a replica read a peer body,
//! merge versions or reset its senders' backoff; a tampered body or header fails; the key never
//! crosses the network. What it does not: client routes are open to anyone who can reach the
//! port; traffic is not encrypted (plain HTTP); a request recorded on the wire can be replayed
//! within the time window ([`MAX_CLOCK_SKEW_MS`]) — harmless by design, since a merge is a join
//! and re-applying a version changes nothing. Replicas' clocks must agree within that window
//! (NTP does far better).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::core::cluster::{Layout, ReplicaId};

/// The sender's replica id.
pub const FROM_HEADER: &str = "x-vkv-from";
/// The sender's cluster id ([`cluster_id`]).
pub const CLUSTER_HEADER: &str = "x-vkv-cluster";
/// The sender's clock, Unix milliseconds.
pub const TIME_HEADER: &str = "x-vkv-time";
/// A random nonce.
pub const NONCE_HEADER: &str = "x-vkv-nonce";
/// The signature of the request's head (checked before the body is read).
pub const AUTH_HEADER: &str = "x-vkv-auth";
/// The signature of the body (chained to the head's).
pub const SIGNATURE_HEADER: &str = "x-vkv-signature";
/// Environment variable that may hold the key itself (instead of `--cluster-key-file`).
pub const KEY_ENV: &str = "VKV_CLUSTER_KEY";
/// Shortest key accepted, in bytes: a guessable key protects nothing.
pub const MIN_KEY_BYTES: usize = 16;
/// Largest difference accepted between a peer request's time and the receiver's clock.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

type HmacSha256 = Hmac<Sha256>;

/// The cluster's shared secret.
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(…)")
    }
}

impl ClusterKey {
    /// A key from its text (surrounding whitespace ignored); at least [`MIN_KEY_BYTES`] bytes.
    pub fn new(text: &str) -> Result<ClusterKey, String> {
        let key = text.trim();
        if key.len() < MIN_KEY_BYTES {
            return Err(format!("the cluster key must be at least {MIN_KEY_BYTES} bytes, got {}", key.len()));
        }
        Ok(ClusterKey(key.as_bytes().to_vec()))
    }

    /// Reads the key from a file.
    pub fn from_file(path: &Path) -> Result<ClusterKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--cluster-key-file {}: cannot read it: {e}", path.display()))?;
        ClusterKey::new(&text).map_err(|e| format!("--cluster-key-file {}: {e}", path.display()))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// The hex signature of `parts`, concatenated.
    fn sign_parts(&self, parts: &[&[u8]]) -> String {
        let mut mac = self.mac();
        for p in parts {
            mac.update(p);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// True when `signature` (hex) signs `parts`, concatenated. Constant-time compare.
    fn verify_parts(&self, parts: &[&[u8]], signature: &str) -> bool {
        let Ok(tag) = hex::decode(signature.trim()) else {
            return false;
        };
        let mut mac = self.mac();
        for p in parts {
            mac.update(p);
        }
        mac.verify_slice(&tag).is_ok()
    }
}

/// The cluster id: the first 16 hex digits of SHA-256 over N and the ordered member list. Equal
/// on two replicas exactly when they agree on who the members are and in which clock order.
pub fn cluster_id(layout: &Layout) -> String {
    let text = format!("vkv-cluster-1\nN={}\n{}", layout.n(), layout.fingerprint());
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// The head of a peer request, as the receiver sees it before reading the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHead {
    /// The sender's id.
    pub from: ReplicaId,
    /// The sender's cluster id.
    pub cluster: String,
    /// The head's signature (empty without a cluster key): the body's signature chains to it.
    pub tag: String,
}

/// Why a peer request's head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// A header is missing or malformed (no cluster key needed to tell).
    #[error("{0}")]
    Malformed(String),
    /// The signature does not verify, or the time is outside the window.
    #[error("{0}")]
    Unauthorized(String),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn head_text(method: &str, path: &str, cluster: &str, from: ReplicaId, time: u64, nonce: &str, len: u64) -> String {
    format!("vkv-peer-1\n{method}\n{path}\n{cluster}\n{from}\n{time}\n{nonce}\n{len}")
}

/// Signs this replica's peer requests: its id, its cluster id and (unless `--insecure`) the key.
#[derive(Debug, Clone)]
pub struct PeerAuth {
    from: ReplicaId,
    cluster: String,
    key: Option<ClusterKey>,
}

impl PeerAuth {
    /// The signer for replica `layout.self_id()` of `layout`.
    pub fn new(layout: &Layout, key: Option<ClusterKey>) -> Self {
        PeerAuth { from: layout.self_id(), cluster: cluster_id(layout), key }
    }

    /// A signer with explicit parts (tests, tools).
    pub fn with_parts(from: ReplicaId, cluster: impl Into<String>, key: Option<ClusterKey>) -> Self {
        PeerAuth { from, cluster: cluster.into(), key }
    }

    /// The replica this signer speaks for.
    pub fn from(&self) -> ReplicaId {
        self.from
    }

    /// This replica's cluster id.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&ClusterKey> {
        self.key.as_ref()
    }

    /// The headers of a `POST path` carrying `body`, signed now.
    pub fn headers(&self, path: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        let nonce = format!("{:016x}", rand::random::<u64>());
        self.headers_at(path, body, now_ms(), &nonce)
    }

    /// The headers of a `POST path` carrying `body`, signed as of `time` (Unix ms).
    pub fn headers_at(&self, path: &str, body: &[u8], time: u64, nonce: &str) -> Vec<(&'static str, String)> {
        let mut headers = vec![(FROM_HEADER, self.from.to_string()), (CLUSTER_HEADER, self.cluster.clone())];
        if let Some(key) = &self.key {
            let head = head_text("POST", path, &self.cluster, self.from, time, nonce, body.len() as u64);
            let tag = key.sign_parts(&[head.as_bytes()]);
            let signature = key.sign_parts(&[tag.as_bytes(), b"\n", body]);
            headers.push((TIME_HEADER, time.to_string()));
            headers.push((NONCE_HEADER, nonce.to_string()));
            headers.push((AUTH_HEADER, tag));
            headers.push((SIGNATURE_HEADER, signature));
        }
        headers
    }
}

/// Checks a peer request's head before its body is read: the sender id and cluster id are
/// present; under a key, the head signature verifies over the method, path and declared body
/// length, and the time is within [`MAX_CLOCK_SKEW_MS`] of this replica's clock. `header` looks
/// a header up by name. Whether the cluster id is *this* cluster's is the caller's check.
pub fn check_head<'a>(
    key: Option<&ClusterKey>,
    method: &str,
    path: &str,
    content_length: Option<u64>,
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<PeerHead, HeadError> {
    let need = |name: &str| {
        header(name).ok_or_else(|| HeadError::Malformed(format!("a peer request needs the {name} header")))
    };
    let from: ReplicaId = need(FROM_HEADER)?
        .trim()
        .parse()
        .map_err(|_| HeadError::Malformed(format!("{FROM_HEADER} is not a replica id")))?;
    let cluster = need(CLUSTER_HEADER)?.trim().to_string();
    let Some(key) = key else {
        return Ok(PeerHead { from, cluster, tag: String::new() });
    };
    let unauthorized = |what: &str| HeadError::Unauthorized(what.to_string());
    let (Ok(time), Ok(nonce), Ok(tag)) = (need(TIME_HEADER), need(NONCE_HEADER), need(AUTH_HEADER)) else {
        return Err(unauthorized(&format!(
            "peer requests must be signed with the cluster key ({TIME_HEADER}, {NONCE_HEADER}, {AUTH_HEADER} and \
             {SIGNATURE_HEADER} headers)"
        )));
    };
    let time: u64 = time.trim().parse().map_err(|_| unauthorized(&format!("{TIME_HEADER} is not a number")))?;
    let len = content_length
        .ok_or_else(|| HeadError::Malformed("a signed peer request must declare its Content-Length".into()))?;
    let head = head_text(method, path, &cluster, from, time, nonce.trim(), len);
    if !key.verify_parts(&[head.as_bytes()], tag) {
        return Err(unauthorized("bad peer signature: this request was not signed with the cluster key"));
    }
    let skew = now_ms().abs_diff(time);
    if skew > MAX_CLOCK_SKEW_MS {
        return Err(unauthorized(&format!(
            "the peer's clock is {:.0} s away from this replica's (at most {} s allowed): check NTP on both hosts",
            skew as f64 / 1000.0,
            MAX_CLOCK_SKEW_MS / 1000
        )));
    }
    Ok(PeerHead { from, cluster, tag: tag.trim().to_string() })
}

/// True when `signature` signs `body` under the head whose tag is `head.tag`.
pub fn check_body(key: &ClusterKey, head: &PeerHead, body: &[u8], signature: &str) -> bool {
    key.verify_parts(&[head.tag.as_bytes(), b"\n", body], signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn layout(n: usize) -> Layout {
        let ports: Vec<u16> = (7001..7000 + n as u16).collect();
        Layout::from_flags("127.0.0.1", 7000, n, &vec!["127.0.0.1".into(); n - 1], &ports).unwrap()
    }

    fn key() -> ClusterKey {
        ClusterKey::new("a-long-enough-cluster-key").unwrap()
    }

    fn check(
        key: Option<&ClusterKey>,
        path: &str,
        len: Option<u64>,
        headers: &[(&'static str, String)],
    ) -> Result<PeerHead, HeadError> {
        let map: HashMap<&str, &str> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        check_head(key, "POST", path, len, |name| map.get(name).copied())
    }

    #[test]
    fn a_signed_request_verifies_head_then_body() {
        let auth = PeerAuth::new(&layout(3), Some(key()));
        let body = b"{\"from\":1}";
        let headers = auth.headers("/replicate", body);
        let head = check(Some(&key()), "/replicate", Some(body.len() as u64), &headers).unwrap();
        assert_eq!((head.from, head.cluster.as_str()), (1, auth.cluster()));
        let sig = &headers.iter().find(|(k, _)| *k == SIGNATURE_HEADER).unwrap().1;
        assert!(check_body(&key(), &head, body, sig));
        assert!(!check_body(&key(), &head, b"{\"from\":2}", sig), "tampered body");
    }

    #[test]
    fn heads_fail_with_another_key_path_length_or_time() {
        let auth = PeerAuth::new(&layout(3), Some(key()));
        let headers = auth.headers("/replicate", b"body");
        let other = ClusterKey::new("another-long-enough-key").unwrap();
        let unauthorized = |r: Result<PeerHead, HeadError>| matches!(r, Err(HeadError::Unauthorized(_)));
        assert!(unauthorized(check(Some(&other), "/replicate", Some(4), &headers)), "other key");
        assert!(unauthorized(check(Some(&key()), "/peer/hello", Some(4), &headers)), "other path");
        assert!(unauthorized(check(Some(&key()), "/replicate", Some(64 << 20), &headers)), "other length");
        assert!(matches!(check(Some(&key()), "/replicate", None, &headers), Err(HeadError::Malformed(_))));
        let old = auth.headers_at("/replicate", b"body", now_ms() - MAX_CLOCK_SKEW_MS - 10_000, "00");
        let err = check(Some(&key()), "/replicate", Some(4), &old).unwrap_err();
        assert!(err.to_string().contains("NTP"), "{err}");
        let unsigned = PeerAuth::new(&layout(3), None).headers("/replicate", b"body");
        assert!(unauthorized(check(Some(&key()), "/replicate", Some(4), &unsigned)), "no signature");
        let mut forged = headers.clone();
        forged.retain(|(k, _)| *k != FROM_HEADER);
        forged.push((FROM_HEADER, "2".into()));
        assert!(unauthorized(check(Some(&key()), "/replicate", Some(4), &forged)), "sender id is signed");
    }

    #[test]
    fn without_a_key_only_the_identity_headers_are_needed() {
        let headers = PeerAuth::new(&layout(3), None).headers("/replicate", b"x");
        assert_eq!(check(None, "/replicate", None, &headers).unwrap().from, 1);
        assert!(matches!(check(None, "/replicate", None, &[]), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn cluster_ids_differ_with_members_or_their_spelling() {
        let a = layout(4);
        let b = Layout::from_flags("127.0.0.1", 7001, 4, &vec!["127.0.0.1".into(); 3], &[7000, 7002, 7003]).unwrap();
        assert_eq!(cluster_id(&a), cluster_id(&b), "same members seen from two replicas");
        let spelled = Layout::from_flags(
            "localhost",
            7003,
            4,
            &["127.0.0.1".into(), "127.0.0.1".into(), "127.0.0.1".into()],
            &[7000, 7001, 7002],
        )
        .unwrap();
        assert_ne!(cluster_id(&a), cluster_id(&spelled));
        assert_ne!(cluster_id(&a), cluster_id(&layout(3)));
        assert_eq!(cluster_id(&a).len(), 16);
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(ClusterKey::new("short").is_err());
        assert!(ClusterKey::new("   padded-short   ").is_err());
        assert!(ClusterKey::new("0123456789abcdef").is_ok());
    }
}
