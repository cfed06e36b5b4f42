//! Fuzz targets for vkv's decoding paths: every request body a replica decodes, versions, sibling
//! sets, vector clocks and key validation.
//!
//! Each target is a `check_*` function from input bytes to nothing: it decodes the bytes the way
//! the server does (`serde_json::from_slice`) and, when they decode, asserts cheap invariants. A
//! panic is a finding. The binaries in `src/bin/` (one per target, same name) run a check:
//!
//! - under `cargo afl build` (`--cfg fuzzing`), in AFL's persistent loop (`scripts/fuzz.sh`);
//! - under a plain `cargo build`, once per file or directory given as an argument (or on
//!   standard input): a reproducer for a crash AFL saved, e.g.
//!   `cargo run -p vkv-fuzz --bin sibling_set -- fuzz/out/sibling_set/default/crashes`.
//!
//! `tests/corpus.rs` runs every check over its seed corpus (`fuzz/corpus/<target>/`) in the
//! ordinary `cargo test`, so the targets keep compiling and their seeds keep passing without AFL.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vkv::clock::{Causality, VectorClock, MAX_COUNTER};
use vkv::protocol::{
    DeleteRequest, DigestRequest, EntriesRequest, PeerReadRequest, ReplicateRequest, WriteRequest, MAX_KEY_BYTES,
};
use vkv::versions::{SiblingSet, Version, WriteRefusal};

/// A target's check: decodes the input and panics on a broken invariant.
pub type Check = fn(&[u8]);

/// Every target: its name (the binary's and the corpus directory's) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("write_request", check_write_request),
    ("delete_request", check_delete_request),
    ("replicate_request", check_replicate_request),
    ("digest_request", check_digest_request),
    ("entries_request", check_entries_request),
    ("peer_read_request", check_peer_read_request),
    ("version", check_version),
    ("sibling_set", check_sibling_set),
    ("vector_clock", check_vector_clock),
    ("validate_key", check_validate_key),
    ("peer_head", check_peer_head),
];

/// Versions past which the quadratic checks on a merged set are skipped (AFL keeps inputs small;
/// this only keeps one odd large input from looking like a hang).
const MAX_CHECKED_VERSIONS: usize = 64;

/// Runs `check` as the binary's body: AFL's loop under `cargo afl`, a replay of the files named
/// on the command line (or of standard input) otherwise.
pub fn run(check: Check) {
    #[cfg(fuzzing)]
    afl::fuzz!(|data: &[u8]| check(data));
    #[cfg(not(fuzzing))]
    replay(check);
}

#[cfg(not(fuzzing))]
fn replay(check: Check) {
    use std::io::Read;
    use std::path::PathBuf;

    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if args.is_empty() {
        let mut input = Vec::new();
        std::io::stdin().read_to_end(&mut input).expect("read standard input");
        check(&input);
        return;
    }
    for arg in args {
        let files = if arg.is_dir() { input_files(&arg) } else { vec![arg] };
        for file in files {
            let input = std::fs::read(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            eprintln!("{} ({} bytes)", file.display(), input.len());
            check(&input);
        }
    }
}

/// The regular files in `dir`, sorted, skipping AFL's `README.txt` and dot files.
pub fn input_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| p.file_name().is_some_and(|n| n != "README.txt" && !n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

/// Decodes `data` as the server does; when it decodes, checks that the value re-encodes to JSON
/// that decodes again (what one replica sends, another accepts) to the same value (compared by
/// `Debug`, which every protocol type derives), and that re-encoding is then a fixed point.
fn round_trip<T: Serialize + DeserializeOwned + Debug>(data: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    let json = serde_json::to_vec(&value).expect("a decoded value serialises");
    let again: T = serde_json::from_slice(&json)
        .unwrap_or_else(|e| panic!("re-encoded {} does not decode: {e}", String::from_utf8_lossy(&json)));
    assert_eq!(format!("{value:?}"), format!("{again:?}"), "the round trip changed the value");
    assert_eq!(json, serde_json::to_vec(&again).expect("serialises"), "re-encoding is not a fixed point");
    Some(value)
}

/// `PUT /kv/{key}` body.
pub fn check_write_request(data: &[u8]) {
    if let Some(req) = round_trip::<WriteRequest>(data) {
        if let Some(ctx) = &req.context {
            check_clock(ctx);
        }
    }
}

/// `DELETE /kv/{key}` body.
pub fn check_delete_request(data: &[u8]) {
    if let Some(req) = round_trip::<DeleteRequest>(data) {
        if let Some(ctx) = &req.context {
            check_clock(ctx);
        }
    }
}

/// `POST /replicate` body: each entry's versions are merged as a receiver merges them.
pub fn check_replicate_request(data: &[u8]) {
    if let Some(req) = round_trip::<ReplicateRequest>(data) {
        for entry in &req.entries {
            check_merged(&entry.versions);
        }
    }
}

/// `POST /peer/digest` body.
pub fn check_digest_request(data: &[u8]) {
    round_trip::<DigestRequest>(data);
}

/// `POST /peer/entries` body, and the validation of its ranges.
pub fn check_entries_request(data: &[u8]) {
    if let Some(req) = round_trip::<EntriesRequest>(data) {
        match vkv::anti_entropy::requested_ranges(req.of, &req.ranges) {
            Ok(ranges) => {
                assert!((1..=vkv::protocol::MAX_AE_RANGES).contains(&req.of));
                assert!(ranges.iter().all(|&r| r < req.of), "accepted a range outside 0..{}", req.of);
                assert!(req.ranges.iter().all(|r| ranges.contains(r)), "dropped a requested range");
            }
            Err(_) => {
                assert!(req.of == 0 || req.of > vkv::protocol::MAX_AE_RANGES || req.ranges.iter().any(|&r| r >= req.of))
            }
        }
    }
}

/// `POST /peer/read` body.
pub fn check_peer_read_request(data: &[u8]) {
    round_trip::<PeerReadRequest>(data);
}

/// One version on the wire: a value or a tombstone, never both or neither.
pub fn check_version(data: &[u8]) {
    if let Some(version) = round_trip::<Version>(data) {
        let json: serde_json::Value = serde_json::to_value(&version).expect("serialises");
        assert_eq!(json.get("deleted") == Some(&serde_json::Value::Bool(true)), version.is_tombstone());
        assert_eq!(json.get("value").is_some(), !version.is_tombstone());
        assert_eq!(serde_json::from_value::<Version>(json).expect("decodes"), version);
        check_clock(&version.clock);
    }
}

/// A stored sibling set (the store decodes these from its own disk). Decoding checks nothing
/// beyond each version's shape, so the invariants are asserted on the set rebuilt by merging.
pub fn check_sibling_set(data: &[u8]) {
    if let Some(set) = round_trip::<SiblingSet>(data) {
        let back: SiblingSet = serde_json::from_slice(&serde_json::to_vec(&set).expect("serialises")).expect("decodes");
        assert_eq!(back, set);
        check_merged(set.versions());
    }
}

/// A vector clock (a `context`), and, for an array of clocks, the partial order's laws.
pub fn check_vector_clock(data: &[u8]) {
    if let Some(clock) = round_trip::<VectorClock>(data) {
        check_clock(&clock);
    } else if let Ok(clocks) = serde_json::from_slice::<Vec<VectorClock>>(data) {
        for a in clocks.iter().take(8) {
            check_clock(a);
            for b in clocks.iter().take(8) {
                let flipped = match a.compare(b) {
                    Causality::Before => Causality::After,
                    Causality::After => Causality::Before,
                    same => same,
                };
                assert_eq!(b.compare(a), flipped, "compare is not antisymmetric: {a} vs {b}");
                let j = a.join(b);
                assert!(j.descends(a) && j.descends(b), "join {j} of {a} and {b} is no upper bound");
                assert_eq!(j, b.join(a), "join is not commutative");
            }
        }
    }
}

/// Key validation: accepted exactly when non-empty, not `.` or `..`, and at most the limit long.
pub fn check_validate_key(data: &[u8]) {
    let Ok(key) = std::str::from_utf8(data) else { return };
    let valid = !key.is_empty() && key != "." && key != ".." && key.len() <= MAX_KEY_BYTES;
    match vkv::replica::validate_key(key) {
        Ok(()) => assert!(valid, "accepted {key:?}"),
        Err(vkv::Error::TooLarge(_)) => assert!(key.len() > MAX_KEY_BYTES, "{key:?} refused as too large"),
        Err(vkv::Error::InvalidInput(_)) => assert!(!valid && key.len() <= MAX_KEY_BYTES, "refused {key:?}"),
        Err(other) => panic!("unexpected error for {key:?}: {other:?}"),
    }
}

/// A clock's own laws: equal to itself, join idempotent, increment dominates, and its display
/// (the seed's `[3, 1, 3]` notation) is JSON that decodes back to it.
fn check_clock(clock: &VectorClock) {
    assert_eq!(clock.compare(clock), Causality::Equal);
    assert_eq!(&clock.join(clock), clock);
    let shown: VectorClock = serde_json::from_str(&clock.to_string()).expect("the display notation is JSON");
    assert_eq!(&shown, clock);
    for position in 0..clock.len().min(4) {
        match clock.incremented(position) {
            Some(next) => assert_eq!(next.compare(clock), Causality::After),
            None => assert_eq!(clock.counters()[position], u64::MAX),
        }
    }
}

/// Merges `versions` into a set as replicas do and checks the result: sorted, an antichain, every
/// input covered by a kept version, merging again changes nothing, and (for clocks of one length,
/// which every replica enforces) the order of arrival does not matter and both a blind write and
/// a write with the set's own context succeed with a clock that dominates every version.
fn check_merged(versions: &[Version]) -> SiblingSet {
    let set = SiblingSet::from_versions(versions.iter().cloned());
    if versions.len() > MAX_CHECKED_VERSIONS {
        return set;
    }
    let kept = set.versions();
    assert_eq!(kept.is_empty(), versions.is_empty());
    for pair in kept.windows(2) {
        assert!(pair[0] < pair[1], "not sorted: {set:?}");
    }
    for (i, a) in kept.iter().enumerate() {
        for b in &kept[i + 1..] {
            assert_eq!(a.clock.compare(&b.clock), Causality::Concurrent, "not an antichain: {set:?}");
        }
    }
    for v in versions {
        assert!(kept.iter().any(|k| k.clock.descends(&v.clock)), "{v:?} lost by the merge: {set:?}");
    }
    let mut again = set.clone();
    for v in versions {
        assert!(!again.merge(v.clone()).changed(), "merging {v:?} again changed {set:?}");
    }
    assert_eq!(again, set);

    let n = versions.first().map_or(0, |v| v.clock.len());
    if n > 0 && versions.iter().all(|v| v.clock.len() == n) {
        assert_eq!(SiblingSet::from_versions(versions.iter().rev().cloned()), set, "arrival order mattered");
        let context = set.context(n);
        for position in 0..n.min(4) {
            let blind = set.client_write(n, None, position);
            let read = set.client_write(n, Some(&context), position);
            assert_eq!(blind, read, "a write with the set's own context differs from a blind write");
            match blind {
                Ok(clock) => {
                    assert_eq!(clock.len(), n);
                    for k in kept {
                        assert_eq!(clock.compare(&k.clock), Causality::After, "{clock} does not supersede {k:?}");
                    }
                }
                Err(WriteRefusal::CounterLimit) => {
                    assert!(context.counters().iter().any(|&c| c >= MAX_COUNTER), "refused below the limit")
                }
                Err(other) => panic!("a write with the set's own context was refused: {other:?}"),
            }
        }
    }
    set
}

/// The head of a peer request, as a replica checks it before reading the body: the input is
/// header lines (`name: value`), then an optional `len: N` line for the declared length. A
/// head signed by [`PeerAuth`](vkv::auth::PeerAuth) with the test key must verify, and a head
/// the checker accepts must name the sender and cluster it carries.
pub fn check_peer_head(data: &[u8]) {
    use vkv::auth::{check_head, ClusterKey, PeerAuth};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let key = ClusterKey::new("fuzz-cluster-key-0123456789").expect("a long key");
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut length = None;
    for line in text.lines() {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
            if name == "len" {
                length = value.parse::<u64>().ok();
            } else {
                headers.push((name, value));
            }
        }
    }
    let lookup = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    for k in [None, Some(&key)] {
        if let Ok(head) = check_head(k, "POST", "/replicate", length, lookup) {
            assert_eq!(
                Some(head.from.to_string()),
                lookup("x-vkv-from").map(|v| v.trim().parse::<u32>().unwrap().to_string())
            );
            assert_eq!(Some(head.cluster.as_str()), lookup("x-vkv-cluster"));
        }
    }
    // A genuine head over this input as a body always verifies, and never with another path.
    let signed = PeerAuth::with_parts(2, "0123456789abcdef", Some(key.clone())).headers("/replicate", data);
    let get = |name: &str| signed.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
    let len = Some(data.len() as u64);
    assert!(check_head(Some(&key), "POST", "/replicate", len, get).is_ok());
    assert!(check_head(Some(&key), "POST", "/peer/read", len, get).is_err());
}
