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
/// # One type per name on a bus
///
/// Two types with the same name in different modules (`a::Event` and `b::Event`), or one
/// generic type with different arguments (`Page<User>` and `Page<Order>`), would share one
/// class name, and a receiver could not tell which model a message is. So on one bus a class
/// that is a type's own name (by default, or set to that same name to pin it) belongs to the
/// first of those types the bus uses (registers a receiver for, or posts globally). The
/// other is in conflict for that bus's life: its global posts fail with
/// [`PostError::Encode`](crate::PostError::Encode), whose text names both types, and
/// messages of that class are not delivered to its receivers but counted as decode errors
/// and reported as [`BusEvent::DecodeFailed`](crate::BusEvent::DecodeFailed) with the same
/// text. The other type's receivers get them as usual. Fix a conflict by giving one of the
/// types another name with `BusBuilder::class_name`. This is checked within a bus only: the
/// wire carries just the class name, so a process that knows only `b::Event` takes
/// `a::Event`'s messages for its own when their shapes allow it, one more reason to name
/// types that cross process boundaries explicitly.
///
/// A type given a name that is not its own (`class_name::<EventSummary>("Event")`) reads and
/// writes that class on purpose, beside the class's own type, for example as a tolerant view
/// with optional fields; it is never in conflict. Each receiver type decodes a received
/// message by itself: when the payload does not decode as one of them, the others still get
/// the message, and the failure is counted and reported once.
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
