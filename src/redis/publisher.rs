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
//! 5. Settle the batch's tickets: the watermark that Deliveries and `flush` wait on moves
//!    past every ticket settled so far (tickets are settled out of order when posts from
//!    several threads race into the queue, so the ones ahead wait in a set).
//!
//! Order: posts of one thread on one channel are published in post order. Posts to
//! different channels may be reordered within a batch (each channel's order is kept).
//!
//! On a Redis Cluster, step 4 is done per master, by that master's lane (`Lanes`): the
//! batch's commands are split by their slot's master and each lane sends its own in order,
//! on its own connection, so a master that does not answer holds up only its own posts.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::connection::{self, Failure, Outbound, Redis};
use super::ledger::Sequencer;
use super::state::{Outgoing, State, MAX_LANES};
use crate::error::Reason;
use crate::export;
use crate::sync::Flag;
use crate::wire::frame::{self, HEADER_LEN};
use crate::wire::mac::Keys;
use crate::wire::WireFormat;

/// Posts taken into one batch at most.
const MAX_BATCH: usize = 1 << 16;

/// Wakes the publisher if it sleeps. Called after every push.
#[inline]
pub(super) fn wake(state: &State) {
    wake_parked(&state.publisher_parked, &state.publisher_waker);
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
    let lanes = redis.is_cluster().then(|| {
        Arc::new(Lanes {
            state: state.clone(),
            redis: redis.clone(),
            lanes: Mutex::new(HashMap::new()),
            started: AtomicUsize::new(0),
        })
    });
    if let Some(lanes) = &lanes {
        // Every master's budget known from the start, not from its first post.
        for (first, last, master) in redis.slot_table() {
            let index = lanes.send_to(&master, Vec::new());
            for slot in first..=last {
                if let Some(entry) = state.slot_lanes.get(usize::from(slot)) {
                    entry.store(index as u8, Relaxed);
                }
            }
        }
    }
    let mut batch = Vec::new();
    loop {
        next_batch(&state, &mut batch).await;
        let commands = match state.codec.format {
            WireFormat::Serverpod => batch
                .drain(..)
                .map(|post| Command {
                    charges: vec![(post.lane, post.bytes.len() as u64)],
                    outbound: Outbound::new(post.channel, post.bytes),
                    tickets: vec![post.ticket],
                })
                .collect(),
            WireFormat::Native => {
                let max = state.codec.max_message_bytes;
                let keys = &state.codec.keys;
                frames(&mut batch, &mut state.sequencer.lock(), keys, max)
            }
        };
        // Until Redis answers, these may or may not reach it: if the bus shuts down
        // meanwhile, their Deliveries say so (`State::outcome`).
        state
            .sending
            .lock()
            .extend(commands.iter().flat_map(|c| c.tickets.iter().copied()));
        match &lanes {
            Some(lanes) => lanes.route(commands),
            None => send(&state, &redis, None, commands, |_, _| {}).await,
        }
    }
}

/// A cluster's publishing lanes: one task per master, each with its own connection
/// ([`Redis::publish_on`]), so that a master that is unreachable holds up only its own
/// posts, and a failover only the failed master's.
///
/// A command goes to the lane of its channel's master by the slot table. One that the
/// master answers with `MOVED` goes to the lane of the master named; one that gets no
/// answer goes again to its slot's master as the table says then (the same lane, unless a
/// replica took over). Each lane sends in order, so a channel's posts keep their order
/// while its slot stays put; across a move, a post sent again on the new lane may arrive
/// after later ones, and receivers then drop it as a duplicate of what they had already
/// counted missed (G06): nothing is delivered twice, nothing is lost silently.
struct Lanes {
    state: Arc<State>,
    redis: Arc<Redis>,
    /// Master (`host:port`) -> its lane: its budget's index, its queue, its task.
    lanes: Mutex<HashMap<String, Lane>>,
    /// Lanes started so far: the next one's budget index (modulo [`MAX_LANES`]), so that a
    /// lane started after another closed does not share a budget needlessly.
    started: AtomicUsize,
}

/// How long a lane waits with nothing to send before it checks that its master still owns
/// slots ([`Lanes::retire`]).
const LANE_IDLE: Duration = Duration::from_secs(5);

struct Lane {
    index: usize,
    queue: mpsc::UnboundedSender<Vec<Command>>,
    task: tokio::task::JoinHandle<()>,
}

impl Lanes {
    /// Hands each command to the lane of its channel's master, and records that master's
    /// budget as its slot's (`State::lane_of`).
    fn route(self: &Arc<Self>, commands: Vec<Command>) {
        let mut by_master: HashMap<String, Vec<Command>> = HashMap::new();
        for command in commands {
            let master = self
                .redis
                .owner(command.outbound.channel())
                .unwrap_or_default();
            by_master.entry(master).or_default().push(command);
        }
        for (master, commands) in by_master {
            self.send_to(&master, commands);
        }
    }

    /// Queues `commands` on `master`'s lane, starting it if needed; returns its index.
    fn send_to(self: &Arc<Self>, master: &str, commands: Vec<Command>) -> usize {
        let mut lanes = self.lanes.lock();
        let lane = lanes.entry(master.to_string()).or_insert_with(|| {
            let (queue, receiver) = mpsc::unbounded_channel();
            let task = tokio::spawn(lane(Arc::downgrade(self), master.to_string(), receiver));
            Lane {
                index: self.started.fetch_add(1, Relaxed) % MAX_LANES,
                queue,
                task,
            }
        });
        if !self.state.slot_lanes.is_empty() {
            for command in &commands {
                let slot = connection::slot(command.outbound.channel()) as usize;
                if let Some(entry) = self.state.slot_lanes.get(slot) {
                    entry.store(lane.index as u8, Relaxed);
                }
            }
        }
        let _ = lane.queue.send(commands);
        lane.index
    }
}

impl Lanes {
    /// Closes `master`'s lane and connection if it owns no slot any more (a failed master
    /// replaced by its replica, or one emptied by a resharding); what was queued for it
    /// meanwhile goes to its slot's master. False, and nothing done, while it owns slots
    /// or the slot table is not known.
    fn retire(
        self: &Arc<Self>,
        master: &str,
        queue: &mut mpsc::UnboundedReceiver<Vec<Command>>,
    ) -> bool {
        let table = self.redis.slot_table();
        if table.is_empty() || table.iter().any(|(_, _, owner)| owner == master) {
            return false;
        }
        tracing::info!(
            target: "evbus",
            master,
            "closing the publishing connection of a master that owns no slot any more"
        );
        // Its queue's only sender goes with it: nothing is queued after this.
        drop(self.lanes.lock().remove(master));
        let mut left = Vec::new();
        while let Ok(commands) = queue.try_recv() {
            left.extend(commands);
        }
        if !left.is_empty() {
            self.route(left);
        }
        let (redis, master) = (self.redis.clone(), master.to_string());
        tokio::spawn(async move { redis.close_lane(&master).await });
        true
    }
}

impl Drop for Lanes {
    /// The publisher stopped (the bus closed): so do its lanes.
    fn drop(&mut self) {
        for lane in self.lanes.get_mut().values() {
            lane.task.abort();
        }
    }
}

/// One master's lane: sends what is queued for it, in order, one pipelined write at a time.
async fn lane(
    lanes: Weak<Lanes>,
    master: String,
    mut queue: mpsc::UnboundedReceiver<Vec<Command>>,
) {
    let mut batches = Vec::new();
    loop {
        let received = tokio::time::timeout(LANE_IDLE, queue.recv_many(&mut batches, 1024)).await;
        let Some(shared) = lanes.upgrade() else {
            return;
        };
        match received {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) if shared.retire(&master, &mut queue) => return,
            Err(_) => continue,
        }
        let commands: Vec<Command> = batches.drain(..).flatten().collect();
        let (state, redis) = (shared.state.clone(), shared.redis.clone());
        drop(shared);
        let reroute = |to: String, commands: Vec<Command>| {
            if let Some(lanes) = lanes.upgrade() {
                lanes.send_to(&to, commands);
            }
        };
        send(&state, &redis, Some(&master), commands, reroute).await;
    }
}

/// Waits until something is queued, then moves up to [`MAX_BATCH`] posts into `batch`.
async fn next_batch(state: &State, batch: &mut Vec<Outgoing>) {
    poll_fn(|cx| {
        poll_parked(&state.publisher_parked, &state.publisher_waker, cx, || {
            !state.queue.is_empty()
        })
    })
    .await;
    while batch.len() < MAX_BATCH {
        match state.queue.pop() {
            Some(post) => batch.push(post),
            None => break,
        }
    }
}

/// One PUBLISH and the tickets it carries.
struct Command {
    outbound: Outbound,
    tickets: Vec<u64>,
    /// For each post: the outage budget it counts against, and its bytes.
    charges: Vec<(usize, u64)>,
}

/// Packs a Native batch into frames: per channel, in order, each at most `max` bytes.
fn frames(
    batch: &mut Vec<Outgoing>,
    sequencer: &mut Sequencer,
    keys: &Keys,
    max: usize,
) -> Vec<Command> {
    // Group by channel, keeping first-seen order of channels and post order within each.
    let mut order: Vec<(String, Vec<Outgoing>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for post in batch.drain(..) {
        match index.get(&post.channel) {
            Some(&at) => order[at].1.push(post),
            None => {
                index.insert(post.channel.clone(), order.len());
                order.push((post.channel.clone(), vec![post]));
            }
        }
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
            commands.push(Command {
                outbound: Outbound::new(channel.clone(), bytes),
                tickets: now.iter().map(|post| post.ticket).collect(),
                charges: now
                    .iter()
                    .map(|post| (post.lane, post.bytes.len() as u64))
                    .collect(),
            });
        }
    }
    commands
}

/// Sends `commands` as one pipelined write, again for those lost with a connection, and
/// settles their tickets. On a cluster's lane (`master`), a command that master answers
/// with `MOVED`, or leaves unanswered while its slot now belongs to another master, is
/// handed to `reroute` with that master instead.
async fn send(
    state: &State,
    redis: &Redis,
    master: Option<&str>,
    mut commands: Vec<Command>,
    reroute: impl Fn(String, Vec<Command>),
) {
    while !commands.is_empty() {
        let outbound: Vec<Outbound> = commands.iter().map(|c| c.outbound.clone()).collect();
        let results = match master {
            Some(master) => redis.publish_on(master, outbound).await,
            None => redis.publish(outbound).await,
        };
        state.batches.fetch_add(1, Relaxed);
        export::batch(
            &state.namespace,
            commands.iter().map(|c| c.tickets.len()).sum(),
        );
        let mut settled = Vec::new();
        let mut charges = Vec::new();
        let mut refused = Vec::new();
        let mut retry = Vec::new();
        let mut moved: HashMap<String, Vec<Command>> = HashMap::new();
        for (command, result) in commands.into_iter().zip(results) {
            match result {
                Err(Failure::Retry) => {
                    // A master that does not answer may have been replaced (C04).
                    let now = master.and_then(|_| redis.owner(command.outbound.channel()));
                    match now {
                        Some(now) if Some(now.as_str()) != master => {
                            moved.entry(now).or_default().push(command);
                        }
                        _ => retry.push(command),
                    }
                }
                Err(Failure::Moved(to)) if master.is_some() && Some(to.as_str()) != master => {
                    moved.entry(to).or_default().push(command);
                }
                Err(Failure::Moved(_)) => retry.push(command),
                Ok(()) => {
                    charges.extend(command.charges);
                    settled.extend(command.tickets);
                }
                Err(Failure::Refused(reason)) => {
                    tracing::warn!(
                        target: "evbus",
                        channel = %command.outbound.channel(),
                        messages = command.tickets.len(),
                        reason = %reason,
                        "Redis refused a PUBLISH; its posts' Deliveries fail with the reason"
                    );
                    refused.extend(command.tickets.iter().map(|&t| (t, reason.clone())));
                    charges.extend(command.charges);
                    settled.extend(command.tickets);
                }
            }
        }
        settle(state, settled, charges, refused);
        for (to, commands) in moved {
            reroute(to, commands);
        }
        commands = retry;
        if !commands.is_empty() {
            // fred already waited for the reconnect; do not spin while it tries again.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Settles tickets Redis answered for: acknowledged, or `refused` with its reason; gives
/// back what their posts took of their outage budgets (`charges`).
fn settle(
    state: &State,
    settled: Vec<u64>,
    charges: Vec<(usize, u64)>,
    refused: Vec<(u64, Reason)>,
) {
    if settled.is_empty() {
        return;
    }
    if !refused.is_empty() {
        state.refuse(refused);
    }
    {
        let mut sending = state.sending.lock();
        for ticket in &settled {
            sending.remove(ticket);
        }
    }
    let mut bytes = 0;
    for (lane, size) in charges {
        state.lane_waiting[lane].fetch_sub(1, AcqRel);
        state.lane_bytes[lane].fetch_sub(size, AcqRel);
        bytes += size;
    }
    state.waiting.fetch_sub(settled.len() as u64, AcqRel);
    state.waiting_bytes.fetch_sub(bytes, AcqRel);
    let moved = state.settler.lock().settle(settled);
    state.progress.send_modify(|p| {
        p.settles += 1;
        if let Some(acked) = moved {
            p.acked = acked;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_respect_the_size_bound_and_channel_order() {
        let post = |channel: &str, ticket| Outgoing {
            channel: channel.into(),
            lane: 0,
            bytes: vec![0; 100],
            ticket,
        };
        let mut batch = vec![post("a", 1), post("b", 2), post("a", 3), post("a", 4)];
        let mut sequencer = Sequencer::new();
        let commands = frames(
            &mut batch,
            &mut sequencer,
            &Keys::default(),
            HEADER_LEN + 200,
        );
        let tickets: Vec<Vec<u64>> = commands.iter().map(|c| c.tickets.clone()).collect();
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
