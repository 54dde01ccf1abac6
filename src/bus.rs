//! `Bus` and `BusBuilder`.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::channel::Channel;
use crate::error::{BusError, PostError};
use crate::events::{BusEvents, EventHub};
use crate::message::{Message, MessageScope};
use crate::registry::Registry;
use crate::session::{Messages, Session};
use crate::stats::Stats;

/// How global messages are encoded on Redis.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WireFormat {
    /// evbus's binary envelope: origin id, per-origin sequence, class name, payload; several
    /// messages may share one PUBLISH.
    #[default]
    Native,
    /// Exactly Serverpod's JSON, `{"className": "...", "data": {...}}`, one message per
    /// PUBLISH, so a Rust server can share a Redis with Serverpod servers.
    Serverpod,
}

/// Settings a running bus reads.
pub(crate) struct Config {
    pub(crate) stream_capacity: usize,
}

/// The state all handles of one bus share.
pub(crate) struct BusInner {
    pub(crate) registry: Registry,
    pub(crate) config: Config,
    /// Registration ids, shared by listeners and streams.
    pub(crate) next_id: AtomicU64,
    events: EventHub,
}

impl BusInner {
    /// The scope check of every post: `Ok` when the post is to be delivered locally.
    #[inline]
    pub(crate) fn check_local(&self, scope: MessageScope) -> Result<(), PostError> {
        if self.registry.is_closed() {
            return Err(PostError::ShutDown);
        }
        match scope {
            MessageScope::Local | MessageScope::Auto => Ok(()),
            MessageScope::Global => Err(PostError::RedisNotEnabled),
        }
    }
}

/// An event bus: a cheap handle; all clones are the same bus.
///
/// Channels are names; a post reaches the listeners and streams registered on its channel.
/// [`Bus::local`] makes a bus for one process, with no Redis: posting on it is wait-free
/// (see [`Messages::post_message`]).
///
/// ```
/// use evbus::{Bus, MessageScope};
///
/// let bus = Bus::local();
/// let session = bus.session();
/// session.messages().add_listener("user_updates", |name: &String| println!("{name} changed"));
/// let delivery = session.messages().post_message("user_updates", "ada".to_string(), MessageScope::Auto)?;
/// assert_eq!(delivery.local_receivers(), 1);
/// # Ok::<(), evbus::PostError>(())
/// ```
#[derive(Clone)]
pub struct Bus {
    messages: Messages,
}

impl Bus {
    /// A bus for this process only, with default settings: the embedded default.
    pub fn local() -> Bus {
        Bus::with_config(Config {
            stream_capacity: DEFAULT_STREAM_CAPACITY,
        })
    }

    fn with_config(config: Config) -> Bus {
        let inner = BusInner {
            registry: Registry::new(),
            config,
            next_id: AtomicU64::new(1),
            events: EventHub::new(),
        };
        Bus {
            messages: Messages::new(Arc::new(inner)),
        }
    }

    /// A builder for a bus with other settings, or with Redis.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    fn inner(&self) -> &BusInner {
        &self.messages.bus
    }

    /// A new session: a unit of work (a request, a connection) that owns what it registers.
    pub fn session(&self) -> Session {
        Session::new(self.messages.bus.clone())
    }

    /// Registrations that live as long as the bus (S05): until removed, or until
    /// [`shutdown`](Bus::shutdown).
    pub fn messages(&self) -> &Messages {
        &self.messages
    }

    /// A pre-interned, typed handle on channel `name`, for hot paths: posting through it skips
    /// hashing and looking up the name. The channel stays interned while a handle lives (L13).
    ///
    /// ```
    /// # use evbus::{Bus, MessageScope};
    /// let bus = Bus::local();
    /// let ticks = bus.channel::<u64>("ticks");
    /// bus.messages().add_listener("ticks", |t: &u64| assert!(*t < 10));
    /// for t in 0..10 {
    ///     ticks.post(t, MessageScope::Local)?;
    /// }
    /// # Ok::<(), evbus::PostError>(())
    /// ```
    pub fn channel<M: Message>(&self, name: &str) -> Channel<M> {
        Channel::new(self.messages.bus.clone(), name)
    }

    /// Whether the bus was built with a Redis URL.
    pub fn has_redis(&self) -> bool {
        false
    }

    /// The bus's counters (see [`Stats`]).
    pub fn stats(&self) -> Stats {
        self.inner().registry.counters.snapshot()
    }

    /// A new stream of [`BusEvent`](crate::BusEvent)s emitted from now on.
    pub fn events(&self) -> BusEvents {
        self.inner().events.subscribe()
    }

    /// Returns once every global post made so far is acknowledged by Redis (G12). On a bus
    /// without Redis there is none, so it returns at once.
    ///
    /// # Errors
    ///
    /// Never on a bus without Redis.
    pub async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Returns once every Redis SUBSCRIBE issued so far is confirmed (G04). On a bus without
    /// Redis there is none, so it returns at once.
    ///
    /// # Errors
    ///
    /// Never on a bus without Redis.
    pub async fn subscriptions_ready(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Shuts the bus down: removes every listener (dropping its closure once posts already
    /// running are done with it), ends every stream after what it buffered, ends every
    /// [`BusEvents`]. Afterwards every post fails with [`PostError::ShutDown`] and new
    /// registrations are inert. Idempotent.
    ///
    /// # Errors
    ///
    /// Never on a bus without Redis.
    pub async fn shutdown(&self) -> Result<(), BusError> {
        self.inner().registry.close();
        self.inner().events.close();
        Ok(())
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("has_redis", &self.has_redis())
            .finish_non_exhaustive()
    }
}

const DEFAULT_STREAM_CAPACITY: usize = 1024;
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
const DEFAULT_OUTAGE_BUFFER: usize = 100_000;
/// Below this, a Native frame could not carry its own header.
const MIN_MESSAGE_BYTES: usize = 256;

/// Settings for a [`Bus`]; [`Bus::builder`] makes one.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = evbus::Bus::builder().stream_capacity(64).build().await?;
/// assert!(!bus.has_redis());
/// # Ok::<(), evbus::BusError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct BusBuilder {
    redis_url: Option<String>,
    #[allow(dead_code)] // read by the Redis half
    namespace: String,
    #[allow(dead_code)] // read by the Redis half
    wire_format: WireFormat,
    stream_capacity: usize,
    max_message_bytes: usize,
    #[allow(dead_code)] // read by the Redis half
    outage_buffer: usize,
    class_names: HashMap<TypeId, (&'static str, String)>,
}

impl Default for BusBuilder {
    fn default() -> Self {
        BusBuilder {
            redis_url: None,
            namespace: String::new(),
            wire_format: WireFormat::default(),
            stream_capacity: DEFAULT_STREAM_CAPACITY,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            outage_buffer: DEFAULT_OUTAGE_BUFFER,
            class_names: HashMap::new(),
        }
    }
}

impl BusBuilder {
    /// Redis to pass global messages through: `redis://[user:pass@]host:port[/db]`, or
    /// `rediss://` for TLS. Without it the bus is local.
    pub fn redis_url(mut self, url: &str) -> Self {
        self.redis_url = Some(url.to_string());
        self
    }

    /// Prefix of every Redis channel name (G10); default `""`, as Serverpod.
    pub fn namespace(mut self, prefix: &str) -> Self {
        self.namespace = prefix.to_string();
        self
    }

    /// How global messages are encoded; default [`WireFormat::Native`].
    pub fn wire_format(mut self, format: WireFormat) -> Self {
        self.wire_format = format;
        self
    }

    /// The buffer of each [`MessageStream`](crate::MessageStream), in messages (L11); default
    /// 1024. At least 1. Memory is taken as messages are buffered, not up front.
    pub fn stream_capacity(mut self, messages: usize) -> Self {
        self.stream_capacity = messages;
        self
    }

    /// Bound on one encoded message and on one Redis payload; default 1 MiB, at least 256.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Global posts held while Redis is unreachable (G07); default 100,000.
    pub fn outage_buffer(mut self, messages: usize) -> Self {
        self.outage_buffer = messages;
        self
    }

    /// The wire class name of `M`, instead of its type name (see [`Message`]).
    pub fn class_name<M: Message>(mut self, name: &str) -> Self {
        self.class_names.insert(
            TypeId::of::<M>(),
            (std::any::type_name::<M>(), name.to_string()),
        );
        self
    }

    /// Builds the bus.
    ///
    /// # Errors
    ///
    /// - [`BusError::InvalidConfig`] when a setting is out of range: a `stream_capacity` of 0,
    ///   a `max_message_bytes` below 256, an empty class name or one given to two types.
    /// - [`BusError::Redis`] when a Redis URL is set: this release builds local buses only.
    pub async fn build(self) -> Result<Bus, BusError> {
        if self.stream_capacity == 0 {
            return Err(BusError::InvalidConfig(
                "stream_capacity must be at least 1".into(),
            ));
        }
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(BusError::InvalidConfig(format!(
                "max_message_bytes must be at least {MIN_MESSAGE_BYTES}, got {}",
                self.max_message_bytes
            )));
        }
        let mut owners: HashMap<&str, &str> = HashMap::new();
        for (type_name, class) in self.class_names.values() {
            if class.is_empty() {
                return Err(BusError::InvalidConfig(format!(
                    "empty class name for {type_name}"
                )));
            }
            if let Some(other) = owners.insert(class, type_name) {
                return Err(BusError::InvalidConfig(format!(
                    "class name {class:?} is given to both {other} and {type_name}"
                )));
            }
        }
        if self.redis_url.is_some() {
            return Err(BusError::Redis(
                "a Redis URL is set, but this release of evbus builds local buses only (Redis \
                 support is the next milestone); build without redis_url for a local bus"
                    .into(),
            ));
        }
        Ok(Bus::with_config(Config {
            stream_capacity: self.stream_capacity,
        }))
    }
}
