//! From the subscriber connection to the listeners: a reader that never waits for them, a
//! byte bound on what waits, and dispatch threads chosen by channel.
//!
//! # Algorithm
//!
//! fred hands received messages to one reader through a bounded broadcast channel and drops
//! what a slow reader misses. So the reader ([`Dispatch::run`]) does nothing but move each
//! message (a reference-counted buffer, not a copy) to the queue of one of [`WORKERS`]
//! dispatch threads, chosen by a hash of the channel name ([`worker_of`]): a channel's
//! messages always go to the same thread, in order, and the thread decodes them and calls
//! the listeners (G03). A listener that blocks holds up only its own thread, that is the
//! channels that hash to it (about a quarter), never the reader nor the other threads.
//!
//! What waits in the queues is bounded in bytes (`BusBuilder::receive_buffer_bytes`): a
//! message that would pass the bound is dropped, and its messages are counted missed at
//! once (from its header, for a Native frame; one, otherwise) and reported. If fred still
//! drops messages (the reader was not scheduled for long), they are counted too.

use std::sync::atomic::Ordering::*;
use std::sync::mpsc;
use std::sync::Arc;

use std::time::Instant;

use super::connection::{Inbox, Incoming, Received};
use super::holds::Holds;
use super::state::State;
use super::subscriber::Reader;
use crate::wire::control;

/// Dispatch threads per bus.
pub(crate) const WORKERS: usize = 4;

/// The dispatch thread of Redis channel `channel`: FNV-1a of its bytes, modulo [`WORKERS`].
pub(crate) fn worker_of(channel: &[u8]) -> usize {
    let hash = channel
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    (hash % WORKERS as u64) as usize
}

/// The reader's side of the dispatch threads.
pub(super) struct Dispatch {
    reader: Arc<Reader>,
    queues: Vec<mpsc::Sender<Received>>,
}

impl Dispatch {
    /// Starts the dispatch threads; they end once this is dropped and their queues are empty.
    pub(super) fn start(reader: Reader) -> Dispatch {
        let reader = Arc::new(reader);
        let queues = (0..WORKERS)
            .map(|index| {
                let (queue, messages) = mpsc::channel::<Received>();
                let worker = reader.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("evbus-dispatch-{index}"))
                    .spawn(move || work(&worker, &messages));
                if let Err(error) = spawned {
                    // No thread: its channels' messages are counted missed as they come.
                    reader.thread_failed(index, &error);
                }
                queue
            })
            .collect();
        Dispatch { reader, queues }
    }

    /// The reader task: moves every received message to its channel's thread.
    pub(super) async fn run(self, mut inbox: Inbox) {
        while let Some(incoming) = inbox.next().await {
            match incoming {
                Incoming::Message(message) => self.send(message),
                Incoming::Lagged(count) => self.reader.lagged(count),
            }
        }
    }

    fn send(&self, message: Received) {
        let state = self.reader.state();
        let bytes = size(&message);
        let waiting = state.inbox_bytes.fetch_add(bytes, AcqRel);
        // One message is always taken, whatever its size, so that a bound below the largest
        // frame does not refuse everything.
        if waiting > 0 && waiting + bytes > state.receive_buffer_bytes {
            state.inbox_bytes.fetch_sub(bytes, AcqRel);
            return self.reader.overflow(message.channel(), message.payload());
        }
        let queue = &self.queues[route(state, &message)];
        if let Err(mpsc::SendError(message)) = queue.send(message) {
            state.inbox_bytes.fetch_sub(bytes, AcqRel);
            self.reader.overflow(message.channel(), message.payload());
        }
    }
}

/// A dispatch thread: delivers its channels' messages in order, and gives up on their
/// repair gaps whose time ran out (K03). It waits for the next message, or, while a gap is
/// open, until the first deadline.
fn work(reader: &Reader, messages: &mpsc::Receiver<Received>) {
    let state = reader.state();
    // Held frames: at most a share of the receive buffer's bytes, and of a window's messages.
    let mut holds = Holds::new(
        state.repair_timeout,
        HELD_MESSAGES,
        (state.receive_buffer_bytes as usize) / WORKERS,
    );
    loop {
        let message = match holds.next_deadline() {
            None => match messages.recv() {
                Ok(message) => Some(message),
                Err(mpsc::RecvError) => return,
            },
            Some(deadline) => {
                match messages.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(message) => Some(message),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        if let Some(message) = message {
            let bytes = size(&message);
            reader.receive(&mut holds, message.channel(), message.payload());
            state.inbox_bytes.fetch_sub(bytes, AcqRel);
        }
        if holds.next_deadline().is_some() {
            reader.expire(&mut holds, Instant::now());
        }
    }
}

/// Messages one dispatch thread holds at most while gaps before them are repaired.
const HELD_MESSAGES: u64 = 1 << 16;

/// The dispatch thread of a received message: its channel's, or for a repair answer, the
/// channel's it answers for (so that it is delivered in order with that channel's messages).
fn route(state: &State, message: &Received) -> usize {
    let channel = message.channel();
    if state.repairing() && channel.starts_with(state.control_prefix.as_bytes()) {
        if let Some(answered) = control::channel_of(message.payload()) {
            return worker_of(answered);
        }
    }
    worker_of(channel)
}

/// What a message counts against the byte bound.
fn size(message: &Received) -> u64 {
    (message.channel().len() + message.payload().len()) as u64
}
