//! Peer authentication: every peer-to-peer request carries an HMAC-SHA256 of its body under the
//! cluster's shared secret, in the `x-vkv-signature` header (hex).
//!
//! What this protects: only holders of the cluster key can make a replica merge versions
//! (`POST /replicate`) or reset its senders' backoff (`POST /peer/hello`); a tampered body fails
//! verification; the key itself never crosses the network. What it does not: client routes are
//! open to anyone who can reach the port; traffic is not encrypted (plain HTTP, readable on the
//! wire); a recorded peer request can be replayed — harmless by design, since a merge is a join
//! and re-applying a version that was already merged changes nothing.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-vkv-signature";
/// Environment variable that may hold the key itself (instead of `--cluster-key-file`).
pub const KEY_ENV: &str = "VKV_CLUSTER_KEY";
/// Shortest key accepted, in bytes: a guessable key protects nothing.
pub const MIN_KEY_BYTES: usize = 16;

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

    /// The hex signature of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    /// True when `signature` (hex) is `body`'s signature under this key. Constant-time compare.
    pub fn verify(&self, body: &[u8], signature: &str) -> bool {
        let Ok(tag) = hex::decode(signature.trim()) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_same_key_and_body() {
        let key = ClusterKey::new("a-long-enough-cluster-key").unwrap();
        let sig = key.sign(b"{\"from\":1}");
        assert!(key.verify(b"{\"from\":1}", &sig));
        assert!(!key.verify(b"{\"from\":2}", &sig), "tampered body");
        let other = ClusterKey::new("another-long-enough-key").unwrap();
        assert!(!other.verify(b"{\"from\":1}", &sig), "other key");
        assert!(!key.verify(b"{\"from\":1}", "not hex"));
        assert!(!key.verify(b"{\"from\":1}", ""));
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(ClusterKey::new("short").is_err());
        assert!(ClusterKey::new("   padded-short   ").is_err());
        assert!(ClusterKey::new("0123456789abcdef").is_ok());
    }
}
