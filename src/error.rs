//! Errors of posting ([`PostError`]) and of the bus as a whole ([`BusError`]).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// Why a post failed. Nothing was delivered when a post returns an error.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostError {
    /// A [`MessageScope::Global`](crate::MessageScope::Global) post on a bus built without a
    /// Redis URL (G01). Displays "Redis needs to be enabled to post global messages".
    RedisNotEnabled,
    /// The global publish queue is full (Redis is unreachable and `outage_buffer` messages are
    /// already held), G07.
    Backpressure,
    /// The encoded message is larger than `max_message_bytes`.
    TooLarge {
        /// Encoded size of the refused message, in bytes.
        size: usize,
        /// The bus's `max_message_bytes`.
        max: usize,
    },
    /// The message could not be encoded for Redis; the serde error is its `source()`.
    Encode(Reason),
    /// Redis refused or lost the PUBLISH that carried the message.
    Redis(Reason),
    /// The bus was shut down ([`Bus::shutdown`](crate::Bus::shutdown)).
    ShutDown,
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostError::RedisNotEnabled => f.write_str("Redis needs to be enabled to post global messages"),
            PostError::Backpressure => {
                f.write_str("the global publish queue is full (Redis unreachable and the outage buffer is full)")
            }
            PostError::TooLarge { size, max } => {
                write!(f, "message of {size} bytes exceeds max_message_bytes ({max})")
            }
            PostError::Encode(reason) => write!(f, "message could not be encoded: {reason}"),
            PostError::Redis(reason) => write!(f, "Redis did not accept the message: {reason}"),
            PostError::ShutDown => f.write_str("the bus is shut down"),
        }
    }
}

impl Error for PostError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            PostError::Encode(reason) | PostError::Redis(reason) => reason.source(),
            _ => None,
        }
    }
}

/// Why building, flushing or shutting down a bus failed.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusError {
    /// A [`BusBuilder`](crate::BusBuilder) setting is out of range; the text says which.
    InvalidConfig(String),
    /// Redis could not be reached or refused the connection; the client's error, when there
    /// is one, is its `source()`.
    Redis(Reason),
    /// The bus was shut down.
    ShutDown,
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::InvalidConfig(reason) => write!(f, "invalid bus configuration: {reason}"),
            BusError::Redis(reason) => write!(f, "Redis: {reason}"),
            BusError::ShutDown => f.write_str("the bus is shut down"),
        }
    }
}

impl Error for BusError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            BusError::Redis(reason) => reason.source(),
            _ => None,
        }
    }
}

/// The text of an error, with the error that caused it when there is one: what
/// [`PostError::Encode`], [`PostError::Redis`] and [`BusError::Redis`] carry.
///
/// It reads as its text (`Deref<Target = str>`, `Display`) and compares by it; the error it
/// came from, if any (serde's, the Redis client's), is the [`source`](Error::source) of the
/// error that holds it, so error reporters can walk the chain.
#[derive(Clone)]
pub struct Reason {
    text: String,
    cause: Option<Arc<dyn Error + Send + Sync>>,
}

impl Reason {
    /// A reason with no underlying error.
    pub fn new(text: impl Into<String>) -> Self {
        Reason {
            text: text.into(),
            cause: None,
        }
    }

    /// A reason caused by `cause`.
    pub fn caused_by(text: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> Self {
        Reason {
            text: text.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The underlying error, if any.
    pub fn cause(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }

    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn Error + 'static))
    }
}

impl std::ops::Deref for Reason {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            None => fmt::Debug::fmt(&self.text, f),
            Some(cause) => f
                .debug_struct("Reason")
                .field("text", &self.text)
                .field("cause", cause)
                .finish(),
        }
    }
}

/// Reasons are equal when their texts are.
impl PartialEq for Reason {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Reason {}

impl From<String> for Reason {
    fn from(text: String) -> Self {
        Reason::new(text)
    }
}

impl From<&str> for Reason {
    fn from(text: &str) -> Self {
        Reason::new(text)
    }
}
