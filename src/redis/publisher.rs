//! The batching publisher (G05): one task drains whatever is queued into one pipelined
//! write, in order.
//!
//! # Algorithm
//!
//! 1. Sleep while the queue is empty. The sleep is a flag and a waker (`poll_parked`,
//!    `wake_parked`): the task sets `publisher_parked`, then (after a `SeqCst` fence) checks
//!    the queue once more; a post pushes, fences, and wakes the task only if it finds the flag
//!    set. The two fences fall in one total order, so either the task sees the push or the
//!    post sees the flag: no post is stranded, and a busy publisher costs posts no wake-up (a
//!    fence and a load). The `loom_publisher_*` model checks this.
//! 2. Take everything queued (up to [`MAX_BATCH`] posts): that is the batch. Under load the
//!    batch grows while the previous write is in flight, so throughput grows with load; a
//!    lone post is a batch of one and leaves at once. There is no timer.
//! 3. Native: group the batch by channel, keeping each channel's order, and pack each
//!    channel's records into as few frames as `max_message_bytes` allows, stamped with this
//!    bus's origin id and the channel's next sequence numbers (G06). One PUBLISH carries many
//!    messages. Serverpod: one PUBLISH per post, as Serverpod does.
//! 4. Send the PUBLISHes as one pipelined write and read every reply. A command that failed
//!    because the connection dropped is sent again (the same frame, so a copy that did reach
//!    Redis is dropped by receivers); one that Redis refused fails its posts' Deliveries.
//!    On a Redis Cluster each master's commands go to that master's lane instead
//!    ([`super::lanes`]), which writes them on a connection of its own; the publisher waits
//!    (up to 100 ms) until the lanes have written them and had them answered.
//! 5. Settle the batch's tickets: the watermark that `flush` waits on moves past every
//!    ticket settled so far (tickets are settled out of order when posts from several
//!    threads race into the queue, or when masters answer at different times, so the ones
//!    ahead wait in a set). A Delivery waits for its own ticket.
//!
//! Order: posts of one thread on one channel are published in post order. Posts to
//! different channels may be reordered within a batch (each channel's order is kept).

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use std::future::poll_fn;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

use super::command::{account, sending, Command, RETRY_PAUSE};
use super::connection::{Outbound, Redis};
use super::lanes::Lanes;
use super::ledger::Sequencer;
use super::state::{Outgoing, State};
use crate::sync::Flag;
use crate::wire::control::Control;
use crate::wire::frame::{self, Origin, HEADER_LEN};
use crate::wire::mac::Keys;
use crate::wire::WireFormat;

/// Posts taken into one batch at most.
const MAX_BATCH: usize = 1 << 16;

/// Queues the control message `message` for the publisher, to `channel`, signed when the
/// bus signs, and wakes the publisher (K02, K04).
pub(super) fn send_control(state: &State, channel: String, message: Control<'_>) {
    let keys = &state.codec.keys;
    let bytes = message.encode(keys.enabled(), |out| keys.seal(out));
    state.control.push((channel, bytes));
    wake(state);
}

/// Asks `origin` for `from..=to` of its messages on `channel` (K02).
pub(super) fn request_repair(state: &State, origin: &Origin, channel: &str, from: u64, to: u64) {
    let asker = state.sequencer.lock().origin;
    state.repair_requests.fetch_add(1, Relaxed);
    let request = Control::Request {
        asker,
        channel,
        from,
        to,
    };
    send_control(state, state.control_channel(origin), request);
}

/// Wakes the publisher if it sleeps. Called after every push.
#[inline]
pub(super) fn wake(state: &State) {
    wake_parked(&*state.publisher_parked, &state.publisher_waker);
}

/// Step 1, the poster's half: after its push, wakes the publisher if it finds its flag set.
///
/// Pairs with the fence in [`poll_parked`]: either the publisher sees the push, or the poster
/// sees the flag. Generic only so that the loom model runs this same code on loom's flag.
#[inline]
fn wake_parked<F: Flag>(parked: &F, waker: &AtomicWaker) {
    F::fence(SeqCst);
    if parked.load(Relaxed) && parked.swap(false, AcqRel) {
        waker.wake();
    }
}

/// Step 1, the publisher's half: ready if `queued()`; otherwise registers, sets the flag,
/// fences, and checks `queued()` once more before it sleeps.
fn poll_parked<F: Flag>(
    parked: &F,
    waker: &AtomicWaker,
    cx: &mut Context<'_>,
    queued: impl Fn() -> bool,
) -> Poll<()> {
    if queued() {
        return Poll::Ready(());
    }
    waker.register(cx.waker());
    // Swaps where stores would do, here and below: loom does not order a plain store after a
    // swap of another thread that the storing thread has not seen (tokio-rs/loom#254), and
    // reports lost wake-ups that cannot happen. Only a publisher going to sleep pays for them.
    parked.swap(true, Relaxed);
    F::fence(SeqCst);
    if queued() {
        parked.swap(false, Relaxed);
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

/// The publisher task.
pub(super) async fn run(state: Arc<State>, redis: Arc<Redis>) {
    let lanes = redis
        .is_cluster()
        .then(|| Lanes::start(state.clone(), redis.clone()));
    let mut batch = Vec::new();
    let mut quiet = Quiet::default();
    loop {
        next_batch(&state, &mut batch, quiet.next_due()).await;
        let mut commands: Vec<Command> = match state.codec.format {
            WireFormat::Serverpod => batch
                .drain(..)
                .map(|post| Command {
                    charges: vec![(post.budget, 1, post.bytes.len() as u64)],
                    outbound: Outbound::new(post.channel.to_string(), post.bytes.into_vec()),
                    tickets: Arc::new([post.ticket]),
                })
                .collect(),
            WireFormat::Native => native(&state, &mut batch, &mut quiet),
        };
        // Repair's control messages: answers, requests, announcements (K02, K04).
        quiet.announce(&state, Instant::now());
        while let Some((channel, bytes)) = state.control.pop() {
            commands.push(Command {
                outbound: Outbound::new(channel, bytes),
                tickets: Arc::new([]),
                charges: Vec::new(),
            });
        }
        if commands.is_empty() {
            continue;
        }
        sending(&state, &commands);
        match &lanes {
            // Each master's lane sends its own; this waits until they have been answered, or
            // no longer than `lanes::STALL` for a master that is slow or down.
            Some(lanes) => lanes.route(commands).await,
            None => send(&state, &redis, commands).await,
        }
    }
}

/// Frames a Native batch, and keeps the frames in the retransmit window (K01).
fn native(state: &State, batch: &mut Vec<Outgoing>, quiet: &mut Quiet) -> Vec<Command> {
    let max = state.codec.max_message_bytes;
    let keys = &state.codec.keys;
    let mut sequencer = state.sequencer.lock();
    let origin = sequencer.origin;
    let Some(window) = &state.window else {
        return frames(batch, &mut sequencer, keys, max, &mut |_, _, _, _, _| {});
    };
    let mut window = window.lock();
    let now = Instant::now();
    let mut current = origin;
    let commands = frames(
        batch,
        &mut sequencer,
        keys,
        max,
        &mut |from, channel, first, count, bytes| {
            if *from != current {
                // A new origin id (the sequence table was full): nobody can ask for what the
                // old id sent, and receivers ask the new id's own control channel.
                window.clear();
                state.redis_subscription_changed(state.control_channel(&current), false);
                state.redis_subscription_changed(state.control_channel(from), true);
                current = *from;
            }
            window.keep(channel, first, count, bytes);
            quiet.posted(channel, first + (count - 1), now);
        },
    );
    state.window_bytes.store(window.bytes(), Relaxed);
    commands
}

/// How long a channel stays quiet before its origin announces its last sequence number (K04).
const ANNOUNCE_AFTER: Duration = Duration::from_millis(100);

/// The channels posted to lately, for the announcements of K04: an origin that goes quiet
/// on a channel says, once, what its last sequence number there is, so that a receiver that
/// lost the last message finds the gap without waiting for the next post.
#[derive(Default)]
struct Quiet {
    /// Per channel, its last sequence number and when it was published.
    last: HashMap<String, (u64, Instant)>,
    /// (when, channel) in the order published: what to look at next.
    order: VecDeque<(Instant, String)>,
}

impl Quiet {
    fn posted(&mut self, channel: &str, last: u64, now: Instant) {
        self.last.insert(channel.to_string(), (last, now));
        self.order.push_back((now, channel.to_string()));
    }

    /// When the next announcement is due.
    fn next_due(&self) -> Option<Instant> {
        self.order.front().map(|(at, _)| *at + ANNOUNCE_AFTER)
    }

    /// Queues the announcements due by `now`: channels quiet since their last post.
    fn announce(&mut self, state: &State, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| *at + ANNOUNCE_AFTER <= now)
        {
            let Some((at, channel)) = self.order.pop_front() else {
                break;
            };
            // Only the channel's newest post announces, and only if it is still the last.
            if let Some(&(last, posted)) = self.last.get(&channel) {
                if posted == at {
                    self.last.remove(&channel);
                    let origin = state.sequencer.lock().origin;
                    send_control(state, channel, Control::Announce { origin, last });
                }
            }
        }
    }
}

/// Waits until something is queued (or until `until`, when an announcement is due then),
/// then moves up to [`MAX_BATCH`] posts into `batch`.
async fn next_batch(state: &State, batch: &mut Vec<Outgoing>, until: Option<Instant>) {
    let queued = poll_fn(|cx| {
        poll_parked(&*state.publisher_parked, &state.publisher_waker, cx, || {
            !state.queue.is_empty() || !state.control.is_empty()
        })
    });
    match until {
        Some(until) => {
            let _ = tokio::time::timeout_at(until.into(), queued).await;
        }
        None => queued.await,
    }
    while batch.len() < MAX_BATCH {
        match state.queue.pop() {
            Some(post) => batch.push(post),
            None => break,
        }
    }
}

/// What sees each frame written: its origin, channel, first sequence number, record count
/// and bytes.
type Keep<'a> = dyn FnMut(&Origin, &str, u64, u64, &[u8]) + 'a;

/// Packs a Native batch into frames: per channel, in order, each at most `max` bytes.
///
/// `keep` sees every frame written: its origin, channel, first sequence number, record count
/// and bytes (the retransmit window keeps them).
fn frames(
    batch: &mut Vec<Outgoing>,
    sequencer: &mut Sequencer,
    keys: &Keys,
    max: usize,
    keep: &mut Keep<'_>,
) -> Vec<Command> {
    // Group by channel, keeping first-seen order of channels and post order within each. A
    // post to the channel of the post before it (the same shared name, mostly) is not hashed.
    let mut order: Vec<(Arc<str>, Vec<Outgoing>)> = Vec::new();
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    let mut last = usize::MAX;
    for post in batch.drain(..) {
        let at = match order.get(last) {
            Some((channel, _)) if Arc::ptr_eq(channel, &post.channel) => last,
            _ => match index.get(&post.channel) {
                Some(&at) => at,
                None => {
                    index.insert(post.channel.clone(), order.len());
                    order.push((post.channel.clone(), Vec::new()));
                    order.len() - 1
                }
            },
        };
        order[at].1.push(post);
        last = at;
    }
    let mut commands = Vec::new();
    // One clock read per batch: its frames are written together and sent in one write.
    let sent_at = frame::now_micros();
    for (channel, posts) in order {
        let mut rest = &posts[..];
        while !rest.is_empty() {
            // Records that fit one frame (a record alone always fits: `encode` checked it).
            let mut size = HEADER_LEN + keys.overhead() + rest[0].bytes.len();
            let mut count = 1;
            while count < rest.len() && size + rest[count].bytes.len() <= max {
                size += rest[count].bytes.len();
                count += 1;
            }
            let (now, later) = rest.split_at(count);
            rest = later;
            let first_seq = sequencer.next(&channel, count as u64);
            let mut bytes = Vec::with_capacity(size);
            let signed = keys.enabled();
            frame::write_header_of(
                &mut bytes,
                &sequencer.origin,
                first_seq,
                count as u32,
                sent_at,
                signed,
            );
            for post in now {
                bytes.extend_from_slice(&post.bytes);
            }
            keys.seal(&mut bytes);
            keep(&sequencer.origin, &channel, first_seq, count as u64, &bytes);
            commands.push(Command {
                outbound: Outbound::new(channel.to_string(), bytes),
                tickets: now.iter().map(|post| post.ticket).collect(),
                charges: charges(now),
            });
        }
    }
    commands
}

/// What `posts` take of their outage budgets, as [`Command::charges`].
fn charges(posts: &[Outgoing]) -> Vec<(u8, u64, u64)> {
    let mut charges: Vec<(u8, u64, u64)> = Vec::with_capacity(1);
    for post in posts {
        let bytes = post.bytes.len() as u64;
        match charges.last_mut() {
            Some((budget, count, sum)) if *budget == post.budget => {
                *count += 1;
                *sum += bytes;
            }
            _ => charges.push((post.budget, 1, bytes)),
        }
    }
    charges
}

/// Sends `commands` as one pipelined write, again for those lost with a connection, and
/// settles their tickets (one Redis, or a cluster through fred's clustered client).
async fn send(state: &State, redis: &Redis, mut commands: Vec<Command>) {
    while !commands.is_empty() {
        let outbound: Vec<Outbound> = commands.iter().map(|c| c.outbound.clone()).collect();
        let results = redis.publish(outbound).await;
        let (retry, moved) = account(state, commands, results);
        // fred follows a `MOVED` itself: one it hands back is sent again.
        commands = retry;
        commands.extend(moved.into_iter().map(|(_, command)| command));
        if !commands.is_empty() {
            // fred already waited for the reconnect; do not spin while it tries again.
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_respect_the_size_bound_and_channel_order() {
        let post = |channel: &str, ticket| Outgoing {
            channel: channel.into(),
            bytes: [0; 100].as_slice().into(),
            ticket,
            budget: 0,
        };
        let mut batch = vec![post("a", 1), post("b", 2), post("a", 3), post("a", 4)];
        let mut sequencer = Sequencer::new();
        let commands = frames(
            &mut batch,
            &mut sequencer,
            &Keys::default(),
            HEADER_LEN + 200,
            &mut |_, _, _, _, _| {},
        );
        let tickets: Vec<Vec<u64>> = commands.iter().map(|c| c.tickets.to_vec()).collect();
        assert_eq!(tickets, vec![vec![1, 3], vec![4], vec![2]]);
        assert_eq!(sequencer.next("a", 1), 4);
        assert_eq!(sequencer.next("b", 1), 2);
    }
}

/// A model of step 1, run by `RUSTFLAGS="--cfg evbus_loom" cargo test --lib loom_`.
///
/// It runs the real [`wake_parked`] and [`poll_parked`] on loom's flag and fences. loom cannot
/// see inside `SegQueue`, so a counter stands for the queue, pushed and read with `Relaxed`
/// (weaker than the queue's own orderings): the fence pair alone must keep the wake-up.
#[cfg(all(test, evbus_loom))]
mod loom_tests {
    use super::*;

    use loom::future::block_on;
    use loom::sync::atomic::{AtomicBool, AtomicUsize};
    use loom::thread;

    /// Two posters push and wake; the publisher sleeps until something is queued and takes
    /// everything, until it has taken both posts. A post stranded in the queue with the
    /// publisher asleep is a deadlock to loom.
    #[test]
    fn loom_publisher_wakes_for_every_post() {
        crate::sync::model(|| {
            let shared = Arc::new((
                AtomicBool::new(false),
                AtomicWaker::new(),
                AtomicUsize::new(0),
            ));
            let posters: Vec<_> = (0..2)
                .map(|_| {
                    let shared = shared.clone();
                    thread::spawn(move || {
                        let (parked, waker, queue) = &*shared;
                        queue.fetch_add(1, Relaxed);
                        wake_parked(parked, waker);
                    })
                })
                .collect();
            let (parked, waker, queue) = &*shared;
            let mut taken = 0;
            while taken < 2 {
                block_on(poll_fn(|cx| {
                    poll_parked(parked, waker, cx, || queue.load(Relaxed) != 0)
                }));
                taken += queue.swap(0, Relaxed);
            }
            for poster in posters {
                poster.join().unwrap();
            }
        });
    }
}
