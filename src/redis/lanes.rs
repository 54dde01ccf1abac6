//! A Redis Cluster's publishing lanes (C01, C04, G07): one per master, each writing what is
//! handed to it in order, one pipelined write at a time, on a connection of its own.
//!
//! # Why
//!
//! fred's clustered client reconnects every master together and writes nothing while any of
//! them is unreachable, so one pipeline for the whole cluster let one dead shard stop every
//! shard. Here a master that is unreachable holds up only its own posts: they wait in its
//! lane, counted against its own outage budget ([`State::budget_of`]), until it answers again
//! or its budget is full (then its channels' posts get `Backpressure`), and the other lanes
//! keep writing.
//!
//! # Algorithm
//!
//! - The publisher frames a batch as on one Redis (the frames of each channel in sequence
//!   order), then [`Lanes::route`] hands each command to the lane of its channel's master by
//!   fred's slot table, and records that lane's budget as the slot's.
//! - Batching (G05) per master: `route` then waits until every lane it handed commands to has
//!   written them and had them answered, so that the next batch gathers what is posted
//!   meanwhile, as the publisher does on one Redis while its write is in flight. A lane that
//!   has not done so within [`STALL`] (its master is slow or down) is not waited for again
//!   until it has caught up.
//! - A command a master answers with `MOVED` goes to the lane of the master named. A lane
//!   whose write gets no answer reads the slot table every [`CHECK`]: once the slot of one
//!   of its commands belongs to another master (a failover, C04, or a reshard, C03), the write
//!   is given up and each of its commands goes to its slot's master now. Nothing is given up
//!   for the lack of an answer alone.
//! - Order: a lane writes in order, so a channel's frames keep their order while its slot
//!   stays put. Across a move, a frame sent again on the new master's lane can arrive after
//!   later ones; receivers hold those until it arrives or is repaired (K03), or count it
//!   missed (G06), and drop a frame that reached Redis twice as a duplicate.
//! - A lane idle for [`IDLE`] whose master owns no slot any more (a failed master, replaced)
//!   closes, and so does its connection.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::command::{account, Command, RETRY_PAUSE};
use super::connection::{self, Failure, Master, Outbound, Redis};
use super::state::{State, MAX_BUDGETS};
use crate::transport::BoxFuture;

/// How long [`Lanes::route`] waits for a lane to write what it was handed and have it answered.
const STALL: Duration = Duration::from_millis(100);
/// How often a lane whose write is not answered reads the slot table.
const CHECK: Duration = Duration::from_millis(250);
/// How long a lane waits for work before it checks that its master still owns slots.
const IDLE: Duration = Duration::from_secs(5);
/// How long closing a retired lane's connection may take.
const CLOSE_LIMIT: Duration = Duration::from_millis(500);

/// The lanes of one bus, owned by its publisher task: dropping them stops them.
pub(super) struct Lanes(Arc<Shared>);

/// What the publisher and the lanes share.
struct Shared {
    state: Arc<State>,
    redis: Arc<Redis>,
    /// Master (`host:port`; empty while fred knows no slot table) -> its lane.
    lanes: Mutex<HashMap<String, Lane>>,
    /// Lanes started so far: each takes the next budget, round robin.
    started: Mutex<usize>,
}

/// One master's lane, as the publisher sees it.
struct Lane {
    /// Its outage budget: an index into `State::budgets`.
    budget: u8,
    queue: mpsc::UnboundedSender<Vec<Command>>,
    /// Hand-overs to it so far, and how many of them it has written and had answered.
    handed: u64,
    done: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Lanes {
    /// Starts a lane for every master of the slot table, so that every slot has its
    /// master's budget before the first post.
    pub(super) fn start(state: Arc<State>, redis: Arc<Redis>) -> Lanes {
        let shared = Arc::new(Shared {
            state,
            redis,
            lanes: Mutex::new(HashMap::new()),
            started: Mutex::new(0),
        });
        for (first, last, master) in shared.redis.slot_table() {
            let mut lanes = shared.lanes.lock();
            let budget = shared.lane(&mut lanes, &master).budget;
            for slot in first..=last {
                if let Some(entry) = shared.state.slot_budgets.get(usize::from(slot)) {
                    entry.store(budget, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Lanes(shared)
    }

    /// Hands each command to the lane of its channel's master, then waits (up to [`STALL`])
    /// until those lanes have written them and had them answered.
    pub(super) async fn route(&self, commands: Vec<Command>) {
        let waits = self.0.hand_over(by_master(&self.0.redis, commands));
        let done = async {
            for (mut done, handed) in waits {
                let _ = done.wait_for(|done| *done >= handed).await;
            }
        };
        let _ = tokio::time::timeout(STALL, done).await;
    }
}

impl Drop for Lanes {
    /// The publisher stopped (the bus closes): so do the lanes. Their connections are
    /// closed with the others (`Redis::close`).
    fn drop(&mut self) {
        for lane in self.0.lanes.lock().values() {
            lane.task.abort();
        }
    }
}

/// `commands` grouped by their slot's master now, each group in the order given.
fn by_master(redis: &Redis, commands: Vec<Command>) -> HashMap<String, Vec<Command>> {
    let mut groups: HashMap<String, Vec<Command>> = HashMap::new();
    for command in commands {
        let master = redis.owner(command.outbound.channel()).unwrap_or_default();
        groups.entry(master).or_default().push(command);
    }
    groups
}

impl Shared {
    /// Queues each group on its master's lane (starting lanes as needed) and records the
    /// lane's budget as the budget of the groups' slots. Returns, for each lane that had
    /// written everything handed to it before, what to wait on until it has written this too.
    fn hand_over(
        self: &Arc<Self>,
        groups: HashMap<String, Vec<Command>>,
    ) -> Vec<(watch::Receiver<u64>, u64)> {
        let mut waits = Vec::new();
        let mut lanes = self.lanes.lock();
        for (master, commands) in groups {
            let lane = self.lane(&mut lanes, &master);
            for command in &commands {
                let slot = usize::from(connection::slot(command.outbound.channel()));
                if let Some(entry) = self.state.slot_budgets.get(slot) {
                    entry.store(lane.budget, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let caught_up = *lane.done.borrow() >= lane.handed;
            lane.handed += 1;
            // Fails only once the lane's task ended, and that is only when the bus closes.
            let _ = lane.queue.send(commands);
            if caught_up {
                waits.push((lane.done.clone(), lane.handed));
            }
        }
        waits
    }

    /// `master`'s lane, started if it has none.
    fn lane<'a>(
        self: &Arc<Self>,
        lanes: &'a mut HashMap<String, Lane>,
        master: &str,
    ) -> &'a mut Lane {
        lanes.entry(master.to_string()).or_insert_with(|| {
            let mut started = self.started.lock();
            let budget = (*started % MAX_BUDGETS) as u8;
            *started += 1;
            let (queue, receiver) = mpsc::unbounded_channel();
            let (done_tx, done) = watch::channel(0);
            let worker = Worker {
                shared: Arc::downgrade(self),
                state: self.state.clone(),
                redis: self.redis.clone(),
                link: self.redis.master(master),
                master: master.to_string(),
            };
            Lane {
                budget,
                queue,
                handed: 0,
                done,
                task: tokio::spawn(worker.run(receiver, done_tx)),
            }
        })
    }

    /// Hands `commands` to their slots' masters' lanes now (from a lane: no waiting).
    fn reroute(self: &Arc<Self>, commands: Vec<Command>) {
        if !commands.is_empty() {
            self.hand_over(by_master(&self.redis, commands));
        }
    }
}

/// A lane's task: its master's connection and what it needs to settle posts.
struct Worker {
    shared: Weak<Shared>,
    state: Arc<State>,
    redis: Arc<Redis>,
    /// The master's own connection; `None` for the lane of posts whose master is not known
    /// yet, which go through fred's clustered client.
    link: Option<Master>,
    master: String,
}

impl Worker {
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Vec<Command>>, done: watch::Sender<u64>) {
        let mut pending: Vec<Command> = Vec::new();
        // Hand-overs taken and not yet answered.
        let mut taking = 0;
        loop {
            let mut batches = Vec::new();
            if pending.is_empty() {
                match tokio::time::timeout(IDLE, queue.recv_many(&mut batches, usize::MAX)).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(_idle) => {
                        if self.link.is_some() && !self.redis.masters().contains(&self.master) {
                            return self.retire(queue).await;
                        }
                        continue;
                    }
                }
            } else {
                // What was handed over while the last write was retried goes after it.
                while let Ok(batch) = queue.try_recv() {
                    batches.push(batch);
                }
            }
            taking += batches.len() as u64;
            let retry = !pending.is_empty();
            pending.extend(batches.into_iter().flatten());
            if retry {
                // The master did not answer the last write: do not spin while it reconnects.
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            pending = self.write(pending).await;
            if pending.is_empty() {
                // Written and answered: the publisher's next batch may go.
                done.send_modify(|count| *count += std::mem::take(&mut taking));
            }
        }
    }

    /// Writes `commands` in one pipelined write and settles what the master answered;
    /// hands to other lanes what belongs to other masters now; returns what is to be
    /// written here again.
    async fn write(&self, commands: Vec<Command>) -> Vec<Command> {
        let outbound: Vec<Outbound> = commands.iter().map(|c| c.outbound.clone()).collect();
        let mut write: BoxFuture<'_, Vec<Result<(), Failure>>> = match &self.link {
            Some(link) => Box::pin(link.publish(outbound)),
            None => Box::pin(self.redis.publish(outbound)),
        };
        let results = loop {
            match tokio::time::timeout(CHECK, &mut write).await {
                Ok(results) => break results,
                Err(_unanswered) if self.link.is_some() && self.any_moved(&commands) => {
                    // Given up: whatever of it reached Redis, receivers drop as duplicates.
                    drop(write);
                    return self.keep_mine(commands);
                }
                Err(_unanswered) => {}
            }
        };
        let (retry, moved) = account(&self.state, commands, results);
        if let Some(shared) = self.shared.upgrade() {
            let mut named: HashMap<String, Vec<Command>> = HashMap::new();
            for (to, command) in moved {
                named.entry(to).or_default().push(command);
            }
            shared.hand_over(named);
        }
        self.keep_mine(retry)
    }

    /// Whether the slot of any of `commands` now belongs to another master.
    fn any_moved(&self, commands: &[Command]) -> bool {
        commands.iter().any(|command| {
            self.redis
                .owner(command.outbound.channel())
                .is_some_and(|owner| owner != self.master)
        })
    }

    /// Hands the commands whose slot belongs to another master now to its lane; returns
    /// the rest, in order.
    fn keep_mine(&self, commands: Vec<Command>) -> Vec<Command> {
        if self.link.is_none() {
            return commands;
        }
        let (mine, theirs): (Vec<Command>, Vec<Command>) = commands.into_iter().partition(|c| {
            self.redis
                .owner(c.outbound.channel())
                .is_none_or(|owner| owner == self.master)
        });
        if let Some(shared) = self.shared.upgrade() {
            shared.reroute(theirs);
        }
        mine
    }

    /// Closes this lane (its master owns no slot): what was handed to it meanwhile goes to
    /// its slots' masters, and its connection is closed.
    async fn retire(self, mut queue: mpsc::UnboundedReceiver<Vec<Command>>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        // Removed first: nothing is handed to it after this.
        drop(shared.lanes.lock().remove(&self.master));
        let mut left = Vec::new();
        while let Ok(batch) = queue.try_recv() {
            left.extend(batch);
        }
        shared.reroute(left);
        tracing::info!(
            target: "evbus",
            master = %self.master,
            "a master that owns no slot any more: its publishing lane is closed"
        );
        drop(shared);
        if let Some(link) = self.link {
            self.redis
                .close_master(link, &self.master, CLOSE_LIMIT)
                .await;
        }
    }
}
