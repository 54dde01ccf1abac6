//! `Bus` and `BusBuilder`.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::channel::Channel;
use crate::error::BusError;
use crate::events::{BusEvents, EventHub};
use crate::inner::{BusInner, Config, Global};
use crate::local::registry::{Interest, Registry};
use crate::message::Message;
use crate::redis::{redact, RedisTransport, Settings};
use crate::session::{Messages, Session};
use crate::stats::Stats;
use crate::transport::Receive;
use crate::wire::codec::Codec;
use crate::wire::frame::MAX_CLASS_LEN;
use crate::wire::mac::Keys;
use crate::wire::WireFormat;

/// An event bus: a cheap handle; all clones are the same bus.
///
/// Channels are names; a post reaches the listeners and streams registered on its channel.
/// [`Bus::local`] makes a bus for one process, with no Redis: posting on it takes no lock and
/// never waits for another thread (see [`Messages::post_message`]).
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
///
/// # Waits and their bounds
///
/// Nothing on the post path waits. The waits that do, and what bounds them:
///
/// | wait | bound |
/// |---|---|
/// | [`BusBuilder::build`] with a Redis URL | connects before it returns, and does not retry: fails in well under a second when the connection is refused, after 5 s when Redis does not answer (10 s at the very most: the bus has two connections) |
/// | [`Bus::subscriptions_ready`], [`MessageStream::subscribed`](crate::MessageStream::subscribed) | **none** while Redis is unreachable; [`BusError::ShutDown`] once a shutdown is done |
/// | [`Bus::flush`], awaiting a [`Delivery`](crate::Delivery) | **none** while Redis is unreachable (posts are held, G07); an error once shutdown gave up on the posts |
/// | [`Bus::shutdown`] | about 4 s even with Redis unreachable: 3 s for the flush, half a second per closing step |
/// | [`MessageStream::recv`](crate::MessageStream::recv), [`BusEvents::recv`] | until a message or event comes, or the stream ends: its session closes or the bus shuts down |
///
/// Every one is cancel-safe: dropping it loses nothing (a post already made still goes out).
/// Bound the ones without a bound with a timeout, and decide what a timeout means: in a
/// request handler, usually a 503 ([`BusError::http_status`]).
///
/// ```
/// # use std::time::Duration;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// # let bus = evbus::Bus::local();
/// match tokio::time::timeout(Duration::from_secs(5), bus.subscriptions_ready()).await {
///     Ok(ready) => ready?,                              // Redis confirmed every SUBSCRIBE
///     Err(_elapsed) => eprintln!("Redis unreachable for 5 s; the bus keeps trying"),
/// }
/// # Ok::<(), evbus::BusError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Bus {
    messages: Messages,
}

impl Bus {
    /// A bus for this process only, with default settings: the embedded default.
    pub fn local() -> Bus {
        let config = Config {
            stream_capacity: DEFAULT_STREAM_CAPACITY,
            namespace: String::new(),
        };
        Bus::with(config, Arc::new(EventHub::new()), None, None)
    }

    /// A bus with `config`; with a transport, wired both ways: the registry reports
    /// subscription interest to it, and it delivers what it receives to the bus.
    fn with(
        config: Config,
        events: Arc<EventHub>,
        global: Option<Global>,
        interest: Option<Arc<dyn Interest>>,
    ) -> Bus {
        let inner = Arc::new(BusInner {
            registry: Registry::new(interest),
            config,
            next_id: AtomicU64::new(1),
            events,
            global,
        });
        if let Some(global) = &inner.global {
            let local: Weak<dyn Receive> = Arc::downgrade(&inner) as Weak<BusInner>;
            global.transport.start(local);
        }
        Bus {
            messages: Messages::new(inner),
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
        self.inner().global.is_some()
    }

    /// The bus's counters (see [`Stats`]).
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner().registry.counters.snapshot();
        if let Some(global) = &self.inner().global {
            global.transport.fill(&mut stats);
        }
        stats
    }

    /// Hands the bus's [`Stats`] to the installed `metrics` recorder (the `metrics` feature):
    /// every counter as `evbus_<field>_total`, every gauge as `evbus_<field>`, labelled with
    /// the namespace when the bus has one. Call it before each scrape, or on a timer; the
    /// post path itself never calls a recorder. The global path's histograms (batch size,
    /// end-to-end latency) are recorded as they happen. The table of metrics, and the clock
    /// caveat of the latency, are in the crate's source, `src/export.rs`, and the README.
    ///
    /// ```
    /// let bus = evbus::Bus::local();
    /// bus.messages().post_message("room", 1u64, evbus::MessageScope::Local)?;
    /// bus.record_metrics(); // evbus_posted_total 1, with whatever recorder is installed
    /// # Ok::<(), evbus::PostError>(())
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_metrics(&self) {
        crate::export::record(&self.stats(), &self.inner().config.namespace);
    }

    /// A new stream of [`BusEvent`](crate::BusEvent)s emitted from now on.
    pub fn events(&self) -> BusEvents {
        self.inner().events.subscribe()
    }

    /// Returns once every global post made before the call is acknowledged by Redis (G12).
    /// On a bus without Redis there is none, so it returns at once.
    ///
    /// While Redis is unreachable it waits, with no bound of its own (posts are held, G07).
    /// It is cancel-safe: wrap it in a timeout to bound the wait (see
    /// [Waits](Bus#waits-and-their-bounds)).
    ///
    /// # Errors
    ///
    /// [`BusError::ShutDown`] when the bus shut down before Redis acknowledged everything.
    pub async fn flush(&self) -> Result<(), BusError> {
        match &self.inner().global {
            Some(global) => global.transport.flush().await,
            None => Ok(()),
        }
    }

    /// Returns once Redis confirmed every SUBSCRIBE (and UNSUBSCRIBE) issued before the call
    /// (G04): a global post made afterwards, from any bus, reaches this bus's receivers
    /// registered before the call. On a bus without Redis it returns at once.
    ///
    /// A channel is subscribed when it gets its first listener or stream, and unsubscribed
    /// when its last one goes. While Redis is unreachable this waits, with no bound of its
    /// own; it is cancel-safe: wrap it in a timeout (see [Waits](Bus#waits-and-their-bounds)).
    /// To wait for one stream's subscription only, see
    /// [`MessageStream::subscribed`](crate::MessageStream::subscribed).
    ///
    /// # Errors
    ///
    /// [`BusError::ShutDown`] when the bus shut down before the call or meanwhile (then once
    /// the shutdown is done, within its bound, also with Redis unreachable).
    pub async fn subscriptions_ready(&self) -> Result<(), BusError> {
        crate::session::subscriptions_ready(self.inner()).await
    }

    /// Shuts the bus down (G12): posts fail with [`PostError::ShutDown`](crate::PostError::ShutDown) from now on; global
    /// posts already made are flushed to Redis; the bus unsubscribes and closes its Redis
    /// connections; every listener is removed (its closure dropped once posts already running
    /// are done with it), every stream ends after what it buffered, every [`BusEvents`] ends.
    /// New registrations are inert afterwards. Idempotent.
    ///
    /// It returns within a bounded time even when Redis is unreachable: it waits up to 3
    /// seconds for the flush and half a second for each closing step.
    ///
    /// In a web server, call it when the shutdown signal comes, before the server waits for
    /// its connections to close (axum's `with_graceful_shutdown`): it ends every stream, so
    /// open Server-Sent Events responses end with it, and the server can stop. Without it an
    /// open stream keeps its connection, and the process, alive.
    ///
    /// # Errors
    ///
    /// [`BusError::Redis`] when Redis did not acknowledge every global post in time; the
    /// text says how many. Their [`Delivery`](crate::Delivery) futures resolve to an error.
    /// Everything else is shut down all the same.
    pub async fn shutdown(&self) -> Result<(), BusError> {
        let inner = self.inner();
        inner.registry.close();
        let result = match &inner.global {
            Some(global) => global.transport.close().await,
            None => Ok(()),
        };
        inner.events.close();
        result
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
/// Default of `outage_buffer_bytes` and `receive_buffer_bytes`.
const DEFAULT_BUFFER_BYTES: usize = 64 << 20;
/// Default of `repair_window`: what covers a reconnect on a busy server (K01).
const DEFAULT_REPAIR_MESSAGES: usize = 100_000;
const DEFAULT_REPAIR_BYTES: usize = 64 << 20;
/// Default of `repair_timeout` (K03): a few round trips through Redis, with room for a
/// busy machine.
const DEFAULT_REPAIR_TIMEOUT: Duration = Duration::from_millis(200);
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
pub struct BusBuilder {
    redis_url: Option<String>,
    namespace: String,
    wire_format: WireFormat,
    stream_capacity: usize,
    max_message_bytes: usize,
    outage_buffer: usize,
    class_names: HashMap<TypeId, (&'static str, String)>,
    signing_key: Option<Vec<u8>>,
    accepted_keys: Vec<Vec<u8>>,
    outage_buffer_bytes: usize,
    receive_buffer_bytes: usize,
    repair_window: (usize, usize),
    repair_timeout: Duration,
}

/// Shows the Redis URL without its password.
impl std::fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusBuilder")
            .field("redis_url", &self.redis_url.as_deref().map(redact))
            .field("namespace", &self.namespace)
            .field("wire_format", &self.wire_format)
            .field("stream_capacity", &self.stream_capacity)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("outage_buffer", &self.outage_buffer)
            .field(
                "class_names",
                &self.class_names.values().collect::<Vec<_>>(),
            )
            .finish()
    }
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
            signing_key: None,
            accepted_keys: Vec::new(),
            outage_buffer_bytes: DEFAULT_BUFFER_BYTES,
            receive_buffer_bytes: DEFAULT_BUFFER_BYTES,
            repair_window: (DEFAULT_REPAIR_MESSAGES, DEFAULT_REPAIR_BYTES),
            repair_timeout: DEFAULT_REPAIR_TIMEOUT,
        }
    }
}

impl BusBuilder {
    /// Redis to pass global messages through: `redis://[user:pass@]host:port[/db]`, or
    /// `rediss://` for TLS, which needs this crate's `tls` feature (rustls; the server's
    /// certificate is checked against the system's roots, or the file in `SSL_CERT_FILE`).
    /// Without a URL the bus is local.
    ///
    /// The scheme says what the server is: `redis` or `rediss` for one server,
    /// `redis-cluster` or `rediss-cluster` for a cluster (`?node=host:port&..` names more
    /// nodes), `redis-sentinel` or `rediss-sentinel` for a server behind Sentinel
    /// (`?sentinelServiceName=name`), and the same with `valkey` for `redis`. Any other scheme
    /// (`http://` included) is refused by [`build`](BusBuilder::build) with
    /// [`BusError::InvalidConfig`] before it connects anywhere:
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let built = evbus::Bus::builder().redis_url("http://127.0.0.1:6379").build().await;
    /// let Err(evbus::BusError::InvalidConfig(why)) = built else { panic!() };
    /// assert!(why.contains("\"http\" is not a Redis scheme"));
    /// # });
    /// ```
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Prefix of every Redis channel name; default `""`, as Serverpod. With
    /// `namespace("app1:")` channel `chat` is `app1:chat` on Redis, so two applications
    /// sharing a Redis never see each other's messages (G10).
    pub fn namespace(mut self, prefix: impl Into<String>) -> Self {
        self.namespace = prefix.into();
        self
    }

    /// How global messages are encoded on Redis; default [`WireFormat::Native`].
    pub fn wire_format(mut self, format: WireFormat) -> Self {
        self.wire_format = format;
        self
    }

    /// The buffer of each [`MessageStream`](crate::MessageStream), in messages (L11); default
    /// 1024. At least 1. A channel's streams of one message type share one ring of this many
    /// slots (rounded up to a power of two, 16 bytes each), allocated by the first post that
    /// reaches them; an idle stream holds none. A slot also keeps the allocation of its last
    /// message when that message is small and plain (no drop glue, at most 64 bytes: a
    /// number, an id), to reuse it for the next message once the streams have dropped it; so
    /// a busy channel of such messages holds up to this many of them besides.
    pub fn stream_capacity(mut self, messages: usize) -> Self {
        self.stream_capacity = messages;
        self
    }

    /// Bound on one encoded message and on one Redis payload this bus writes; default 1 MiB,
    /// at least 256. A larger message is refused when posted
    /// ([`PostError::TooLarge`](crate::PostError::TooLarge)); a Native frame is split so it
    /// never exceeds it.
    ///
    /// On receiving, the bound applies to each message, not to the frame that carries it: a
    /// bus with a larger bound may coalesce messages of both sizes into one frame, and the
    /// ones within this bus's bound are delivered while each one over it is refused and
    /// counted (G09). A frame is read whatever its size (Redis has delivered it already):
    /// what bounds it is Redis's `proto-max-bulk-len` (512 MB by default) and the subscriber
    /// connection's output buffer limit on the server, and decoding it allocates no more than
    /// one small entry per 6 bytes of it. A Serverpod payload is one message, judged whole.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Global posts that may wait for Redis at once; default 100,000, at least 1. While Redis
    /// is unreachable, global posts are held up to this bound and sent in order after the
    /// reconnect; past it `post_message` fails with [`PostError::Backpressure`](crate::PostError::Backpressure) (G07).
    pub fn outage_buffer(mut self, messages: usize) -> Self {
        self.outage_buffer = messages;
        self
    }

    /// Bytes of global posts that may wait for Redis at once, beside the count of
    /// [`outage_buffer`](Self::outage_buffer); default 64 MiB, at least `max_message_bytes`.
    /// Past either bound `post_message` fails with
    /// [`PostError::Backpressure`](crate::PostError::Backpressure) (G07), so posting large
    /// messages faster than Redis takes them cannot grow memory without bound.
    pub fn outage_buffer_bytes(mut self, bytes: usize) -> Self {
        self.outage_buffer_bytes = bytes;
        self
    }

    /// Bytes of global messages received from Redis that may wait for the bus's dispatch
    /// threads at once; default 64 MiB. A message that would pass it is dropped and counted
    /// missed ([`Stats::global_missed`](crate::Stats::global_missed),
    /// [`BusEvent::MessagesMissed`](crate::BusEvent::MessagesMissed)): listeners too slow
    /// for the traffic cost messages, never unbounded memory.
    pub fn receive_buffer_bytes(mut self, bytes: usize) -> Self {
        self.receive_buffer_bytes = bytes;
        self
    }

    /// What this bus keeps of the global messages it published, to resend those a receiver
    /// lost (K01, K02): the last `messages` messages, within `bytes` bytes, oldest evicted
    /// first; default 100,000 messages and 64 MiB, enough to cover a reconnect on a busy
    /// server. Either bound at 0 turns repair off: receivers then report what they lose
    /// ([`BusEvent::MessagesMissed`](crate::BusEvent::MessagesMissed)) without asking for
    /// it. Only [`WireFormat::Native`] carries the sequence numbers that repair needs.
    ///
    /// Turn it off on every bus of a namespace or on none: a bus that repairs asks an origin
    /// that does not in vain, and holds that origin's later messages on the channel for up to
    /// fifteen `repair_timeout`s (asking four times, each wait twice the one before) before it
    /// counts the gap missed.
    ///
    /// The memory the window takes never exceeds `bytes` plus a small entry per frame.
    /// See [the repair guarantees](crate::docs::guarantees#repair) for what is promised.
    pub fn repair_window(mut self, messages: usize, bytes: usize) -> Self {
        self.repair_window = (messages, bytes);
        self
    }

    /// How long later messages of an origin on a channel wait while a gap before them is
    /// being repaired (K03); default 200 ms. The wait starts again whenever part of the
    /// gap arrives, so a long repair that makes progress is not cut short. When it runs
    /// out, the gap is asked for again, up to four times in all, each wait twice the one
    /// before (15 `repair_timeout`s in all: the origin may be subscribing its control channel
    /// again after an outage); then what is still missing is counted missed and the waiting
    /// messages are delivered, in sequence order. Other channels and origins never wait.
    pub fn repair_timeout(mut self, wait: Duration) -> Self {
        self.repair_timeout = wait;
        self
    }

    /// Authenticates global messages: every Native frame this bus publishes carries a MAC
    /// (keyed BLAKE3 with a key derived from `key`), and every frame it receives must carry
    /// one that verifies under `key` or a key given to
    /// [`accept_signing_key`](Self::accept_signing_key). Frames without a valid MAC are
    /// refused before anything else is read of them, counted in
    /// [`Stats::global_rejected`](crate::Stats::global_rejected) and reported as
    /// [`BusEvent::Rejected`](crate::BusEvent::Rejected); they never touch sequence state.
    ///
    /// Every bus on the same channels needs the same key (a bus without one reads signed
    /// frames but does not check them). Use at least 32 random bytes, and keep it out of
    /// logs: `Debug` never shows it. A signed frame is 32 bytes longer, and
    /// `max_message_bytes` counts them. [`WireFormat::Serverpod`] cannot carry a MAC:
    /// `build` refuses the combination.
    pub fn signing_key(mut self, key: &[u8]) -> Self {
        self.signing_key = Some(key.to_vec());
        self
    }

    /// Also accepts frames signed with `old_key` (key rotation): give every bus the new key
    /// with [`signing_key`](Self::signing_key) and the old one here, then, once no bus signs
    /// with the old one, drop it.
    pub fn accept_signing_key(mut self, old_key: &[u8]) -> Self {
        self.accepted_keys.push(old_key.to_vec());
        self
    }

    /// The wire class name of `M`, instead of its type name (see [`Message`]).
    pub fn class_name<M: Message>(mut self, name: impl Into<String>) -> Self {
        self.class_names
            .insert(TypeId::of::<M>(), (std::any::type_name::<M>(), name.into()));
        self
    }

    /// Builds the bus.
    ///
    /// # Errors
    ///
    /// - [`BusError::InvalidConfig`] when a setting is out of range: a `stream_capacity` or
    ///   `outage_buffer` of 0, a `max_message_bytes` below 256, a class name that is empty,
    ///   longer than 1024 bytes, or given to two types; or when the Redis URL's scheme is not
    ///   one of [`redis_url`](BusBuilder::redis_url)'s.
    /// - [`BusError::Redis`] when a Redis URL is set and the URL is invalid or Redis cannot be
    ///   reached now (after that, the bus reconnects by itself whenever the connection drops),
    ///   or when `build` is not called inside a tokio runtime: the bus's Redis tasks run on the
    ///   runtime that built it.
    ///
    /// # Waiting
    ///
    /// With a Redis URL, `build` connects the bus's two connections (publisher and
    /// subscriber) before it returns. It does not retry a failed first connection: a refused
    /// one fails in well under a second, and one that Redis does not answer gives up after 5
    /// seconds. Each connection has that bound, so `build` returns within 10 seconds at the
    /// very most. Wrap it in a timeout for a tighter bound. (Once built, the bus reconnects by
    /// itself, with no bound: see [Waits](Bus#waits-and-their-bounds).)
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
        if self.outage_buffer_bytes < self.max_message_bytes {
            return Err(BusError::InvalidConfig(format!(
                "outage_buffer_bytes ({}) must be at least max_message_bytes ({})",
                self.outage_buffer_bytes, self.max_message_bytes
            )));
        }
        if self.outage_buffer == 0 {
            return Err(BusError::InvalidConfig(
                "outage_buffer must be at least 1".into(),
            ));
        }
        let mut owners: HashMap<&str, &str> = HashMap::new();
        for (type_name, class) in self.class_names.values() {
            if class.is_empty() {
                return Err(BusError::InvalidConfig(format!(
                    "empty class name for {type_name}"
                )));
            }
            if class.len() > MAX_CLASS_LEN {
                return Err(BusError::InvalidConfig(format!(
                    "class name of {type_name} has {} bytes; at most {MAX_CLASS_LEN} are allowed",
                    class.len()
                )));
            }
            if let Some(other) = owners.insert(class, type_name) {
                return Err(BusError::InvalidConfig(format!(
                    "class name {class:?} is given to both {other} and {type_name}"
                )));
            }
        }
        if self.signing_key.as_ref().is_some_and(|key| key.is_empty()) {
            return Err(BusError::InvalidConfig("the signing key is empty".into()));
        }
        if !self.accepted_keys.is_empty() && self.signing_key.is_none() {
            return Err(BusError::InvalidConfig(
                "accept_signing_key needs a signing_key too".into(),
            ));
        }
        if self.signing_key.is_some() && self.wire_format == WireFormat::Serverpod {
            return Err(BusError::InvalidConfig(
                "WireFormat::Serverpod cannot carry a MAC: a signing key needs WireFormat::Native"
                    .into(),
            ));
        }
        let config = Config {
            stream_capacity: self.stream_capacity,
            namespace: self.namespace.clone(),
        };
        let events = Arc::new(EventHub::new());
        let Some(url) = self.redis_url else {
            return Ok(Bus::with(config, events, None, None));
        };
        check_scheme(&url)?;
        let names = self
            .class_names
            .into_iter()
            .map(|(type_id, (_, class))| (type_id, Arc::from(class)))
            .collect();
        let keys = Keys::new(self.signing_key.as_deref(), &self.accepted_keys);
        let codec =
            Arc::new(Codec::new(self.wire_format, self.max_message_bytes, names).with_keys(keys));
        let settings = Settings {
            url,
            namespace: self.namespace,
            outage_buffer: self.outage_buffer,
            outage_buffer_bytes: self.outage_buffer_bytes,
            receive_buffer_bytes: self.receive_buffer_bytes,
            repair_window: match self.wire_format {
                WireFormat::Native => self.repair_window,
                _ => (0, 0),
            },
            repair_timeout: self.repair_timeout,
            codec: codec.clone(),
        };
        let redis = Arc::new(RedisTransport::connect(settings, events.clone()).await?);
        let global = Global {
            codec,
            transport: redis.clone(),
        };
        let bus = Bus::with(config, events, Some(global), Some(redis));
        Ok(bus)
    }
}

/// The URL schemes of a Redis (or Valkey) server that the Redis client reads: one server,
/// a cluster, or Sentinel; with TLS when the scheme has the extra `s`.
const REDIS_SCHEMES: [&str; 12] = [
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
];

/// Refuses a Redis URL whose scheme is not Redis's: the client would read `http://host` as
/// a plain Redis server and connect to it. What has no scheme at all (`not a url`,
/// `127.0.0.1:6379`) is left to the client, which refuses it as an invalid URL.
fn check_scheme(url: &str) -> Result<(), BusError> {
    // A URL's scheme is what comes before its first ':', if it has a scheme's form. Only
    // that is quoted: the rest of the URL may hold a password.
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme)
        .filter(|scheme| {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
    match scheme {
        Some(scheme) if !REDIS_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) => {
            Err(BusError::InvalidConfig(format!(
                "the Redis URL's scheme {scheme:?} is not a Redis scheme; a Redis URL starts \
                 with redis:// (or rediss, redis-cluster, rediss-cluster, redis-sentinel, \
                 rediss-sentinel, or valkey for redis)"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::check_scheme;
    use crate::error::BusError;

    #[test]
    fn redis_schemes_are_accepted_and_others_refused_by_name() {
        for url in [
            "redis://127.0.0.1:6379",
            "REDIS://host",
            "rediss://user:pw@host:6380/1",
            "redis-cluster://a:7000?node=b:7001",
            "rediss-cluster://a:7000",
            "redis-sentinel://a:26379?sentinelServiceName=m",
            "rediss-sentinel://a:26379?sentinelServiceName=m",
            "valkey://host",
            "valkeys-cluster://host:7000",
        ] {
            assert_eq!(check_scheme(url), Ok(()), "{url}");
        }
        for (url, named) in [
            ("http://127.0.0.1:6379", "\"http\""),
            ("https://host", "\"https\""),
            ("redis+unix:///tmp/redis.sock", "\"redis+unix\""),
            ("tcp://host:6379", "\"tcp\""),
        ] {
            match check_scheme(url) {
                Err(BusError::InvalidConfig(text)) => assert!(text.contains(named), "{text}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        // The scheme is what comes before the first ':'; nothing after it is quoted.
        match check_scheme("user:secret@host:6379") {
            Err(BusError::InvalidConfig(text)) => {
                assert!(
                    text.contains("\"user\"") && !text.contains("secret"),
                    "{text}"
                )
            }
            other => panic!("{other:?}"),
        }
        // No scheme at all: left to the client, which refuses it as an invalid URL.
        for url in ["not a url", "127.0.0.1:6379", ""] {
            assert_eq!(check_scheme(url), Ok(()), "{url}");
        }
    }
}
