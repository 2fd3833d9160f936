//! Typed errors for the library.
//!
//! Binaries wrap these in `anyhow` with context; the library never uses `anyhow` so callers can
//! match on what went wrong (a decode failure is counted, a broker failure triggers a reconnect,
//! a bad configuration is reported once and ends the process).

use std::path::PathBuf;

/// Everything that can go wrong inside `time_sync`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// AMQP failure (connection refused, channel closed, publish not confirmed...).
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// Redis failure.
    #[error("cache: {0}")]
    Cache(#[from] redis::RedisError),
    /// A message that is not a valid time-sync message.
    #[error("bad message: {0}")]
    Decode(#[from] crate::core::protocol::DecodeError),
    /// An invalid setting; the string says which and why.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Docker Engine API failure.
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// Something the user asked for that does not exist (unknown client id, no cluster...).
    #[error("{0}")]
    NotFound(String),
    /// A runtime (docker or local processes) could not do what was asked.
    #[error("{0}")]
    Runtime(String),
    /// A key this node needs is not in its key directory.
    #[error("keys: {0}")]
    Keys(#[from] crate::core::keyring::MissingKey),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Library result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
