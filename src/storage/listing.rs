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
    use crate::core::cluster::Layout;
    use crate::core::versions::{SiblingSet, Version};

    /// A store of a one-member cluster holding `live` keys and `deleted` tombstone-only keys.
    fn store_with(dir: &std::path::Path, live: &[&str], deleted: &[&str]) -> Store {
        let layout = Layout::from_flags("127.0.0.1", 7000, 1, &[], &[]).unwrap();
        let store = Store::open(dir, &layout).unwrap();
        for (key, value) in live.iter().map(|k| (k, Some("v"))).chain(deleted.iter().map(|k| (k, None))) {
            store
                .write_local(key, |current| {
                    let clock = current.client_write(1, None, 0).unwrap();
                    let version = Version { clock, value: value.map(String::from) };
                    Ok((SiblingSet::single(version), ()))
                })
                .unwrap();
        }
        store
    }

    #[test]
    fn a_page_holds_the_prefix_keys_after_the_cursor_in_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), &["b/2", "b/1", "a", "b", "b0", "c", "b/3"], &["b/15"]);
        let page = |prefix, after, limit, deleted| store.list_keys(prefix, after, limit, deleted).unwrap();
        let keys = |p: KeyPage| p.keys;
        assert_eq!(keys(page("", None, 100, false)), ["a", "b", "b/1", "b/2", "b/3", "b0", "c"]);
        assert_eq!(keys(page("b/", None, 100, false)), ["b/1", "b/2", "b/3"]);
        assert_eq!(keys(page("b/", None, 100, true)), ["b/1", "b/15", "b/2", "b/3"]);
        assert_eq!(page("b/", Some("b/1"), 1, false), KeyPage { keys: vec!["b/2".into()], more: true });
        assert_eq!(page("b/", Some("b/2"), 1, false), KeyPage { keys: vec!["b/3".into()], more: false });
        assert_eq!(page("b/", Some("b/3"), 1, false), KeyPage { keys: vec![], more: false });
        assert_eq!(page("b/", Some("a"), 2, false), KeyPage { keys: vec!["b/1".into(), "b/2".into()], more: true });
        assert_eq!(keys(page("z", None, 5, true)), Vec::<String>::new());
    }

    #[test]
    fn the_scan_starts_at_the_later_of_prefix_and_cursor() {
        assert_eq!(start("b", None), Bound::Included("b"));
        assert_eq!(start("b", Some("a")), Bound::Included("b"));
        assert_eq!(start("b", Some("b")), Bound::Excluded("b"));
        assert_eq!(start("b", Some("bz")), Bound::Excluded("bz"));
        assert_eq!(start("", Some("k")), Bound::Excluded("k"));
    }
}
