//! The only file of the crate that names `fred`: two connections per bus and what evbus asks of them.
//!
//! - The *publisher* connection ([`fred::clients::Client`]) carries every PUBLISH, in
//!   pipelined writes, in order.
//! - The *subscriber* connection ([`fred::clients::SubscriberClient`]) carries SUBSCRIBE and
//!   UNSUBSCRIBE and receives the messages. fred tracks its subscriptions; after a reconnect
//!   [`Redis::watch`] re-subscribes every tracked channel before it reports the link up (G08).
//!
//! Both have a [`ReconnectPolicy`]: without one fred never reconnects. fred hands pub/sub
//! messages to readers through tokio broadcast channels, which allocate every slot up front
//! (nine channels per client): at 65,536 slots an idle bus took 78 MB. The reader only moves
//! each message on to a dispatch thread (`super::dispatch`), so [`SUBSCRIBER_BUFFER`] slots
//! are plenty (an idle bus now takes about 2.6 MB); a `Lagged(n)` fred still reports is
//! counted ([`Incoming::Lagged`]).
//!
//! # Redis Cluster (C01-C04)
//!
//! A `redis-cluster://` URL makes both clients clustered: fred keeps one connection per
//! master on each and routes by slot. Global messages then use sharded pub/sub (C02). Posts
//! are `SPUBLISH`, sent on a plain connection of their own per master ([`Master`], one
//! pipelined write per master, a `MOVED` answer returned as [`Failure::Moved`]): fred's
//! clustered client reconnects every master together and writes nothing while any master is
//! unreachable, so one dead shard would stop them all. Each channel is `SSUBSCRIBE`d alone on the master that owns its slot (see [`Redis::subscribe`] for why
//! alone), up to [`SSUBSCRIBE_WINDOW`] of them in flight at once. No classic `SUBSCRIBE` or
//! `PUBLISH` is sent: a cluster broadcasts those to every node. A slot that moves (C03) or a
//! master that fails over (C04) is found by [`Redis::moved`], since fred drops the
//! `SUNSUBSCRIBE` Redis pushes then. A `redis-sentinel://` URL uses classic pub/sub on the
//! master the sentinels name; fred asks them again after a failover.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};

use fred::error::ErrorKind;
use fred::interfaces::{ClientLike, ClusterInterface, EventInterface, PubsubInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy, Value};
use fred::types::cluster::ClusterRouting;
use parking_lot::Mutex;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use crate::error::Reason;

/// Messages fred may buffer for the reader before it reports them lagged.
pub(crate) const SUBSCRIBER_BUFFER: usize = 1 << 11;

/// On a cluster, how many single-channel `SSUBSCRIBE`s [`Redis::subscribe`] keeps in flight
/// at once. Enough to keep every master's connection busy (fred writes what is queued in one
/// write, and flushes at the latest after `max_feed_count` commands), few enough that a
/// restore of 100,000 channels holds a bounded number of tasks and pending replies.
const SSUBSCRIBE_WINDOW: usize = 512;
/// How long [`Redis::moved`]'s `CLUSTER SLOTS` on an open connection may take before fred's
/// slow way of reading the table is taken instead.
const QUICK_SLOTS_LIMIT: Duration = Duration::from_millis(500);

/// Reconnect forever, 50 ms after a drop, backing off to at most one second between tries.
fn policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, 50, 1000, 2)
}

/// One bus's Redis connections.
pub(crate) struct Redis {
    publisher: Client,
    subscriber: SubscriberClient,
    /// On a Redis Cluster (a `redis-cluster://` URL): sharded pub/sub, and where each
    /// subscribed channel was subscribed. `None` on one Redis or through Sentinel.
    cluster: Option<Arc<Shards>>,
    /// The settings every connection was built with, for the [`Master`] connections.
    builder: Builder,
    /// The [`Master`] connections made and not yet closed, so that [`Redis::close`] closes
    /// them too: master (`host:port`) -> fred's task for it.
    masters: Mutex<HashMap<String, tokio::task::JoinHandle<Result<(), fred::error::Error>>>>,
}

/// A cluster master's own publishing connection: a plain (not clustered) client, so that a
/// master that is unreachable holds up only what is sent to it. Made by [`Redis::master`].
pub(crate) struct Master {
    client: Client,
    /// Whether [`Master::publish`] sends `SPUBLISH` (always, on a cluster).
    sharded: bool,
}

impl Master {
    /// Sends `batch` as one pipelined write, in order; returns each command's outcome. A
    /// `MOVED` answer is [`Failure::Moved`]. Waits (without a bound of its own) while the
    /// master is unreachable: fred reconnects by itself.
    pub(crate) fn publish(
        &self,
        batch: Vec<Outbound>,
    ) -> impl Future<Output = Vec<Result<(), Failure>>> + Send + '_ {
        publish_with(&self.client, self.sharded, batch)
    }
}

/// Sharded pub/sub on a Redis Cluster (C01-C04).
///
/// fred's clustered clients keep one connection per master and route `SPUBLISH` and
/// `SSUBSCRIBE` by the channel's slot, following `MOVED`. What fred does not do is notice that
/// a subscribed slot moved: Redis then pushes an unsolicited `SUNSUBSCRIBE`, which fred drops
/// as an "unused subscription response". So each channel's owner at the time of its
/// `SSUBSCRIBE` is kept here, and [`Redis::moved`] compares it with the cluster's current
/// slot table.
struct Shards {
    /// Redis channel -> the master (`host:port`) it was subscribed on.
    owners: Mutex<HashMap<String, String>>,
}

/// Why a PUBLISH failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The connection failed, or the cluster cannot take it now (`CLUSTERDOWN`,
    /// `TRYAGAIN`, `LOADING`); the command may or may not have reached Redis. Send it again.
    Retry,
    /// A cluster master answered `MOVED`: send it again to this master (`host:port`).
    Moved(String),
    /// Redis answered with an error: sending it again would not help.
    Refused(Reason),
}

fn failure(error: fred::error::Error) -> Failure {
    let details = error.details().trim();
    if let Some(to) = moved_to(details) {
        return Failure::Moved(to);
    }
    if ["CLUSTERDOWN", "TRYAGAIN", "LOADING"]
        .iter()
        .any(|transient| details.starts_with(transient))
    {
        return Failure::Retry;
    }
    match error.kind() {
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Timeout | ErrorKind::Backpressure => {
            Failure::Retry
        }
        _ => Failure::Refused(Reason::caused_by(error.to_string(), error)),
    }
}

/// One PUBLISH: a Redis channel and a payload. Cheap to clone (both are shared buffers), so
/// a command lost with a connection is sent again without copying.
#[derive(Clone)]
pub(crate) struct Outbound {
    channel: fred::bytes_utils::Str,
    payload: fred::bytes::Bytes,
}

impl Outbound {
    pub(crate) fn new(channel: String, payload: Vec<u8>) -> Self {
        Outbound {
            channel: channel.into(),
            payload: payload.into(),
        }
    }

    /// The Redis channel it goes to.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }
}

/// Which connection a [`Redis::watch`] report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    Publisher,
    Subscriber,
}

/// What [`Redis::watch`] reports of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// It failed; fred reconnects by itself.
    Down,
    /// It is connected again.
    Connected,
    /// It has restored what it had (for the subscriber: every subscription the bus wants;
    /// reported by the subscription task, not by [`Redis::watch`]).
    Restored,
}

/// What the subscriber connection received.
pub(crate) enum Incoming {
    /// A message, borrowed from fred's buffer as it arrived (no copy).
    Message(Received),
    /// fred's buffer overflowed and it dropped this many messages.
    Lagged(u64),
}

/// One message from the subscriber connection.
pub(crate) struct Received(fred::types::Message);

impl Received {
    /// The Redis channel it came on.
    pub(crate) fn channel(&self) -> &[u8] {
        self.0.channel.as_bytes()
    }

    /// Its payload; empty when Redis sent something other than a string.
    pub(crate) fn payload(&self) -> &[u8] {
        self.0.value.as_bytes().unwrap_or_default()
    }
}

/// The subscriber connection's messages, from [`Redis::inbox`].
pub(crate) struct Inbox(Receiver<fred::types::Message>);

impl Inbox {
    /// The next message; `None` once the connection is gone for good.
    pub(crate) async fn next(&mut self) -> Option<Incoming> {
        match self.0.recv().await {
            Ok(message) => Some(Incoming::Message(Received(message))),
            Err(RecvError::Lagged(n)) => Some(Incoming::Lagged(n)),
            Err(RecvError::Closed) => None,
        }
    }
}

impl Redis {
    /// Connects both connections to `url`.
    ///
    /// # Errors
    ///
    /// A reason for `BusError::Redis`, with the client's error as its cause: the URL is
    /// invalid, or Redis is unreachable now. The URL is quoted without its password.
    pub(crate) async fn connect(url: &str) -> Result<Redis, Reason> {
        let shown = redact(url);
        if cfg!(not(feature = "tls")) && (url.starts_with("rediss") || url.starts_with("valkeys")) {
            return Err(Reason::new(format!(
                "{shown:?} asks for TLS, which needs evbus's `tls` feature \
                 (evbus = {{ features = [\"tls\"] }})"
            )));
        }
        let config = Config::from_url(url).map_err(|e| {
            Reason::caused_by(
                format!(
                    "invalid Redis URL {shown:?}: {}",
                    redact_in(&e.to_string(), url)
                ),
                e,
            )
        })?;
        let clustered = config.server.is_clustered();
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(policy())
            .with_performance_config(|perf| {
                perf.broadcast_channel_capacity = SUBSCRIBER_BUFFER;
                // Frames written before a flush: a pipelined batch goes out in few writes.
                perf.max_feed_count = 1024;
            })
            .with_connection_config(|connection| {
                connection.connection_timeout = Duration::from_secs(5);
                connection.internal_command_timeout = Duration::from_secs(5);
                // A connection that stops answering is replaced, as one that closes.
                connection.unresponsive.max_timeout = Some(Duration::from_secs(10));
                connection.unresponsive.interval = Duration::from_secs(1);
            });
        let invalid = |e: fred::error::Error| {
            Reason::caused_by(
                format!(
                    "invalid Redis URL {shown:?}: {}",
                    redact_in(&e.to_string(), url)
                ),
                e,
            )
        };
        let publisher = builder.build().map_err(invalid)?;
        let subscriber = builder.build_subscriber_client().map_err(invalid)?;
        let unreachable = |e: fred::error::Error| {
            let text = redact_in(&e.to_string(), url);
            // A cluster URL at a Redis that is not a cluster node: say what to use instead.
            let hint = if clustered && text.contains("cluster support disabled") {
                " (that Redis is not in cluster mode: use a redis:// URL for a single Redis)"
            } else {
                ""
            };
            Reason::caused_by(format!("cannot connect to {shown}: {text}{hint}"), e)
        };
        publisher.init().await.map_err(unreachable)?;
        subscriber.init().await.map_err(unreachable)?;
        let cluster = clustered.then(|| {
            Arc::new(Shards {
                owners: Mutex::new(HashMap::new()),
            })
        });
        Ok(Redis {
            publisher,
            subscriber,
            cluster,
            builder,
            masters: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this is a Redis Cluster, with sharded pub/sub (C02).
    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Sends `batch` as one pipelined write of PUBLISH commands, in order; returns each
    /// command's outcome. fred waits for a lost connection to come back (up to its retry
    /// limit) before a command fails with [`Failure::Retry`].
    ///
    /// On a cluster the commands are `SPUBLISH` (C02), which fred routes by slot: one
    /// pipelined write per master, each channel's commands in order, a `MOVED` followed.
    pub(crate) async fn publish(&self, batch: Vec<Outbound>) -> Vec<Result<(), Failure>> {
        publish_with(&self.publisher, self.is_cluster(), batch).await
    }

    /// A connection of its own to cluster master `master` (`host:port`), for its
    /// publishing lane; `None` on one Redis, or for a name that is not `host:port`. It
    /// connects in the background and reconnects by itself; [`Redis::close_master`] or
    /// [`Redis::close`] closes it.
    pub(crate) fn master(&self, master: &str) -> Option<Master> {
        self.cluster.as_ref()?;
        // The slot table's entry for it carries what TLS needs (its server name).
        let known = self.subscriber.cached_cluster_state().and_then(|routing| {
            routing
                .slots()
                .iter()
                .map(|range| &range.primary)
                .find(|server| server.to_string() == master)
                .cloned()
        });
        let server = match known {
            Some(server) => server,
            None => {
                let (host, port) = master.rsplit_once(':')?;
                fred::types::config::Server::new(host, port.parse().ok()?)
            }
        };
        let mut config = self.builder.get_config()?.clone();
        config.server = fred::types::config::ServerConfig::Centralized { server };
        let mut builder = self.builder.clone();
        builder.set_config(config);
        let client = builder.build().ok()?;
        let task = client.connect();
        if let Some(old) = self.masters.lock().insert(master.to_string(), task) {
            old.abort();
        }
        Some(Master {
            client,
            sharded: true,
        })
    }

    /// Closes `master`'s connection ([`Redis::master`]), within `limit`.
    pub(crate) async fn close_master(&self, master: Master, name: &str, limit: Duration) {
        let _ = tokio::time::timeout(limit, master.client.quit()).await;
        if let Some(task) = self.masters.lock().remove(name) {
            // A connection to a master that is gone would keep trying to reconnect.
            task.abort();
        }
    }

    /// On a cluster, the masters that own slots now, by fred's slot table as last read.
    pub(crate) fn masters(&self) -> Vec<String> {
        let Some(routing) = self
            .cluster
            .as_ref()
            .and_then(|_| self.subscriber.cached_cluster_state())
        else {
            return Vec::new();
        };
        let mut masters: Vec<String> = routing
            .slots()
            .iter()
            .map(|range| range.primary.to_string())
            .collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// The owner of each slot range now: (first slot, last slot, master as `host:port`).
    pub(crate) fn slot_table(&self) -> Vec<(u16, u16, String)> {
        self.cluster
            .as_ref()
            .and_then(|_| self.subscriber.cached_cluster_state())
            .map(|routing| {
                routing
                    .slots()
                    .iter()
                    .map(|range| (range.start, range.end, range.primary.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Sends `batch` on `client` as one pipelined write of PUBLISH (or, `sharded`, SPUBLISH)
/// commands, in order; returns each command's outcome.
async fn publish_with(
    client: &Client,
    sharded: bool,
    batch: Vec<Outbound>,
) -> Vec<Result<(), Failure>> {
    let pipeline = client.pipeline();
    let mut queued = Vec::with_capacity(batch.len());
    for Outbound { channel, payload } in batch {
        let result: Result<(), _> = if sharded {
            pipeline.spublish(channel, Value::Bytes(payload)).await
        } else {
            pipeline.publish(channel, Value::Bytes(payload)).await
        };
        queued.push(result.map_err(failure));
    }
    let mut results = pipeline.try_all::<Value>().await.into_iter();
    queued
        .into_iter()
        .map(|queued| {
            queued?;
            match results.next() {
                Some(result) => result.map(drop).map_err(failure),
                None => Err(Failure::Retry),
            }
        })
        .collect()
}

impl Redis {
    /// SUBSCRIBEs to `channels`; returns once Redis has applied it (see [`applied`]).
    ///
    /// The PING that confirms it is sent at once behind it, so that a refusal of the
    /// SUBSCRIBE (which fred hands to whichever command waits next) finds it waiting; see
    /// [`applied`]. A refusal can still go unseen, so [`Redis::unsubscribed`] checks.
    ///
    /// On a cluster each channel is `SSUBSCRIBE`d alone, on the master that owns its slot
    /// (C02): fred awaits Redis's answer to an `SSUBSCRIBE` (so that it can follow `MOVED`),
    /// but takes only the first reply frame, and one `SSUBSCRIBE` of several channels would
    /// leave the other frames to be taken as the answers of later commands. Its answer is
    /// Redis's confirmation, and a refusal is that command's error. See
    /// [`Redis::subscribe_each`] for how many are sent at once.
    pub(crate) async fn subscribe(&self, channels: Vec<String>) -> Result<(), Failure> {
        if self.cluster.is_some() {
            return match self.subscribe_each(channels).await?.into_iter().next() {
                Some((_, reason)) => Err(Failure::Refused(reason)),
                None => Ok(()),
            };
        }
        let (subscribed, applied) = tokio::join!(
            self.subscriber.subscribe(channels),
            applied(&self.subscriber)
        );
        subscribed.map_err(failure)?;
        applied
    }

    /// `SSUBSCRIBE`s each of `channels` alone, up to [`SSUBSCRIBE_WINDOW`] at once, and
    /// records the owner of each one Redis confirmed (C02). A restore after a reconnect
    /// subscribes every channel again: awaited one after another, each channel cost a round
    /// trip; in flight together, fred writes each to its master's connection without waiting
    /// for the answers before it (a queue of them goes out in one write), so the masters
    /// work on them at once (`resubscribing_ten_thousand_channels_after_a_reconnect` in
    /// tests/cluster.rs measures it).
    ///
    /// Sending them together is safe with fred (10.1): it writes each command to the
    /// connection of its slot's master and keeps the commands sent on a connection in a
    /// queue, handing each reply frame to the oldest
    /// (`router::clustered::process_response_frame`). Redis answers a connection's commands
    /// in order, with one frame for a one-channel `SSUBSCRIBE` (its confirmation, or its
    /// error), and fred does not take an `ssubscribe` frame for an out-of-band push
    /// (`router::responses::is_subscribe_prefix`); so every future gets its own command's
    /// answer. A `MOVED` is followed for that command alone. fred has no in-flight limit of
    /// its own here: the window is ours.
    ///
    /// Returns the channels Redis refused (an ACL without them), each with its answer:
    /// every `SSUBSCRIBE` has its own answer, so a refused channel among 100,000 costs no
    /// search.
    ///
    /// # Errors
    ///
    /// [`Failure::Refused`] on one Redis (this is for a cluster). After a command failed
    /// with its connection no more are sent; those in flight are awaited (a confirmed one is
    /// still recorded); then [`Failure::Retry`]: sending them all again applies what was
    /// applied once more, harmlessly.
    pub(crate) async fn subscribe_each(
        &self,
        channels: Vec<String>,
    ) -> Result<Vec<(String, Reason)>, Failure> {
        let Some(shards) = &self.cluster else {
            return Err(Failure::Refused(Reason::new("not a Redis Cluster")));
        };
        let mut channels = channels.into_iter();
        // Tasks rather than futures polled here: the subscriber client is a cheap handle, and
        // tokio's `JoinSet` is the bounded "join as they finish" the crate already has.
        let mut flight = tokio::task::JoinSet::new();
        let mut refused = Vec::new();
        let mut lost = false;
        loop {
            while !lost && flight.len() < SSUBSCRIBE_WINDOW {
                let Some(channel) = channels.next() else {
                    break;
                };
                let subscriber = self.subscriber.clone();
                flight.spawn(async move {
                    let result = subscriber.ssubscribe(channel.clone()).await;
                    (channel, result)
                });
            }
            let Some(joined) = flight.join_next().await else {
                return if lost {
                    Err(Failure::Retry)
                } else {
                    Ok(refused)
                };
            };
            match joined {
                Ok((channel, Ok(()))) => {
                    let owner = self.owner(&channel).unwrap_or_default();
                    shards.owners.lock().insert(channel, owner);
                }
                Ok((channel, Err(error))) => match failure(error) {
                    Failure::Refused(reason) => refused.push((channel, reason)),
                    Failure::Retry | Failure::Moved(_) => lost = true,
                },
                Err(joined) if joined.is_panic() => std::panic::resume_unwind(joined.into_panic()),
                // Cancelled: only a runtime shutting down cancels them.
                Err(_) => lost = true,
            }
        }
    }

    /// Which of `channels`, just subscribed, have no subscriber on the server: those Redis
    /// refused without the refusal reaching us. (A channel another client subscribes looks
    /// subscribed: this finds refusals, never invents one.)
    pub(crate) async fn unsubscribed(&self, channels: &[String]) -> Result<Vec<String>, Failure> {
        // On a cluster a refused SSUBSCRIBE fails its own command (see `subscribe`).
        if channels.is_empty() || self.is_cluster() {
            return Ok(Vec::new());
        }
        let counts: Vec<Value> = self
            .publisher
            .pubsub_numsub(channels.to_vec())
            .await
            .map_err(failure)?;
        // [channel, count, channel, count, ...]
        let zero = counts
            .chunks(2)
            .filter(|pair| pair.get(1).and_then(Value::as_i64) == Some(0))
            .filter_map(|pair| pair.first().and_then(Value::as_string))
            .collect();
        Ok(zero)
    }

    /// UNSUBSCRIBEs from `channels`; returns once Redis has applied it.
    ///
    /// On a cluster, one `SUNSUBSCRIBE` per slot, each on the slot's owner (C02); it returns
    /// once written (Redis does not answer an unsubscribe but with a push frame, which fred
    /// drops).
    pub(crate) async fn unsubscribe(&self, channels: Vec<String>) -> Result<(), Failure> {
        if let Some(shards) = &self.cluster {
            let mut slots: BTreeMap<u16, Vec<String>> = BTreeMap::new();
            for channel in channels {
                slots
                    .entry(ClusterRouting::hash_key(channel.as_bytes()))
                    .or_default()
                    .push(channel);
            }
            for (_, channels) in slots {
                self.subscriber
                    .sunsubscribe(channels.clone())
                    .await
                    .map_err(failure)?;
                let mut owners = shards.owners.lock();
                for channel in &channels {
                    owners.remove(channel);
                }
            }
            return Ok(());
        }
        self.subscriber
            .unsubscribe(channels)
            .await
            .map_err(failure)?;
        applied(&self.subscriber).await
    }

    /// The master that owns `channel`'s slot, as `host:port`, by fred's slot table.
    pub(crate) fn owner(&self, channel: &str) -> Option<String> {
        let slot = ClusterRouting::hash_key(channel.as_bytes());
        self.subscriber
            .cached_cluster_state()
            .and_then(|routing| routing.get_server(slot).map(|server| server.to_string()))
    }

    /// The channels subscribed on a cluster.
    fn subscriber_channels(&self) -> Vec<String> {
        self.cluster
            .as_ref()
            .map(|shards| shards.owners.lock().keys().cloned().collect())
            .unwrap_or_default()
    }

    /// On a cluster: reads the slot table again and returns the subscribed channels whose
    /// slot has moved to another master since they were subscribed (a resharding, C03, or a
    /// failover, C04), each with its new owner. Redis has unsubscribed them (an unsolicited
    /// `SUNSUBSCRIBE`, which fred drops): they are to be subscribed again at once. Always
    /// empty on one Redis.
    ///
    /// Reading is one `CLUSTER SLOTS` on a connection already open. Only when its answer
    /// differs from the table fred keeps (or does not come within [`QUICK_SLOTS_LIMIT`]) is
    /// fred's table read again with `sync_cluster`, which also changes fred's connections;
    /// fred 10.1 opens a new connection for each `sync_cluster` while every connection is
    /// healthy (its `force_disconnect` test is inverted), so calling it on every check
    /// connected to the cluster anew four times a second, for as long as the bus ran.
    pub(crate) async fn moved(&self) -> Result<Vec<(String, String)>, Failure> {
        let Some(shards) = &self.cluster else {
            return Ok(Vec::new());
        };
        if !self.slot_table_unchanged().await {
            self.subscriber.sync_cluster().await.map_err(failure)?;
        }
        let Some(routing) = self.subscriber.cached_cluster_state() else {
            return Ok(Vec::new());
        };
        let owners = shards.owners.lock();
        let moved = owners
            .iter()
            .filter_map(|(channel, owner)| {
                let slot = ClusterRouting::hash_key(channel.as_bytes());
                let now = routing.get_server(slot)?.to_string();
                (now != *owner).then(|| (channel.clone(), now))
            })
            .collect();
        Ok(moved)
    }

    /// Whether the cluster's slot table, read now with one `CLUSTER SLOTS` on the
    /// publisher's connections, is the one fred keeps. `false` when the answer does not come
    /// within [`QUICK_SLOTS_LIMIT`] (a master is unreachable, say) or cannot be read.
    async fn slot_table_unchanged(&self) -> bool {
        let read = tokio::time::timeout(QUICK_SLOTS_LIMIT, self.publisher.cluster_slots::<Value>());
        let Ok(Ok(answer)) = read.await else {
            return false;
        };
        let host = match self.builder.get_config().map(|config| &config.server) {
            Some(fred::types::config::ServerConfig::Clustered { hosts, .. }) => {
                hosts.first().map(|server| server.host.clone())
            }
            _ => None,
        };
        let Ok(now) = ClusterRouting::from_cluster_slots(answer, host.unwrap_or_default()) else {
            return false;
        };
        let mut now: Vec<(u16, u16, String)> = now
            .slots()
            .iter()
            .map(|range| (range.start, range.end, range.primary.to_string()))
            .collect();
        let mut known = self.slot_table();
        now.sort_unstable();
        known.sort_unstable();
        now == known
    }

    /// The messages the subscriber connection receives from now on.
    pub(crate) fn inbox(&self) -> Inbox {
        Inbox(self.subscriber.message_rx())
    }

    /// Reports every change of either connection to `report`: `Down` on a connection error,
    /// `Connected` on a reconnect. What a reconnected subscriber must restore is the caller's
    /// to restore (fred's own set of tracked channels can be stale: it is changed only by
    /// commands that succeeded). The tasks run until aborted.
    ///
    /// On a cluster fred also reports a connection to a node it had none to before (a node
    /// that joined, or a replica promoted): while the link is up, and nothing this bus
    /// subscribed is on that node, nothing was lost and nothing is reported.
    pub(crate) fn watch<F>(&self, report: F) -> Vec<tokio::task::JoinHandle<()>>
    where
        F: Fn(Link, LinkState) + Send + Sync + 'static,
    {
        let report = Arc::new(report);
        let links = [
            (
                Link::Publisher,
                self.publisher.error_rx(),
                self.publisher.reconnect_rx(),
            ),
            (
                Link::Subscriber,
                self.subscriber.error_rx(),
                self.subscriber.reconnect_rx(),
            ),
        ];
        let mut tasks = Vec::new();
        for (link, mut errors, mut reconnects) in links {
            let report = report.clone();
            let shards = self.cluster.clone();
            tasks.push(tokio::spawn(async move {
                // Whether an error was reported since the last reconnect.
                let mut down = false;
                loop {
                    let server = match next_change(&mut errors, &mut reconnects).await {
                        None => return,
                        Some(Change::Down) => {
                            down = true;
                            report(link, LinkState::Down);
                            continue;
                        }
                        Some(Change::Connected(server)) => server,
                    };
                    let joined = match (&shards, &server) {
                        (Some(shards), Some(server)) => {
                            !down
                                && (link == Link::Publisher
                                    || !shards.owners.lock().values().any(|on| on == server))
                        }
                        _ => false,
                    };
                    if joined {
                        tracing::debug!(
                            target: "evbus",
                            node = server.as_deref().unwrap_or_default(),
                            "connected to a cluster node this bus had no connection to"
                        );
                        continue;
                    }
                    down = false;
                    report(link, LinkState::Connected);
                }
            }));
        }
        tasks
    }

    /// Unsubscribes everything and closes both connections, each step bounded by `limit`.
    pub(crate) async fn close(&self, limit: Duration) {
        if self.is_cluster() {
            let channels: Vec<String> = self.subscriber_channels();
            let _ = tokio::time::timeout(limit, self.unsubscribe(channels)).await;
        } else {
            let _ = tokio::time::timeout(limit, self.subscriber.unsubscribe_all()).await;
        }
        let _ = tokio::time::timeout(limit, self.subscriber.quit()).await;
        let _ = tokio::time::timeout(limit, self.publisher.quit()).await;
        // The lanes' connections (their tasks stopped before this): fred's own tasks.
        for (_, task) in self.masters.lock().drain() {
            task.abort();
        }
    }
}

/// Returns once Redis has applied every command sent before on `subscriber`'s connection.
///
/// fred resolves SUBSCRIBE and UNSUBSCRIBE as soon as they are written and drops Redis's
/// confirmations (their replies come out of band), so their futures say nothing about Redis.
/// Redis answers a connection's commands in order, and allows PING in subscribed mode: when
/// the PING's reply arrives, the commands before it are applied. Without this, a post right
/// after `subscriptions_ready` could miss the subscriber (Serverpod's issue 5248, again).
///
/// A SUBSCRIBE that Redis refuses (an ACL without the channel: `NOPERM`) is answered with an
/// error, which fred hands to the next waiting command: this PING. So an error here is the
/// refusal of the command before it, and the PING's own reply then arrives with nobody
/// waiting for it, or for the next PING. Each PING therefore carries a token, and a reply
/// counts only if it carries a token this call sent: a stale reply is skipped with one more
/// PING, so a refusal never makes a later wait return early.
async fn applied(subscriber: &SubscriberClient) -> Result<(), Failure> {
    static TOKENS: AtomicU64 = AtomicU64::new(0);
    let mut sent = Vec::new();
    // Every stale reply is one PING of an earlier call: a few at the most.
    for _ in 0..64 {
        let token = format!("evbus-applied-{}", TOKENS.fetch_add(1, Relaxed));
        let reply = subscriber.ping::<Value>(Some(token.clone())).await;
        sent.push(token);
        let reply = reply.map_err(failure)?;
        if carries_any(&reply, &sent) {
            return Ok(());
        }
    }
    Err(Failure::Retry)
}

/// Whether `reply` (`"token"` or `["pong", "token"]`) carries one of `tokens`.
fn carries_any(reply: &Value, tokens: &[String]) -> bool {
    let carries = |value: &Value| {
        value
            .as_bytes()
            .is_some_and(|bytes| tokens.iter().any(|t| t.as_bytes() == bytes))
    };
    match reply {
        Value::Array(items) => items.iter().any(carries),
        value => carries(value),
    }
}

/// The master a `MOVED <slot> <host:port>` answer names; `None` for any other error.
fn moved_to(details: &str) -> Option<String> {
    let rest = details.strip_prefix("MOVED ")?;
    let mut words = rest.split_whitespace();
    words.next()?;
    words.next().map(str::to_string)
}

/// The cluster slot of a Redis channel (CRC16 of its hash tag or name, modulo 16,384).
pub(crate) fn slot(channel: &str) -> u16 {
    ClusterRouting::hash_key(channel.as_bytes())
}

/// What [`next_change`] saw of a connection.
enum Change {
    /// An error.
    Down,
    /// A connection made again, to this node (`host:port`; `None` when some reports were
    /// missed).
    Connected(Option<String>),
}

/// The next error or reconnect of a client, errors first when both are waiting (fred
/// reports the error of a connection before the reconnect that replaces it); `None` once
/// the client is gone. A lagged receiver counts as an error: reports were missed.
async fn next_change<E: Clone>(
    errors: &mut Receiver<E>,
    reconnects: &mut Receiver<fred::types::config::Server>,
) -> Option<Change> {
    let mut error = std::pin::pin!(errors.recv());
    let mut reconnect = std::pin::pin!(reconnects.recv());
    // Both are cancel-safe: the one not taken keeps its report for the next call.
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(error) = error.as_mut().poll(cx) {
            return std::task::Poll::Ready(match error {
                Err(RecvError::Closed) => None,
                Ok(_) | Err(RecvError::Lagged(_)) => Some(Change::Down),
            });
        }
        reconnect
            .as_mut()
            .poll(cx)
            .map(|reconnect| match reconnect {
                Err(RecvError::Closed) => None,
                Ok(server) => Some(Change::Connected(Some(server.to_string()))),
                Err(RecvError::Lagged(_)) => Some(Change::Connected(None)),
            })
    })
    .await
}

/// `url` with the password of its user info, if any, replaced by `***`, for errors, logs and
/// `Debug`: `redis://admin:secret@host:6379` becomes `redis://admin:***@host:6379`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            let password = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{password}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// `text` with the password of `url`, wherever it appears, replaced by `***`: the client's
/// own error texts may quote the URL or its parts.
fn redact_in(text: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(user_info, _)| user_info.split_once(':'))
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty());
    match password {
        Some(password) => text.replace(password, "***"),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_what_is_shown() {
        assert_eq!(
            redact("redis://admin:TopSecret-Pw@127.0.0.1:6379/0"),
            "redis://admin:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1?x=a@b"), "redis://h:1?x=a@b");
        assert_eq!(redact("redis://user@h:1"), "redis://user@h:1");
        assert_eq!(redact("no scheme"), "no scheme");
        assert_eq!(
            redact_in("bad TopSecret-Pw here", "redis://a:TopSecret-Pw@h:1"),
            "bad *** here"
        );
    }

    #[test]
    fn a_moved_answer_names_its_master() {
        assert_eq!(
            moved_to("MOVED 3999 127.0.0.1:6381").as_deref(),
            Some("127.0.0.1:6381")
        );
        assert_eq!(moved_to("MOVED 3999"), None);
        assert_eq!(moved_to("ERR unknown command"), None);
    }
}
