//! The one error type of keel-storage.
//!
//! Owns: the classification of storage failures into request errors (`Compacted`,
//! `FutureRevision`) and fatal ones (`Corrupt`, `Backend`, `Io`). Must never carry
//! wire-level status codes; the server maps these to etcd's error strings.

/// Result alias used throughout the crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong in keel-storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The requested revision has been compacted away (etcd `ErrCompacted`).
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the current one (etcd `ErrFutureRev`).
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// Data read from disk or from a snapshot failed validation; never applied.
    #[error("storage corrupt: {0}")]
    Corrupt(String),
    /// The engine (redb or the in-memory map) reported a failure.
    #[error("storage backend: {0}")]
    Backend(String),
    /// Reading or writing a snapshot stream failed.
    #[error("storage io: {0}")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    /// Builds a [`StorageError::Corrupt`] from anything printable.
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        StorageError::Corrupt(what.to_string())
    }

    /// Builds a [`StorageError::Backend`] from anything printable.
    pub(crate) fn backend(what: impl std::fmt::Display) -> Self {
        StorageError::Backend(what.to_string())
    }
}
