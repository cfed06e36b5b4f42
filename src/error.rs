//! The one error type of the library, named for what the caller should do next.
//!
//! The HTTP layer maps each variant to a status code in one place (`api::AppError`), and the
//! client maps status codes back; nothing else decides statuses.

/// What went wrong, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or breaks a documented limit: fix it, do not retry as is. (400)
    #[error("{0}")]
    InvalidInput(String),
    /// A key or value is larger than the documented limit. (413)
    #[error("{0}")]
    TooLarge(String),
    /// The key has no live version. (404)
    #[error("{0}")]
    NotFound(String),
    /// A peer-only request without a valid cluster signature. (401)
    #[error("{0}")]
    Unauthorized(String),
    /// The client did not send its request (its body) in time. (408)
    #[error("{0}")]
    TimedOut(String),
    /// The request conflicts with the replica's identity (e.g. a batch from a non-member). (409)
    #[error("{0}")]
    Conflict(String),
    /// A conditional write whose context does not cover every version the replica holds for
    /// the key: the client never saw some of them. Nothing was written. Merge `versions` and
    /// write again with `context`. (409, with the key, the versions and the context)
    #[error("{message}")]
    StaleContext {
        /// What happened, for a person.
        message: String,
        /// The key written.
        key: String,
        /// Every version the replica holds for the key, tombstones included.
        versions: Vec<crate::core::versions::Version>,
        /// The join of their clocks: the context to write back with.
        context: crate::core::clock::VectorClock,
    },
    /// The replica cannot serve right now (shutting down, storage busy): retry later. (503)
    #[error("{0}")]
    Unavailable(String),
    /// `?w=K` not met in time. The write IS durable here and queued for every peer; only the
    /// requested extra guarantee is missing. (503, with `"written": true` and the clock)
    #[error("{message}")]
    QuorumNotMet {
        /// What happened, for a person.
        message: String,
        /// The clock of the write that was committed here.
        clock: crate::core::clock::VectorClock,
    },
    /// The local store failed: the write was not applied. (500)
    #[error("storage error: {0}")]
    Storage(String),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! storage_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(e.to_string())
            }
        }
    )*};
}

storage_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    std::io::Error
);
