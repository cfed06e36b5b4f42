//! The set workload's values: a JSON list of unique elements per version, merged by union.
//!
//! This is how a client of a Dynamo-style store keeps concurrent additions: read every sibling,
//! take the union, add, write back with the context read. The checker reads values the same way.

use std::collections::BTreeSet;

use vkv::protocol::ReadResponse;
use vkv::versions::Version;

/// The union of the elements of every live version (tombstones and values that are not a JSON
/// list of strings hold none).
pub fn elements<'a>(versions: impl IntoIterator<Item = &'a Version>) -> BTreeSet<String> {
    versions
        .into_iter()
        .filter_map(|v| v.value.as_deref())
        .filter_map(|text| serde_json::from_str::<Vec<String>>(text).ok())
        .flatten()
        .collect()
}

/// The value a client writes to add `element` to what it read: the merged siblings plus it.
pub fn with_element(read: &ReadResponse, element: &str) -> String {
    let mut all = elements(&read.versions);
    all.insert(element.to_string());
    serde_json::Value::from(all.into_iter().collect::<Vec<_>>()).to_string()
}
