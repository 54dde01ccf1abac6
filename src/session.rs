//! Sessions, `Messages` (Serverpod's `session.messages`), and what a session owns.
//!
//! # Ownership
//!
//! A [`Session`] owns the listeners and streams registered through its
//! [`messages`](Session::messages): the registry's [`Owner`] records their ids and (weakly)
//! their channels. The bus's snapshots hold the closures and stream sinks; the owner holds
//! nothing of the user's, so a session can never keep a closure alive (S03). Closing takes
//! the record and removes every registration from its channel before returning (S01);
//! dropping a session closes it. The lock order is the registry's
//! ([`Registry::register`](crate::local::registry::Registry::register)).

use std::sync::{Arc, Weak};

use crate::delivery::Delivery;
use crate::error::{BusError, PostError};
use crate::inner::BusInner;
use crate::local::post::Receiver;
use crate::local::registry::{Kind, Owner, Topic};
use crate::local::stream::{MessageStream, Registration};
use crate::message::{Message, MessageScope};
use crate::revocation::{revoked_authentication_channel, RevokedAuthentication};
use crate::transport::BoxFuture;

/// Identifies one registered listener, for [`Messages::remove_listener`].
///
/// Every [`Messages::add_listener`] call returns a new id, also for the same closure (L08):
/// Rust closures have no identity, unlike Dart's functions, so evbus does not try to
/// recognise "the same listener" (this differs from Serverpod on purpose).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub(crate) u64);

/// The messaging interface of a bus or a session: Serverpod's `session.messages`.
///
/// Registrations made through [`Bus::messages`](crate::Bus::messages) live until removed or
/// until the bus shuts down (S05); those made through [`Session::messages`] belong to the
/// session (S01).
#[derive(Clone)]
pub struct Messages {
    pub(crate) bus: Arc<BusInner>,
    owner: Option<Arc<Owner>>,
}

impl Messages {
    pub(crate) fn new(bus: Arc<BusInner>) -> Self {
        Messages { bus, owner: None }
    }

    /// Posts `message` on `channel`.
    ///
    /// With [`MessageScope::Local`] (or `Auto` on a bus without Redis), every listener of the
    /// channel is called exactly once, on this thread, before this returns, in the order the
    /// listeners were added (L02), and every stream of the channel has the message queued
    /// (L03). Listeners get `&M`, streams `Arc<M>` clones of one allocation; nothing is
    /// serialized (L04). A listener or stream of another message type is skipped and counted
    /// in [`Stats::type_mismatches`](crate::Stats::type_mismatches) (L05). The post sees the
    /// channel as it was when the post began: listeners may add or remove listeners (themselves
    /// included), post, or close sessions from inside a callback (L06). A panicking listener
    /// is caught and counted; the others still run and the post succeeds (L07). Posting to a
    /// channel with no listeners succeeds and reaches nobody (L01).
    ///
    /// Posting never blocks and never waits for another thread: no lock is taken, whatever
    /// registrations, removals or session closes run at the same time (L10). Posting through
    /// a closed session still works (S04).
    ///
    /// # Global posts
    ///
    /// With [`MessageScope::Global`] (or `Auto` on a bus with Redis), the message goes only
    /// through Redis, as in Serverpod: every bus subscribed to the channel, this one included,
    /// delivers it to its listeners and streams when it comes back from Redis, on one of the
    /// bus's dispatch threads (chosen by channel); each bus decodes it once per receiver type
    /// (G03). Nothing is called
    /// before this returns ([`Delivery::local_receivers`] is 0). The message is encoded here
    /// and queued; the publisher sends whatever is queued in one pipelined write, so
    /// throughput grows with load while a lone post leaves at once (G05). Await the
    /// [`Delivery`] to know that Redis acknowledged it.
    ///
    /// # Errors
    ///
    /// - [`PostError::RedisNotEnabled`] for [`MessageScope::Global`] on a bus without Redis
    ///   (G01); nothing is delivered.
    /// - [`PostError::ShutDown`] after [`Bus::shutdown`](crate::Bus::shutdown).
    /// - Global posts: [`PostError::TooLarge`] when the encoded message exceeds
    ///   `max_message_bytes`, [`PostError::Encode`] when serde refuses it, and
    ///   [`PostError::Backpressure`] when `outage_buffer` global posts, or
    ///   `outage_buffer_bytes` of them, are already waiting for Redis (G07).
    ///
    /// An `Ok` does not promise that anyone received the message:
    /// [`Delivery::local_receivers`] says how many did locally, and a global post may reach
    /// no bus at all.
    ///
    /// # Example
    ///
    /// ```
    /// # use evbus::{Bus, MessageScope};
    /// let bus = Bus::local();
    /// let id = bus.messages().add_listener("user_updates", |n: &u64| println!("update {n}"));
    /// let delivery = bus.messages().post_message("user_updates", 7u64, MessageScope::Auto)?;
    /// assert_eq!(delivery.local_receivers(), 1);
    /// assert!(bus.messages().remove_listener("user_updates", id));
    /// # Ok::<(), evbus::PostError>(())
    /// ```
    #[inline]
    pub fn post_message<M: Message>(
        &self,
        channel: &str,
        message: M,
        scope: MessageScope,
    ) -> Result<Delivery, PostError> {
        match self.bus.route(scope)? {
            None => Ok(Delivery::local(self.bus.registry.post(channel, message))),
            Some(global) => self.bus.post_global(global, channel, &message),
        }
    }

    /// Adds a listener to `channel`: `listener` is called with every message of type `M`
    /// posted there, on the posting thread (L02). Returns a new [`ListenerId`] every time
    /// (L08).
    ///
    /// Through a session, the listener belongs to it and is removed when it closes (S01); if
    /// the session is already closed, the listener is inert: it is never called, and is
    /// dropped at once (S04). After [`Bus::shutdown`](crate::Bus::shutdown) every new listener
    /// is inert.
    ///
    /// The bus holds the closure, so a closure that captures a [`Bus`](crate::Bus) clone keeps
    /// that bus alive for as long as it is registered (a reference cycle, as with any `Arc`).
    /// Register such listeners through a session, or remove them, or call
    /// [`Bus::shutdown`](crate::Bus::shutdown), which removes every listener.
    pub fn add_listener<M: Message, F>(&self, channel: &str, listener: F) -> ListenerId
    where
        F: Fn(&M) + Send + Sync + 'static,
    {
        let (id, _) = self.register::<M>(channel, Receiver::listener(listener));
        ListenerId(id)
    }

    /// Removes listener `id` from `channel`; returns false when the channel or the id is
    /// unknown there (L08).
    ///
    /// After this returns, no post that starts afterwards calls that listener. A post already
    /// running on another thread may still call it once; the closure stays alive until then,
    /// and is dropped as soon as that post is done (L09, S03).
    pub fn remove_listener(&self, channel: &str, id: ListenerId) -> bool {
        let registry = &self.bus.registry;
        registry
            .get(channel)
            .is_some_and(|topic| registry.remove(&topic, id.0, Kind::Listener))
    }

    /// Creates a stream of the messages of type `M` posted on `channel` from now on.
    ///
    /// The stream buffers up to the bus's `stream_capacity` messages; when full, the oldest is
    /// dropped and counted in [`MessageStream::missed`] (L11). Dropping the stream unregisters
    /// it (L12). Through a session, it ends when the session closes, after yielding what it had
    /// buffered (S02); through a closed session, or after shutdown, it ends at once (S04).
    ///
    /// # The session's lifetime
    ///
    /// Dropping a session closes it, and so ends the streams made through it. A stream that
    /// outlives the code that made it, such as the body of a Server-Sent Events response
    /// returned from a handler, ends at once if its session is dropped at the end of the
    /// handler: the client gets an empty response. Make such a stream with
    /// [`Session::into_stream`], which moves the session into the stream, or keep the session
    /// alive beside the stream yourself.
    ///
    /// On a bus with Redis, a global post reaches the stream once Redis confirmed its
    /// SUBSCRIBE: wait for that with [`MessageStream::subscribed`].
    pub fn create_stream<M: Message>(&self, channel: &str) -> MessageStream<M> {
        let (stream, registration) = self.new_stream(channel);
        stream.registered(Some(Box::new(registration)))
    }

    /// A stream registered on `channel` (inert when the session is closed or the bus shut
    /// down), and what unregisters it.
    fn new_stream<M: Message>(&self, channel: &str) -> (MessageStream<M>, StreamRegistration) {
        let (sink, stream) = MessageStream::new(self.bus.config.stream_capacity);
        let (id, topic) = self.register::<M>(channel, Receiver::stream(sink));
        let registration = StreamRegistration {
            bus: Arc::downgrade(&self.bus),
            topic: topic.as_ref().map(Arc::downgrade),
            id,
            session: None,
        };
        (stream, registration)
    }

    /// Registers `receiver` on `channel` under a new id, owned by this session if any; returns
    /// the id and, unless the registration is inert (closed session, shut-down bus), its
    /// channel. An inert receiver is dropped at once, outside any lock.
    fn register<M: Message>(
        &self,
        channel: &str,
        receiver: Receiver<M>,
    ) -> (u64, Option<Arc<Topic>>) {
        if let Some(global) = &self.bus.global {
            global.codec.learn::<M>();
        }
        let (id, registered) =
            self.bus
                .registry
                .register(channel, &self.bus.next_id, receiver, self.owner.as_deref());
        (id, registered.ok())
    }
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Messages");
        match &self.owner {
            None => debug.field("owner", &"bus"),
            Some(owner) => debug
                .field("owner", &"session")
                .field("closed", &owner.is_closed()),
        };
        debug.finish_non_exhaustive()
    }
}

/// A unit of work (a request, a connection) that owns what it registers.
///
/// Not `Clone`; dropping it closes it. Listeners and streams made through
/// [`Session::messages`] belong to the session: [`close`](Session::close) removes all of them
/// (S01) and ends its streams after they yield what they had buffered (S02). So a stream
/// lives no longer than its session: to return a stream from a handler (the body of a
/// Server-Sent Events response), make it with [`Session::into_stream`], which moves the
/// session into the stream and closes it when the stream is dropped. After a session
/// is closed and dropped, the bus holds no strong reference to anything it registered: a
/// closure that captured an `Arc` releases it as soon as no post that began before the close
/// is still running, with no later post or timer needed (S03). Closing a session while other
/// threads post to its channels is safe and leaks nothing (S06).
///
/// ```
/// # use evbus::Bus;
/// let bus = Bus::local();
/// let session = bus.session();
/// session.messages().add_listener("chat", |line: &String| println!("{line}"));
/// assert_eq!(bus.stats().listeners, 1);
/// drop(session); // closes it
/// assert_eq!(bus.stats().listeners, 0);
/// ```
pub struct Session {
    messages: Messages,
}

impl Session {
    pub(crate) fn new(bus: Arc<BusInner>) -> Self {
        Session {
            messages: Messages {
                bus,
                owner: Some(Arc::new(Owner::new())),
            },
        }
    }

    /// The session's messaging interface (Serverpod's `session.messages`).
    pub fn messages(&self) -> &Messages {
        &self.messages
    }

    /// Closes the session: removes its listeners and ends its streams (S01, S02). Idempotent.
    /// Registrations made through a closed session are inert (S04).
    pub fn close(&self) {
        if let Some(owner) = &self.messages.owner {
            self.messages.bus.registry.close_owner(owner);
        }
    }

    /// Whether [`close`](Session::close) was called (or the session is being dropped).
    pub fn is_closed(&self) -> bool {
        self.messages
            .owner
            .as_ref()
            .is_some_and(|owner| owner.is_closed())
    }

    /// A stream of the messages of type `M` posted on `channel` from now on, which owns this
    /// session: the session lives as long as the stream, and dropping the stream closes it,
    /// removing whatever else was registered through it (S01).
    ///
    /// This is the stream to return from a handler, as the body of a Server-Sent Events or
    /// WebSocket response: a session made in the handler and dropped at its end would end a
    /// stream made by [`Messages::create_stream`] at once. When the client goes away, the
    /// server drops the response body, and with it the stream and the session. Otherwise the
    /// stream is [`create_stream`](Messages::create_stream)'s: the same buffer, the same end
    /// at [`Bus::shutdown`](crate::Bus::shutdown); made through a closed session it is inert
    /// and ends at once (S04).
    ///
    /// ```
    /// # use evbus::{Bus, MessageScope};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let bus = Bus::local();
    /// let mut stream = bus.session().into_stream::<String>("chat"); // no session to keep
    /// bus.messages().post_message("chat", "hi".to_string(), MessageScope::Local)?;
    /// assert_eq!(stream.recv().await.as_deref().map(String::as_str), Some("hi"));
    /// assert_eq!(bus.stats().streams, 1);
    /// drop(stream); // closes the session
    /// assert_eq!(bus.stats().streams, 0);
    /// # Ok::<(), evbus::PostError>(())
    /// # }).unwrap();
    /// ```
    pub fn into_stream<M: Message>(self, channel: &str) -> MessageStream<M> {
        let (stream, mut registration) = self.messages.new_stream(channel);
        registration.session = Some(self);
        stream.registered(Some(Box::new(registration)))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Where a stream is registered, so that dropping it unregisters it (L12); and the session
/// it owns, if it was made by [`Session::into_stream`].
struct StreamRegistration {
    bus: Weak<BusInner>,
    /// `None` for an inert stream (closed session, shut-down bus).
    topic: Option<Weak<Topic>>,
    id: u64,
    /// Dropped (so closed) after the stream is unregistered: fields drop after `drop` runs.
    session: Option<Session>,
}

impl Drop for StreamRegistration {
    fn drop(&mut self) {
        let topic = self.topic.as_ref().and_then(Weak::upgrade);
        if let (Some(bus), Some(topic)) = (self.bus.upgrade(), topic) {
            bus.registry.remove(&topic, self.id, Kind::Stream);
        }
    }
}

impl Registration for StreamRegistration {
    /// The bus's [`subscriptions_ready`], taken when the wait begins: the changes it waits for
    /// include the stream's own SUBSCRIBE, which the registry issued (under the channel's
    /// lock) before `create_stream` returned.
    fn subscribed(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let bus = self.bus.upgrade().ok_or(BusError::ShutDown)?;
            subscriptions_ready(&bus).await
        })
    }
}

/// `Bus::subscriptions_ready` and `MessageStream::subscribed`: the transport's wait for the
/// subscription changes issued so far (at once without a transport). A shutdown before the
/// call ends it with `ShutDown` here; one during it, in the transport, whose close ends its
/// waiters also while Redis is unreachable.
pub(crate) async fn subscriptions_ready(bus: &BusInner) -> Result<(), BusError> {
    if bus.registry.is_closed() {
        return Err(BusError::ShutDown);
    }
    match &bus.global {
        Some(global) => global.transport.subscriptions_ready().await,
        None => Ok(()),
    }
}

impl Messages {
    /// Revokes `user_identifier`'s authentication: posts `revocation` on
    /// [`revoked_authentication_channel`]`(user_identifier)` with [`MessageScope::Auto`], that is
    /// through Redis when the bus has it, locally otherwise (R01).
    ///
    /// # Errors
    ///
    /// As [`Messages::post_message`].
    ///
    /// ```
    /// use evbus::{revoked_authentication_channel, Bus, RevokedAuthentication};
    ///
    /// let bus = Bus::local();
    /// // A connection of user 42, authenticated as "a1", on an endpoint requiring "chat".
    /// let connection = bus.session();
    /// connection.messages().add_listener(
    ///     &revoked_authentication_channel("42"),
    ///     |revoked: &RevokedAuthentication| {
    ///         if revoked.affects(Some("a1"), &["chat"]) {
    ///             println!("closing the connection");
    ///         }
    ///     },
    /// );
    /// let delivery = bus.messages().revoke_authentication("42", RevokedAuthentication::User)?;
    /// assert_eq!(delivery.local_receivers(), 1);
    /// # Ok::<(), evbus::PostError>(())
    /// ```
    pub fn revoke_authentication(
        &self,
        user_identifier: &str,
        revocation: RevokedAuthentication,
    ) -> Result<Delivery, PostError> {
        let channel = revoked_authentication_channel(user_identifier);
        self.post_message(&channel, revocation, MessageScope::Auto)
    }
}
