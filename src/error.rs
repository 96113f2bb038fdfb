//! The library's error type.

use crate::config::ConfigError;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Redis command or connection failed.
    #[error("redis")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the contract does not allow.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// The configuration is invalid.
    #[error("configuration")]
    Config(#[from] ConfigError),
    /// Faye refused or could not be reached.
    #[error("faye")]
    Faye(#[from] crate::faye::FayeError),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
