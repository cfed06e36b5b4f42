//! How versions, sibling sets and clocks are written in log lines and messages: the seed's
//! notation, one rendering each (`"milk" [1, 0, 0]`, `{[1, 0, 0] ∥ [0, 1, 0]}`).

use std::fmt;

use crate::core::clock::VectorClock;
use crate::core::versions::{SiblingSet, Version};

/// A value as log lines and messages show it: escaped (`"a\nb"`, so no value can forge a line),
/// cut after `max` characters with `…` when a maximum is given; `(deleted)` for a tombstone.
pub fn show_value(value: Option<&str>, max: Option<usize>) -> String {
    match (value, max) {
        (None, _) => "(deleted)".to_string(),
        (Some(s), Some(max)) if s.chars().count() > max => format!("{:?}…", s.chars().take(max).collect::<String>()),
        (Some(s), _) => format!("{s:?}"),
    }
}

/// Clocks as log lines show them: `(none)`, `[1, 0, 0]`, or `{[1, 0, 0] ∥ [0, 1, 0]}` for siblings.
pub struct Clocks<'a>(pub &'a [VectorClock]);

impl fmt::Display for Clocks<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => f.write_str("(none)"),
            [one] => write!(f, "{one}"),
            many => {
                f.write_str("{")?;
                for (i, c) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ∥ ")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// `"milk" [1, 0, 0]`, or `(deleted) [2, 0, 0]`. A precision cuts the value: `{:.24}`.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", show_value(self.value.as_deref(), f.precision()), self.clock)
    }
}

/// `(none)`, one version as [`Version`] shows it, or `{"a" [1, 0] ∥ "b" [0, 1]}` for siblings.
/// A precision cuts every value.
impl fmt::Display for SiblingSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let precision = f.precision();
        let show = |v: &Version| format!("{} {}", show_value(v.value.as_deref(), precision), v.clock);
        match self.versions() {
            [] => f.write_str("(none)"),
            [one] => f.write_str(&show(one)),
            many => write!(f, "{{{}}}", many.iter().map(show).collect::<Vec<_>>().join(" ∥ ")),
        }
    }
}
