//! The reference model of the local bus and the harness that runs an operation sequence on
//! both it and a real bus, comparing them after every step. Shared by `tests/model.rs`
//! (proptest generates the sequences) and `fuzz/fuzz_targets/local_ops.rs` (libFuzzer does):
//! include it with `#[path = ".../tests/support/model.rs"] mod model;`.
//!
//! The model is a plain single-threaded bus: every registration (listener or stream) is a
//! record with its channel, message type, owning session and whether it is still registered;
//! every held stream has a `VecDeque` buffer with the bus's capacity and a `missed` count.
//! After every post the harness compares the post's `local_receivers()` and which listeners
//! were called with which value and in which order (each real listener appends
//! `(model id, value)` to a shared log); after every operation the whole `Stats` (counters and
//! gauges), `missed()` of every held stream and `is_closed()` of every session. Draining a
//! stream compares every poll result. A mismatch is an `Err` describing it.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use evbus::{Bus, Channel, ListenerId, MessageScope, MessageStream, Messages, Session, Stats};
use futures_core::Stream;

/// A failed comparison, described.
pub type Mismatch = String;

/// `ensure!` without proptest: returns a [`Mismatch`] from the enclosing function.
macro_rules! ensure {
    ($cond:expr) => {
        if !$cond {
            return Err(format!("assertion failed: {}", stringify!($cond)));
        }
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// `ensure_eq!` without proptest.
macro_rules! ensure_eq {
    ($left:expr, $right:expr) => {
        ensure_eq!($left, $right, "{}", stringify!($left))
    };
    ($left:expr, $right:expr, $($fmt:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err(format!("{}: {:?} != {:?}", format!($($fmt)+), left, right));
        }
    }};
}

/// Channel names the operations use. The last one is never registered on: it only appears
/// as the wrong channel of a removal.
pub const CHANNELS: [&str; 4] = ["alpha", "beta", "gamma", "nowhere"];
/// Channels operations register on and post to.
pub const LIVE_CHANNELS: usize = 3;
/// A small stream buffer, so that drop-oldest happens often.
pub const CAPACITY: usize = 4;
/// At most this many sessions are held at once (closed ones included).
pub const MAX_SESSIONS: usize = 3;

// ---- small helpers --------------------------------------------------------------------------

pub struct NoopWaker;

impl Wake for NoopWaker {
    fn wake(self: Arc<Self>) {}
}

pub fn noop_waker() -> Waker {
    Waker::from(Arc::new(NoopWaker))
}

/// Runs a future that is ready at its first poll (building a local bus is).
pub fn ready<F: Future>(future: F) -> F::Output {
    let waker = noop_waker();
    match pin!(future).poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("future was expected to be ready at once"),
    }
}

pub fn poll_once<S: Stream + Unpin>(stream: &mut S) -> Poll<Option<S::Item>> {
    let waker = noop_waker();
    std::pin::Pin::new(stream).poll_next(&mut Context::from_waker(&waker))
}

// ---- operations -----------------------------------------------------------------------------

/// The two message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    A, // u64
    B, // String
}

/// A posted value, as the model and the listeners' log see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    A(u64),
    B(String),
}

impl Value {
    fn ty(&self) -> Ty {
        match self {
            Value::A(_) => Ty::A,
            Value::B(_) => Ty::B,
        }
    }
}

/// One operation. Indices (`who`, `pick`, ...) are taken modulo the length of whatever they
/// pick from when the operation runs, so every generated sequence is valid and shrinks well.
/// `who == 0` is the bus's own `messages()`, `who > 0` a held session (the bus if none).
#[derive(Clone, Debug)]
pub enum Op {
    AddListener {
        who: u8,
        ty: Ty,
        ch: u8,
    },
    /// Removes a listener id returned earlier (possibly already removed, possibly inert), on
    /// its own channel or, with `wrong`, on another one.
    RemoveListener {
        who: u8,
        pick: u16,
        wrong: Option<u8>,
    },
    Post {
        who: u8,
        ty: Ty,
        ch: u8,
    },
    PostThroughHandle {
        pick: u16,
    },
    CreateStream {
        who: u8,
        ty: Ty,
        ch: u8,
    },
    DropStream {
        pick: u16,
    },
    /// Polls a held stream up to `max` times (stops at `Pending` or `None`).
    Drain {
        pick: u16,
        max: u8,
    },
    CloseSession {
        pick: u8,
    },
    DropSession {
        pick: u8,
    },
    OpenSession,
    CreateHandle {
        ty: Ty,
        ch: u8,
    },
    DropHandle {
        pick: u16,
    },
}

// ---- the reference model ----------------------------------------------------------------------

pub struct ModelListener {
    id: ListenerId,
    ch: usize,
    ty: Ty,
    /// Model session index, `None` for the bus.
    owner: Option<usize>,
    registered: bool,
}

pub struct ModelStream {
    ch: usize,
    ty: Ty,
    owner: Option<usize>,
    registered: bool,
    /// Its sink is gone: once `buffer` is drained it yields `None`.
    ended: bool,
    buffer: VecDeque<Value>,
    missed: u64,
}

#[derive(Default)]
pub struct Model {
    /// Every listener ever added, in add order; the index is the listener's model id.
    listeners: Vec<ModelListener>,
    /// Every stream ever created; the index is the stream's model id.
    streams: Vec<ModelStream>,
    /// Every session ever opened: closed or not.
    sessions: Vec<bool>,
    /// Every handle ever made: (channel, alive).
    handles: Vec<(usize, bool)>,
    posted: u64,
    delivered: u64,
    dropped: u64,
    mismatches: u64,
}

impl Model {
    fn is_closed(&self, owner: Option<usize>) -> bool {
        owner.is_some_and(|s| self.sessions[s])
    }

    /// A post of `value` on `ch`: the expected receivers count and listener calls.
    fn post(&mut self, ch: usize, value: &Value) -> (usize, Vec<(usize, Value)>) {
        self.posted += 1;
        let mut receivers = 0;
        let mut calls = Vec::new();
        for (mid, listener) in self.listeners.iter().enumerate() {
            if listener.registered && listener.ch == ch {
                if listener.ty == value.ty() {
                    receivers += 1;
                    calls.push((mid, value.clone()));
                } else {
                    self.mismatches += 1;
                }
            }
        }
        for stream in &mut self.streams {
            if stream.registered && stream.ch == ch {
                if stream.ty == value.ty() {
                    receivers += 1;
                    stream.buffer.push_back(value.clone());
                    if stream.buffer.len() > CAPACITY {
                        stream.buffer.pop_front();
                        stream.missed += 1;
                        self.dropped += 1;
                    }
                } else {
                    self.mismatches += 1;
                }
            }
        }
        self.delivered += receivers as u64;
        (receivers, calls)
    }

    fn close_session(&mut self, s: usize) {
        self.sessions[s] = true;
        for listener in &mut self.listeners {
            if listener.owner == Some(s) {
                listener.registered = false;
            }
        }
        for stream in &mut self.streams {
            if stream.owner == Some(s) && stream.registered {
                stream.registered = false;
                stream.ended = true;
            }
        }
    }

    /// L13: a channel is interned while it has a listener, a stream or a live handle.
    fn channels(&self) -> u64 {
        let mut live = HashSet::new();
        live.extend(self.listeners.iter().filter(|l| l.registered).map(|l| l.ch));
        live.extend(self.streams.iter().filter(|s| s.registered).map(|s| s.ch));
        live.extend(self.handles.iter().filter(|h| h.1).map(|h| h.0));
        live.len() as u64
    }

    fn listener_count(&self) -> u64 {
        self.listeners.iter().filter(|l| l.registered).count() as u64
    }

    fn stream_count(&self) -> u64 {
        self.streams.iter().filter(|s| s.registered).count() as u64
    }
}

// ---- the real bus and what the test holds of it -----------------------------------------------

pub enum RealStream {
    A(MessageStream<u64>),
    B(MessageStream<String>),
}

impl RealStream {
    fn poll(&mut self) -> Poll<Option<Value>> {
        match self {
            RealStream::A(s) => poll_once(s).map(|m| m.map(|m| Value::A(*m))),
            RealStream::B(s) => poll_once(s).map(|m| m.map(|m| Value::B((*m).clone()))),
        }
    }

    fn missed(&self) -> u64 {
        match self {
            RealStream::A(s) => s.missed(),
            RealStream::B(s) => s.missed(),
        }
    }
}

pub enum RealHandle {
    A(Channel<u64>),
    B(Channel<String>),
}

pub type Log = Arc<Mutex<Vec<(usize, Value)>>>;

pub struct Harness {
    bus: Bus,
    model: Model,
    /// Held sessions: (model index, session).
    sessions: Vec<(usize, Session)>,
    /// Held streams: (model index, stream).
    streams: Vec<(usize, RealStream)>,
    /// Held handles: (model index, handle).
    handles: Vec<(usize, RealHandle)>,
    /// What listeners were called with: (model id, value).
    log: Log,
    ids: HashSet<ListenerId>,
    next_value: u64,
}

impl Harness {
    fn new() -> Self {
        let bus =
            ready(Bus::builder().stream_capacity(CAPACITY).build()).expect("a local bus builds");
        Harness {
            bus,
            model: Model::default(),
            sessions: Vec::new(),
            streams: Vec::new(),
            handles: Vec::new(),
            log: Log::default(),
            ids: HashSet::new(),
            next_value: 0,
        }
    }

    /// The `Messages` picked by `who`, and its model owner.
    fn who(&self, who: u8) -> (&Messages, Option<usize>) {
        if who == 0 || self.sessions.is_empty() {
            (self.bus.messages(), None)
        } else {
            let (s, session) = &self.sessions[(who as usize - 1) % self.sessions.len()];
            (session.messages(), Some(*s))
        }
    }

    fn value(&mut self, ty: Ty) -> Value {
        self.next_value += 1;
        match ty {
            Ty::A => Value::A(self.next_value),
            Ty::B => Value::B(format!("m{}", self.next_value)),
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), Mismatch> {
        match *op {
            Op::AddListener { who, ty, ch } => {
                let ch = ch as usize;
                let mid = self.model.listeners.len();
                let log = self.log.clone();
                let (messages, owner) = self.who(who);
                let id = match ty {
                    Ty::A => messages.add_listener(CHANNELS[ch], move |m: &u64| {
                        log.lock().unwrap().push((mid, Value::A(*m)));
                    }),
                    Ty::B => messages.add_listener(CHANNELS[ch], move |m: &String| {
                        log.lock().unwrap().push((mid, Value::B(m.clone())));
                    }),
                };
                // L08: a new id every time, also for inert listeners.
                ensure!(
                    self.ids.insert(id),
                    "L08: add_listener returned a used id {:?}",
                    id
                );
                // S04: through a closed session the listener is inert.
                let registered = !self.model.is_closed(owner);
                self.model.listeners.push(ModelListener {
                    id,
                    ch,
                    ty,
                    owner,
                    registered,
                });
            }
            Op::RemoveListener { who, pick, wrong } => {
                if self.model.listeners.is_empty() {
                    return Ok(());
                }
                let mid = pick as usize % self.model.listeners.len();
                let (id, own) = (self.model.listeners[mid].id, self.model.listeners[mid].ch);
                let ch = match wrong {
                    None => own,
                    // Another live channel, or one that was never interned.
                    Some(w) => {
                        [(own + 1) % LIVE_CHANNELS, (own + 2) % LIVE_CHANNELS, 3][w as usize % 3]
                    }
                };
                let removed = self.who(who).0.remove_listener(CHANNELS[ch], id);
                let listener = &mut self.model.listeners[mid];
                let expected = listener.registered && ch == own;
                ensure_eq!(
                    removed,
                    expected,
                    "L08: remove_listener({}, {:?}) result",
                    CHANNELS[ch],
                    id
                );
                if expected {
                    listener.registered = false;
                }
            }
            Op::Post { who, ty, ch } => {
                let value = self.value(ty);
                let (messages, _) = self.who(who);
                let delivery = match &value {
                    Value::A(v) => {
                        messages.post_message(CHANNELS[ch as usize], *v, MessageScope::Local)
                    }
                    Value::B(v) => {
                        messages.post_message(CHANNELS[ch as usize], v.clone(), MessageScope::Local)
                    }
                };
                let delivery = delivery.map_err(|e| format!("post failed: {e}"))?;
                self.check_post(ch as usize, &value, delivery.local_receivers())?;
            }
            Op::PostThroughHandle { pick } => {
                if self.handles.is_empty() {
                    return Ok(());
                }
                let at = pick as usize % self.handles.len();
                let ch = self.model.handles[self.handles[at].0].0;
                let value = match &self.handles[at].1 {
                    RealHandle::A(_) => self.value(Ty::A),
                    RealHandle::B(_) => self.value(Ty::B),
                };
                let delivery = match (&self.handles[at].1, &value) {
                    (RealHandle::A(h), Value::A(v)) => h.post(*v, MessageScope::Local),
                    (RealHandle::B(h), Value::B(v)) => h.post(v.clone(), MessageScope::Local),
                    _ => unreachable!(),
                };
                let delivery = delivery.map_err(|e| format!("post failed: {e}"))?;
                self.check_post(ch, &value, delivery.local_receivers())?;
            }
            Op::CreateStream { who, ty, ch } => {
                let ch = ch as usize;
                let (messages, owner) = self.who(who);
                let stream = match ty {
                    Ty::A => RealStream::A(messages.create_stream::<u64>(CHANNELS[ch])),
                    Ty::B => RealStream::B(messages.create_stream::<String>(CHANNELS[ch])),
                };
                // S04: through a closed session the stream is inert and ends at once.
                let inert = self.model.is_closed(owner);
                self.streams.push((self.model.streams.len(), stream));
                self.model.streams.push(ModelStream {
                    ch,
                    ty,
                    owner,
                    registered: !inert,
                    ended: inert,
                    buffer: VecDeque::new(),
                    missed: 0,
                });
            }
            Op::DropStream { pick } => {
                if self.streams.is_empty() {
                    return Ok(());
                }
                let (sid, stream) = self.streams.remove(pick as usize % self.streams.len());
                drop(stream); // L12: unregisters it
                let model = &mut self.model.streams[sid];
                model.registered = false;
                model.ended = true;
            }
            Op::Drain { pick, max } => {
                if self.streams.is_empty() {
                    return Ok(());
                }
                let at = pick as usize % self.streams.len();
                self.drain(at, max as usize)?;
            }
            Op::CloseSession { pick } => {
                if self.sessions.is_empty() {
                    return Ok(());
                }
                let (s, session) = &self.sessions[pick as usize % self.sessions.len()];
                session.close(); // idempotent (S01)
                self.model.close_session(*s);
            }
            Op::DropSession { pick } => {
                if self.sessions.is_empty() {
                    return Ok(());
                }
                let (s, session) = self.sessions.remove(pick as usize % self.sessions.len());
                drop(session); // closes it (S01)
                self.model.close_session(s);
            }
            Op::OpenSession => {
                if self.sessions.len() < MAX_SESSIONS {
                    self.sessions
                        .push((self.model.sessions.len(), self.bus.session()));
                    self.model.sessions.push(false);
                }
            }
            Op::CreateHandle { ty, ch } => {
                let ch = ch as usize;
                let handle = match ty {
                    Ty::A => RealHandle::A(self.bus.channel::<u64>(CHANNELS[ch])),
                    Ty::B => RealHandle::B(self.bus.channel::<String>(CHANNELS[ch])),
                };
                self.handles.push((self.model.handles.len(), handle));
                self.model.handles.push((ch, true));
            }
            Op::DropHandle { pick } => {
                if self.handles.is_empty() {
                    return Ok(());
                }
                let (hid, handle) = self.handles.remove(pick as usize % self.handles.len());
                drop(handle);
                self.model.handles[hid].1 = false;
            }
        }
        Ok(())
    }

    /// After a post of `value` on `ch` that reported `receivers`.
    fn check_post(&mut self, ch: usize, value: &Value, receivers: usize) -> Result<(), Mismatch> {
        let (expected, calls) = self.model.post(ch, value);
        // L01, L05: receivers of the message's type only; 0 on a channel without them.
        ensure_eq!(
            receivers,
            expected,
            "local_receivers() of a post of {:?} on {}",
            value,
            CHANNELS[ch]
        );
        // L02: each listener of the snapshot exactly once, in add order, with the value;
        // L05 and S01/S04: no other listener.
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        ensure_eq!(
            log,
            calls,
            "L02: listener calls of a post of {:?} on {}",
            value,
            CHANNELS[ch]
        );
        Ok(())
    }

    /// Polls held stream `at` up to `max` times, comparing every result with the model.
    fn drain(&mut self, at: usize, max: usize) -> Result<(), Mismatch> {
        let (sid, stream) = &mut self.streams[at];
        let model = &mut self.model.streams[*sid];
        for _ in 0..max {
            let expected = match model.buffer.pop_front() {
                Some(value) => Poll::Ready(Some(value)),
                None if model.ended => Poll::Ready(None),
                None => Poll::Pending,
            };
            let got = stream.poll();
            // L03 (post order), L11 (the newest `CAPACITY` kept), S02 (buffered, then None).
            ensure_eq!(&got, &expected, "poll of stream {}", sid);
            if !matches!(got, Poll::Ready(Some(_))) {
                break;
            }
        }
        Ok(())
    }

    /// Everything observable without changing the bus.
    fn check_state(&self) -> Result<(), Mismatch> {
        let stats: Stats = self.bus.stats();
        let model = &self.model;
        ensure_eq!(stats.posted, model.posted, "Stats::posted");
        ensure_eq!(stats.delivered, model.delivered, "Stats::delivered");
        ensure_eq!(
            stats.stream_dropped,
            model.dropped,
            "L11: Stats::stream_dropped"
        );
        ensure_eq!(
            stats.type_mismatches,
            model.mismatches,
            "L05: Stats::type_mismatches"
        );
        ensure_eq!(stats.listener_panics, 0, "Stats::listener_panics");
        ensure_eq!(stats.listeners, model.listener_count(), "Stats::listeners");
        ensure_eq!(stats.streams, model.stream_count(), "L12: Stats::streams");
        ensure_eq!(stats.channels, model.channels(), "L13: Stats::channels");
        for (sid, stream) in &self.streams {
            ensure_eq!(
                stream.missed(),
                model.streams[*sid].missed,
                "L11: missed() of stream {}",
                sid
            );
        }
        for (s, session) in &self.sessions {
            ensure_eq!(
                session.is_closed(),
                model.sessions[*s],
                "is_closed() of session {}",
                s
            );
        }
        ensure!(
            self.log.lock().unwrap().is_empty(),
            "a listener was called outside a post"
        );
        Ok(())
    }

    /// Ends a case: drains every stream, closes every session, removes the bus's listeners
    /// and drops everything; the bus must then be empty (S01, S02, S05, L12, L13).
    fn finish(mut self) -> Result<(), Mismatch> {
        for at in 0..self.streams.len() {
            self.drain(at, CAPACITY + 1)?;
        }
        for (s, session) in &self.sessions {
            session.close();
            self.model.close_session(*s);
        }
        self.check_state()?;
        // S02: a closed session's streams end after what they buffered (drained above).
        for at in 0..self.streams.len() {
            self.drain(at, 1)?;
        }
        // S05: the bus's listeners are still there; remove them.
        for mid in 0..self.model.listeners.len() {
            let listener = &self.model.listeners[mid];
            if listener.registered {
                ensure_eq!(
                    listener.owner,
                    None,
                    "only the bus's listeners outlive all sessions"
                );
                ensure!(
                    self.bus
                        .messages()
                        .remove_listener(CHANNELS[listener.ch], listener.id),
                    "S05: a bus listener is still registered"
                );
                self.model.listeners[mid].registered = false;
            }
        }
        self.sessions.clear();
        self.streams.clear();
        self.handles.clear();
        for stream in &mut self.model.streams {
            stream.registered = false;
        }
        for handle in &mut self.model.handles {
            handle.1 = false;
        }
        self.check_state()?;
        let stats = self.bus.stats();
        ensure_eq!(
            (stats.listeners, stats.streams, stats.channels),
            (0, 0, 0),
            "an empty bus"
        );
        Ok(())
    }
}

/// Runs `ops` on a fresh bus and on the model, comparing them after every step.
pub fn run(ops: &[Op]) -> Result<(), Mismatch> {
    let mut harness = Harness::new();
    harness.check_state()?;
    for op in ops {
        harness.apply(op)?;
        harness.check_state()?;
    }
    harness.finish()
}
