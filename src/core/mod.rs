//! The pure core: vector clocks, sibling sets with the write and merge rules, and cluster
//! membership. No I/O, no async, nothing else of the crate: everything here is a value and a
//! function, tested exhaustively by property tests.
//!
//! May use: nothing of the crate.

pub mod clock;
pub mod cluster;
pub mod show;
pub mod versions;
