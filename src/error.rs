//! The library's error type: one enum, each variant naming the thing that is wrong
//! (a config key, a file, a replica, an object) so that the message alone tells an
//! operator what to fix. `main.rs` maps these to exit codes; nothing else prints them.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration (file, flags or environment) is unusable.
    #[error("config: {0}")]
    Config(String),

    /// A command-line usage problem that clap could not catch.
    #[error("{0}")]
    Usage(String),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("sqlite {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The database cannot be replicated as it is (missing, not in WAL mode, ...).
    #[error("database {}: {reason}", path.display())]
    Database { path: PathBuf, reason: String },

    /// An object-store operation failed; `replica` is the URL, `what` the step.
    #[error("replica {replica}: {what}: {message}")]
    Store {
        replica: String,
        what: String,
        message: String,
        kind: StoreErrorKind,
    },

    /// An object's bytes are not what they claim to be (bad CRC, truncated, wrong magic).
    #[error("corrupt object {object}: {reason}")]
    Corrupt { object: String, reason: String },

    /// The replica does not hold what the operation needs (no generation, a gap...).
    #[error("replica {replica}: {reason}")]
    Replica { replica: String, reason: String },

    /// Refusing to act because it could destroy data (output exists, ...).
    #[error("{0}")]
    Refused(String),

    /// Something asked for is absent where absence is a normal answer (`wal-fetch` of a
    /// file Postgres probes for): exit 1 without an error message.
    #[error("{0}")]
    Absent(String),
}

/// Coarse classes of store failures, used for messages, metrics labels and retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Unauthenticated,
    Unreachable,
    Other,
}

impl StoreErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            StoreErrorKind::NotFound => "not_found",
            StoreErrorKind::AlreadyExists => "already_exists",
            StoreErrorKind::PermissionDenied => "permission_denied",
            StoreErrorKind::Unauthenticated => "unauthenticated",
            StoreErrorKind::Unreachable => "unreachable",
            StoreErrorKind::Other => "other",
        }
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn sqlite(path: impl Into<PathBuf>, source: rusqlite::Error) -> Self {
        Error::Sqlite {
            path: path.into(),
            source,
        }
    }

    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }

    /// A short label for metrics (`errors_total{kind=...}`).
    pub fn kind_label(&self) -> &'static str {
        match self {
            Error::Config(_) | Error::Usage(_) => "config",
            Error::Io { .. } => "io",
            Error::Sqlite { .. } | Error::Database { .. } => "sqlite",
            Error::Store { kind, .. } => kind.label(),
            Error::Corrupt { .. } => "corrupt",
            Error::Replica { .. } => "replica",
            Error::Refused(_) => "refused",
            Error::Absent(_) => "absent",
        }
    }

    /// The store said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Store {
                kind: StoreErrorKind::NotFound,
                ..
            }
        )
    }

    /// Exit code for the binary: 2 for bad input the user must fix before retrying.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Usage(_) | Error::Refused(_) => 2,
            _ => 1,
        }
    }
}
