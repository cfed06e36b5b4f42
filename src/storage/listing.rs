//! Key listing: one page of keys in byte order, read with a redb range scan.
//!
//! The scan starts at the later of the prefix and the cursor and stops at the first key past the
//! prefix or once it has found one key more than the page holds (that one only says "there is a
//! next page"), so a page costs its own keys, never the whole store.

use std::ops::Bound;

use redb::ReadableDatabase;

use super::store::{decode, Store, KEYS};
use crate::error::Result;

/// One page of a key listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyPage {
    /// The keys, in byte order.
    pub(crate) keys: Vec<String>,
    /// True when more matching keys follow the last one.
    pub(crate) more: bool,
}

/// Where the scan starts: just after `after` when that is at or past `prefix`, else at `prefix`.
fn start<'a>(prefix: &'a str, after: Option<&'a str>) -> Bound<&'a str> {
    match after {
        Some(a) if a >= prefix => Bound::Excluded(a),
        _ => Bound::Included(prefix),
    }
}

impl Store {
    /// Up to `limit` keys starting with `prefix`, strictly after `after`, in byte order. Keys whose
    /// every version is a tombstone are left out unless `deleted`.
    pub(crate) fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize, deleted: bool) -> Result<KeyPage> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(KEYS)?;
            let mut keys = Vec::new();
            for item in table.range::<&str>((start(prefix, after), Bound::Unbounded))? {
                let (key, set) = item?;
                let key = key.value();
                if !key.starts_with(prefix) {
                    break; // byte order: every later key is past the prefix too
                }
                // A set is decoded only to see whether it is all tombstones.
                if !deleted && decode(key, set.value())?.is_deleted() {
                    continue;
                }
                if keys.len() == limit {
                    return Ok(KeyPage { keys, more: true });
                }
                keys.push(key.to_string());
            }
            Ok(KeyPage { keys, more: false })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_starts_at_the_later_of_prefix_and_cursor() {
        assert_eq!(start("b", None), Bound::Included("b"));
        assert_eq!(start("b", Some("a")), Bound::Included("b"));
        assert_eq!(start("b", Some("b")), Bound::Excluded("b"));
        assert_eq!(start("b", Some("bz")), Bound::Excluded("bz"));
        assert_eq!(start("", Some("k")), Bound::Excluded("k"));
    }
}
