//! Errors of posting ([`PostError`]) and of the bus as a whole ([`BusError`]).

use std::fmt;

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
    /// The message could not be encoded for Redis.
    Encode(String),
    /// Redis refused or lost the PUBLISH that carried the message.
    Redis(String),
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

impl std::error::Error for PostError {}

/// Why building, flushing or shutting down a bus failed.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusError {
    /// A [`BusBuilder`](crate::BusBuilder) setting is out of range; the text says which.
    InvalidConfig(String),
    /// Redis could not be reached or refused the connection.
    Redis(String),
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

impl std::error::Error for BusError {}
