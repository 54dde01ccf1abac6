//! What a message is, and where a post goes.

use serde::{de::DeserializeOwned, Serialize};

/// Any serde model is a message: there is a blanket impl for every
/// `T: Serialize + DeserializeOwned + Send + Sync + 'static`.
///
/// On the local path nothing is serialized (L04); serde matters only for global posts.
///
/// A message's wire class name (used by the Redis wire formats) defaults to the type's own
/// name without module path or generic arguments (`app::models::UserUpdate` becomes
/// `"UserUpdate"`). That default comes from [`std::any::type_name`], whose output the compiler
/// does not promise to keep stable across versions: for types that cross process boundaries,
/// set the name explicitly with [`BusBuilder::class_name`](crate::BusBuilder::class_name).
///
/// A type given another type's name (`class_name::<EventSummary>("Event")`) reads and writes
/// that class on purpose, beside the class's own type, for example as a tolerant view with
/// optional fields. Each receiver type decodes a received message by itself: when the
/// payload does not decode as one of them, the others still get the message, and the
/// failure is counted and reported once.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Message for T {}

/// Where a post goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MessageScope {
    /// This process only: listeners are called synchronously on the posting thread and the
    /// post is wait-free (L02, L10).
    Local,
    /// Through Redis only; fails with [`PostError::RedisNotEnabled`](crate::PostError) on a
    /// bus without Redis (G01).
    Global,
    /// Global when the bus has Redis, otherwise Local (G02). The default.
    #[default]
    Auto,
}
