//! Faults between the bus and Redis (G04, G06 to G08): a Redis server killed and restarted
//! while a stream of global posts runs, `CLIENT KILL TYPE pubsub`, a subscriber that Redis cuts
//! off for exceeding its output buffer limit, replayed frames, posts held through an outage, an
//! outage longer than the connection timeouts with subscription changes made during it, and a
//! Redis that flaps (killed again while the buses reconnect).
//!
//! Every test starts its own `redis-server` (tests/support/redis.rs) and checks the same
//! promise: the bus recovers by itself (no call from the test), re-subscribes, emits
//! `Disconnected` then `Reconnected`, and every message posted is delivered once, in post order,
//! or reported missed. A gap is only detectable once a later message from the same origin on
//! the same channel arrives, so every test posts more after the recovery; the accounting of a
//! receiving bus is then exact: (messages its listener got) + `Stats::global_missed` == posted,
//! and the `MessagesMissed` events add up to `global_missed` (a loss is never silent).

mod support;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evbus::{Bus, BusEvent, MessageScope, PostError};
use serde::{Deserialize, Serialize};
use support::bus::{
    blocking, build, delivered, eventually, flush, global, next, ready, shutdown, stats_until,
    wait_until, DEADLINE,
};
use support::redis::{numsub, RawSubscriber, RedisServer};

/// Bound on the wait for the final accounting (thousands of messages still on their way).
const ACCOUNTING_DEADLINE: Duration = Duration::from_secs(60);
/// Messages the continuous poster posts between two 1 ms sleeps.
const BURST: usize = 5;

// ---- helpers --------------------------------------------------------------------------------

/// A bus on `server` that holds up to `outage_buffer` global posts while Redis is down.
async fn connect(server: &RedisServer, outage_buffer: usize) -> Bus {
    build(
        Bus::builder()
            .redis_url(server.url())
            .outage_buffer(outage_buffer),
    )
    .await
}

/// Ids of the connections Redis counts as pub/sub clients.
fn pubsub_client_ids(server: &RedisServer) -> Vec<u64> {
    let list = server.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    list.lines()
        .filter_map(|line| line.strip_prefix("id="))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

async fn wait_numsub(server: &RedisServer, channel: &str, expected: u64) {
    wait_until(
        &format!("PUBSUB NUMSUB {channel} is {expected} again (every bus re-subscribed)"),
        DEADLINE,
        || blocking(|| numsub(server, channel)) == expected,
    )
    .await;
}

/// `redis-cli MONITOR` running in the background: the commands the server receives, for
/// failure messages. Killed (this child process only) on drop.
struct Monitor {
    child: std::process::Child,
    path: std::path::PathBuf,
}

impl Monitor {
    fn start(server: &RedisServer) -> Monitor {
        let path = std::env::temp_dir().join(format!(
            "evbus-faults-monitor-{}-{}",
            std::process::id(),
            server.port()
        ));
        let out = std::fs::File::create(&path).expect("monitor output file");
        let child = std::process::Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &server.port().to_string(),
                "monitor",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-cli monitor");
        Monitor { child, path }
    }

    /// The (UN)SUBSCRIBE commands seen so far, without timestamps' noise.
    fn subscriptions(&self) -> String {
        let log = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|line| line.to_ascii_lowercase().contains("subscribe"))
            .collect();
        lines.join("\n")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a listener received, as the sequence numbers of the messages, in arrival order.
#[derive(Clone)]
struct Received(Arc<Mutex<Vec<u64>>>);

impl Received {
    fn listen<M: evbus::Message>(bus: &Bus, channel: &str, seq: fn(&M) -> u64) -> Received {
        let received = Received(Arc::new(Mutex::new(Vec::new())));
        let sink = received.0.clone();
        bus.messages()
            .add_listener(channel, move |m: &M| sink.lock().unwrap().push(seq(m)));
        received
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn last(&self) -> Option<u64> {
        self.0.lock().unwrap().last().copied()
    }

    fn snapshot(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }
}

/// Every event of one bus, recorded by a task from the moment of `record` on.
#[derive(Clone)]
struct EventLog(Arc<Mutex<Vec<BusEvent>>>);

impl EventLog {
    fn record(bus: &Bus) -> EventLog {
        let log = EventLog(Arc::new(Mutex::new(Vec::new())));
        let sink = log.0.clone();
        let mut events = bus.events();
        tokio::spawn(async move {
            while let Some(event) = next(&mut events).await {
                sink.lock().unwrap().push(event);
            }
        });
        log
    }

    /// A position in the log, to look at what came after it.
    fn mark(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn since(&self, mark: usize) -> Vec<BusEvent> {
        self.0.lock().unwrap()[mark..].to_vec()
    }

    fn disconnected_since(&self, mark: usize) -> bool {
        self.since(mark)
            .iter()
            .any(|e| matches!(e, BusEvent::Disconnected))
    }

    /// A `Reconnected` after a `Disconnected`, both after `mark`.
    fn recovered_since(&self, mark: usize) -> bool {
        let events = self.since(mark);
        let disconnected = events
            .iter()
            .position(|e| matches!(e, BusEvent::Disconnected));
        let reconnected = events
            .iter()
            .rposition(|e| matches!(e, BusEvent::Reconnected));
        matches!((disconnected, reconnected), (Some(d), Some(r)) if d < r)
    }

    /// The last connection event is `Reconnected`: the bus believes it is fully back.
    fn back_up(&self) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|e| {
                matches!(
                    e,
                    BusEvent::Disconnected | BusEvent::Connected | BusEvent::Reconnected
                )
            })
            .is_some_and(|e| matches!(e, BusEvent::Reconnected))
    }

    fn missed_reported(&self) -> u64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                BusEvent::MessagesMissed { count, .. } => *count,
                _ => 0,
            })
            .sum()
    }

    /// The events in order, runs of `MessagesMissed` summed into one entry.
    fn summary(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        let mut missed: Option<(usize, u64)> = None;
        for event in self.0.lock().unwrap().iter() {
            match event {
                BusEvent::MessagesMissed { count, .. } => {
                    let (events, total) = missed.get_or_insert((0, 0));
                    *events += 1;
                    *total += count;
                }
                other => {
                    if let Some((events, total)) = missed.take() {
                        out.push(format!("MessagesMissed x{events} (total {total})"));
                    }
                    out.push(format!("{other:?}"));
                }
            }
        }
        if let Some((events, total)) = missed {
            out.push(format!("MessagesMissed x{events} (total {total})"));
        }
        if out.len() > 40 {
            let tail = out.split_off(out.len() - 20);
            out.truncate(20);
            out.push("...".into());
            out.extend(tail);
        }
        format!("[{}]", out.join(", "))
    }
}

/// The sequence numbers in `0..posted` that `received` (strictly increasing) lacks, as ranges.
fn gaps(received: &[u64], posted: u64) -> String {
    let mut ranges = Vec::new();
    let mut expected = 0;
    for &n in received.iter().chain(std::iter::once(&posted)) {
        if n > expected {
            ranges.push(format!("{expected}..{n}"));
        }
        expected = expected.max(n + 1);
    }
    if ranges.len() > 12 {
        let more = ranges.len() - 12;
        ranges.truncate(12);
        ranges.push(format!("and {more} more"));
    }
    format!("[{}]", ranges.join(", "))
}

/// Each message once, in post order, and nothing that was not posted.
fn check_order(received: &[u64], posted: u64) -> Result<(), String> {
    if let Some(w) = received.windows(2).find(|w| w[1] <= w[0]) {
        let what = if w[1] == w[0] {
            "delivered twice"
        } else {
            "out of order"
        };
        return Err(format!("message {} after {}: {what}", w[1], w[0]));
    }
    match received.last() {
        Some(&last) if last >= posted => Err(format!(
            "message {last} received, but only {posted} were posted"
        )),
        _ => Ok(()),
    }
}

/// The end of a fault test: waits until both buses received messages posted `extra` after
/// `from`, stops the poster, flushes A, and checks both buses' accounting; returns
/// `(posted, refused, on A, on B)`.
async fn finish_and_account(
    what: &str,
    poster: Poster,
    (a, got_a, log_a): (&Bus, &Received, &EventLog),
    (b, got_b, log_b): (&Bus, &Received, &EventLog),
    from: u64,
    extra: u64,
) -> (u64, u64, (u64, u64, u64), (u64, u64, u64)) {
    wait_until(what, DEADLINE, || {
        got_b.last().is_some_and(|n| n >= from + extra)
            && got_a.last().is_some_and(|n| n >= from + extra)
    })
    .await;
    let (posted, refused) = poster.finish().await;
    flush(a).await;
    assert_eq!(a.stats().global_posted, posted);
    let on_b = assert_accounted("B", b, got_b, log_b, posted).await;
    let on_a = assert_accounted("A", a, got_a, log_a, posted).await;
    (posted, refused, on_a, on_b)
}

/// Waits until `bus` has received or reported missed every one of the `posted` messages, then
/// checks the accounting is exact: each message once and in order, or counted in
/// `global_missed`, and the `MessagesMissed` events add up to `global_missed`. Returns what it
/// saw: (received, missed, duplicates dropped).
async fn assert_accounted(
    name: &str,
    bus: &Bus,
    received: &Received,
    log: &EventLog,
    posted: u64,
) -> (u64, u64, u64) {
    let settled = eventually(ACCOUNTING_DEADLINE, || {
        received.len() as u64 + bus.stats().global_missed >= posted
    })
    .await;
    // A frame's messages are counted in `global_received` once its listeners have run: the
    // last count may lag the listener by a moment.
    eventually(DEADLINE, || {
        bus.stats().global_received >= received.len() as u64
    })
    .await;
    let stats = bus.stats();
    let values = received.snapshot();
    let got = values.len() as u64;
    let context = || {
        format!(
            "{name}: posted {posted}, received {got}, missing {}; {stats:?}; events {}",
            gaps(&values, posted),
            log.summary()
        )
    };
    assert!(
        settled,
        "timed out after {ACCOUNTING_DEADLINE:?}: received + missed < posted: {}",
        context()
    );
    if let Err(error) = check_order(&values, posted) {
        panic!("{error}: {}", context());
    }
    assert_eq!(
        got + stats.global_missed,
        posted,
        "received + missed == posted: {}",
        context()
    );
    assert_eq!(
        stats.global_received,
        got,
        "global_received counts what reached the listener: {}",
        context()
    );
    assert_eq!(stats.global_decode_errors, 0, "{}", context());
    let reported = eventually(DEADLINE, || log.missed_reported() >= stats.global_missed).await;
    assert!(
        reported && log.missed_reported() == stats.global_missed,
        "MessagesMissed events add up to global_missed ({} reported): {}",
        log.missed_reported(),
        context()
    );
    (got, stats.global_missed, stats.global_duplicates)
}

/// Posts 0, 1, 2, ... (u64) on `channel` from a task, `BURST` every millisecond, until
/// stopped. A post refused with `Backpressure` is counted and retried later with the same
/// number; any other error fails the test.
struct Poster {
    stop: Arc<AtomicBool>,
    posted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Poster {
    fn start(bus: Bus, channel: &'static str) -> Poster {
        let stop = Arc::new(AtomicBool::new(false));
        let posted = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, posted, refused) = (stop.clone(), posted.clone(), refused.clone());
            async move {
                let mut next = 0u64;
                while !stop.load(SeqCst) {
                    for _ in 0..BURST {
                        match bus
                            .messages()
                            .post_message(channel, next, MessageScope::Global)
                        {
                            Ok(delivery) => {
                                assert!(delivery.is_global());
                                next += 1;
                                posted.store(next, SeqCst);
                            }
                            Err(PostError::Backpressure) => {
                                refused.fetch_add(1, SeqCst);
                                break;
                            }
                            Err(other) => panic!("global post of {next} failed: {other}"),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        Poster {
            stop,
            posted,
            refused,
            task,
        }
    }

    fn posted(&self) -> u64 {
        self.posted.load(SeqCst)
    }

    fn refused(&self) -> u64 {
        self.refused.load(SeqCst)
    }

    /// Stops posting; returns (messages posted, posts refused with Backpressure).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, SeqCst);
        let (posted, refused) = (self.posted.clone(), self.refused.clone());
        self.task.await.expect("the poster task");
        (posted.load(SeqCst), refused.load(SeqCst))
    }
}

/// Buses A and B on one server, both listening for numbered `u64`s on one channel,
/// subscribed, and recording their events: the setup of most fault tests.
struct Pair {
    a: Bus,
    b: Bus,
    log_a: EventLog,
    log_b: EventLog,
    got_a: Received,
    got_b: Received,
}

impl Pair {
    async fn listening(server: &RedisServer, channel: &str, outage_buffer: usize) -> Pair {
        Pair::listening_with(server, channel, outage_buffer, None).await
    }

    /// With a retransmit window of `window` messages instead of the default (K01).
    async fn listening_with(
        server: &RedisServer,
        channel: &str,
        outage_buffer: usize,
        window: Option<usize>,
    ) -> Pair {
        let builder = || {
            let builder = Bus::builder()
                .redis_url(server.url())
                .outage_buffer(outage_buffer);
            match window {
                Some(window) => builder.repair_window(window, 1 << 20),
                None => builder,
            }
        };
        let a = build(builder()).await;
        let b = build(builder()).await;
        let (log_a, log_b) = (EventLog::record(&a), EventLog::record(&b));
        let got_a = Received::listen(&a, channel, |n: &u64| *n);
        let got_b = Received::listen(&b, channel, |n: &u64| *n);
        ready(&a).await;
        ready(&b).await;
        Pair {
            a,
            b,
            log_a,
            log_b,
            got_a,
            got_b,
        }
    }
}

// ---- the tests ------------------------------------------------------------------------------

/// G07, G08, G06: redis-server is SIGKILLed while bus A posts a numbered stream, and started
/// again on the same port. Both buses report the outage and the recovery by themselves, A's
/// posts are held (up to `outage_buffer`, then refused with Backpressure) and sent after the
/// reconnect, and both A and B account for every message: received once in order, or missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_redis_mid_stream() {
    const CHANNEL: &str = "mid-stream";
    const OUTAGE_BUFFER: usize = 2_000;
    let started = Instant::now();
    let mut server = RedisServer::start();
    let Pair {
        a,
        b,
        log_a,
        log_b,
        got_a,
        got_b,
    } = Pair::listening(&server, CHANNEL, OUTAGE_BUFFER).await;
    assert_eq!(blocking(|| numsub(&server, CHANNEL)), 2);

    let poster = Poster::start(a.clone(), CHANNEL);
    wait_until("B receives the stream", DEADLINE, || got_b.len() >= 1_000).await;

    let (mark_a, mark_b) = (log_a.mark(), log_b.mark());
    blocking(|| server.stop());
    let killed_at = poster.posted();
    wait_until("both buses report Disconnected", DEADLINE, || {
        log_a.disconnected_since(mark_a) && log_b.disconnected_since(mark_b)
    })
    .await;
    // G07: posts are held while Redis is down, up to outage_buffer; past it they are refused.
    wait_until(
        "a post is refused with Backpressure once outage_buffer posts are held",
        DEADLINE,
        || poster.refused() > 0,
    )
    .await;
    let held = a.stats().global_buffered;
    assert!(
        held > 0 && held <= OUTAGE_BUFFER as u64,
        "global_buffered while Redis is down: {held}"
    );
    let refused_while_down = poster.refused();
    let posted_while_down = poster.posted();

    let outage = Instant::now();
    blocking(|| server.restart());
    wait_until(
        "both buses report Reconnected after Disconnected",
        DEADLINE,
        || log_a.recovered_since(mark_a) && log_b.recovered_since(mark_b),
    )
    .await;
    let recovery = outage.elapsed();
    wait_numsub(&server, CHANNEL, 2).await;
    let resumed_at = poster.posted();
    let (posted, refused, on_a, on_b) = finish_and_account(
        "A and B receive messages posted after the reconnect",
        poster,
        (&a, &got_a, &log_a),
        (&b, &got_b, &log_b),
        resumed_at,
        1_000,
    )
    .await;
    // K02: the default retransmit window covers the outage: what a bus lost was repaired.
    assert_eq!(
        (on_a.1, on_b.1),
        (0, 0),
        "missed on A and B with repair on; B (received, missed, duplicates) {on_b:?}"
    );
    eprintln!(
        "kill_and_restart_redis_mid_stream: {:?}; posted {posted} (killed at {killed_at}, \
         {posted_while_down} when restarted, held {held}, Backpressure {refused_while_down} \
         before restart, {refused} in all); restart to Reconnected {recovery:?}; \
         B (received, missed, duplicates) {on_b:?}; A {on_a:?}; events B {}",
        started.elapsed(),
        log_b.summary()
    );
    shutdown(&a).await;
    shutdown(&b).await;
}

/// G08, G06: `CLIENT KILL TYPE pubsub` cuts every subscriber connection while A posts. Both
/// buses reconnect and re-subscribe by themselves (PUBSUB NUMSUB back to 2), emit
/// Reconnected, and account for every message. Done twice: a second cut after a recovery is
/// handled like the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_type_pubsub() {
    let (on_a, on_b) = client_kill_rounds(None).await;
    // K02: what the cuts lost was repaired from A's retransmit window.
    assert_eq!((on_a.1, on_b.1), (0, 0), "missed on A and B with repair on");
}

/// The same with a retransmit window of 10 messages (K02): what the window no longer has is
/// counted missed, and the accounting stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_type_pubsub_with_a_tiny_window() {
    client_kill_rounds(Some(10)).await;
}

/// Two rounds of `CLIENT KILL TYPE pubsub` while A posts, with repair's default window or
/// one of `window` messages; returns A's and B's (received, missed, duplicates).
async fn client_kill_rounds(window: Option<usize>) -> ((u64, u64, u64), (u64, u64, u64)) {
    const CHANNEL: &str = "killed-subscribers";
    let started = Instant::now();
    let server = RedisServer::start();
    let Pair {
        a,
        b,
        log_a,
        log_b,
        got_a,
        got_b,
    } = Pair::listening_with(&server, CHANNEL, 10_000, window).await;

    let poster = Poster::start(a.clone(), CHANNEL);
    let mut rounds = Vec::new();
    for round in 0..2 {
        let at = poster.posted();
        wait_until("B receives the stream", DEADLINE, || {
            got_b.last().is_some_and(|n| n >= at + 500)
        })
        .await;
        let before = blocking(|| pubsub_client_ids(&server));
        let (mark_a, mark_b) = (log_a.mark(), log_b.mark());
        let killed: u64 = blocking(|| server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]))
            .parse()
            .expect("CLIENT KILL replies with a count");
        assert!(
            killed >= 2,
            "round {round}: CLIENT KILL TYPE pubsub killed {killed} connections (pubsub \
             clients before: {before:?}); both buses' subscribers were expected"
        );
        let cut = Instant::now();
        wait_until(
            "both buses report Reconnected after Disconnected",
            DEADLINE,
            || log_a.recovered_since(mark_a) && log_b.recovered_since(mark_b),
        )
        .await;
        wait_numsub(&server, CHANNEL, 2).await;
        let after = blocking(|| pubsub_client_ids(&server));
        assert!(
            after.iter().all(|id| !before.contains(id)),
            "new subscriber connections: before {before:?}, after {after:?}"
        );
        rounds.push((killed, cut.elapsed()));
    }
    let at = poster.posted();
    let (posted, refused, on_a, on_b) = finish_and_account(
        "A and B receive messages posted after the last cut",
        poster,
        (&a, &got_a, &log_a),
        (&b, &got_b, &log_b),
        at,
        500,
    )
    .await;
    eprintln!(
        "client_kill_type_pubsub (window {window:?}): {:?}; posted {posted} (Backpressure {refused}); rounds \
         (killed, cut to re-subscribed) {rounds:?}; B (received, missed, duplicates) {on_b:?}; \
         A {on_a:?}; events B {}",
        started.elapsed(),
        log_b.summary()
    );
    shutdown(&a).await;
    shutdown(&b).await;
    (on_a, on_b)
}

/// A message with a sequence number and a padding to make it as big as wanted.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Padded {
    seq: u64,
    pad: String,
}

fn padded(seq: u64, bytes: usize) -> Padded {
    Padded {
        seq,
        pad: "x".repeat(bytes),
    }
}

/// G08, G06: with `client-output-buffer-limit pubsub 32kb 0 0`, one 256 KiB message posted by
/// evbus itself overflows every subscriber's output buffer at once, and Redis closes those
/// connections (its log says so, and the pub/sub client ids change). Both buses reconnect and
/// re-subscribe by themselves, the lost message is reported missed once a later one arrives,
/// and small messages flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_cut_off_by_output_buffer_limit() {
    const CHANNEL: &str = "overflowing";
    const BIG: usize = 256 * 1024;
    let started = Instant::now();
    let server = RedisServer::start_with(&["--client-output-buffer-limit", "pubsub 32kb 0 0"]);
    let limits = blocking(|| server.cli(&["CONFIG", "GET", "client-output-buffer-limit"]));
    assert!(limits.contains("pubsub 32768 0 0"), "{limits}");
    let builder = || {
        Bus::builder()
            .redis_url(server.url())
            .max_message_bytes(1 << 20)
    };
    let a = build(builder()).await;
    let b = build(builder()).await;
    let (log_a, log_b) = (EventLog::record(&a), EventLog::record(&b));
    let got_a = Received::listen(&a, CHANNEL, |m: &Padded| m.seq);
    let got_b = Received::listen(&b, CHANNEL, |m: &Padded| m.seq);
    ready(&a).await;
    ready(&b).await;

    let mut seq = 0;
    for _ in 0..50 {
        global(&a, CHANNEL, padded(seq, 100));
        seq += 1;
    }
    flush(&a).await;
    wait_until("A and B receive the small messages", DEADLINE, || {
        got_a.len() >= 50 && got_b.len() >= 50
    })
    .await;

    let before = blocking(|| pubsub_client_ids(&server));
    let (mark_a, mark_b) = (log_a.mark(), log_b.mark());
    let big = seq;
    let delivery = global(&a, CHANNEL, padded(big, BIG));
    seq += 1;
    tokio::time::timeout(DEADLINE, delivery.into_future())
        .await
        .expect("the big PUBLISH is acknowledged in time")
        .expect("Redis accepts the big PUBLISH: only its subscribers are limited");
    let cut = Instant::now();
    wait_until(
        "redis-server logs that it closed clients over the output buffer limit",
        DEADLINE,
        || {
            server
                .log()
                .matches("for overcoming of output buffer limits")
                .count()
                >= 2
        },
    )
    .await;
    wait_until(
        "both buses report Reconnected after Disconnected",
        DEADLINE,
        || log_a.recovered_since(mark_a) && log_b.recovered_since(mark_b),
    )
    .await;
    wait_numsub(&server, CHANNEL, 2).await;
    let recovery = cut.elapsed();
    let after = blocking(|| pubsub_client_ids(&server));
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "new subscriber connections: before {before:?}, after {after:?}"
    );

    for _ in 0..50 {
        global(&a, CHANNEL, padded(seq, 100));
        seq += 1;
    }
    flush(&a).await;
    let on_b = assert_accounted("B", &b, &got_b, &log_b, seq).await;
    let on_a = assert_accounted("A", &a, &got_a, &log_a, seq).await;
    // Redis closed the connections without writing the big message: it was lost, and that
    // must have been reported, not silent.
    for (name, got, missed) in [("A", &got_a, on_a.1), ("B", &got_b, on_b.1)] {
        assert!(
            !got.snapshot().contains(&big) && missed >= 1,
            "{name}: the message that overflowed the buffer is reported missed (missed {missed})"
        );
    }
    eprintln!(
        "subscriber_cut_off_by_output_buffer_limit: {:?}; pubsub ids {before:?} -> {after:?}; \
         cut to re-subscribed {recovery:?}; B (received, missed, duplicates) {on_b:?}; A {on_a:?}; \
         events B {}",
        started.elapsed(),
        log_b.summary()
    );
    shutdown(&a).await;
    shutdown(&b).await;
}

/// G06: frames that Redis delivers again (captured raw, then PUBLISHed twice more each, the
/// second time in reverse order) are dropped as duplicates: each message reaches the listener
/// once, in order, `global_duplicates` counts every replayed message, nothing is missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_after_replay_are_dropped() {
    const CHANNEL: &str = "replayed";
    const END: &str = "replayed-end";
    const MESSAGES: u64 = 30;
    let started = Instant::now();
    let server = RedisServer::start();
    let mut raw = blocking(|| RawSubscriber::connect(&server, &[CHANNEL, END]));
    let a = connect(&server, 1_000).await;
    // Some alone in their frame, the rest in a burst (batched as the publisher sees fit).
    for n in 0..10u64 {
        delivered(global(&a, CHANNEL, n)).await;
    }
    for n in 10..MESSAGES {
        global(&a, CHANNEL, n);
    }
    flush(&a).await;
    // A's PUBLISHes reach Redis in order on one connection: the frame on END comes last.
    global(&a, END, 0u64);
    flush(&a).await;
    let frames: Vec<Vec<u8>> = blocking(|| {
        let mut frames = Vec::new();
        loop {
            match raw.next_message(DEADLINE) {
                Some((channel, payload)) if channel == CHANNEL => frames.push(payload),
                Some(_) => return frames,
                None => panic!("the frames did not arrive at the raw subscriber in time"),
            }
        }
    });
    assert!(!frames.is_empty());

    let b = connect(&server, 1_000).await;
    let log_b = EventLog::record(&b);
    let got_b = Received::listen(&b, CHANNEL, |n: &u64| *n);
    ready(&b).await;
    blocking(|| {
        for frame in &frames {
            for _ in 0..2 {
                assert_eq!(
                    server.publish_raw(CHANNEL, frame),
                    2,
                    "B and the raw subscriber"
                );
            }
        }
        for frame in frames.iter().rev() {
            server.publish_raw(CHANNEL, frame);
        }
    });
    // A fresh message after every replay: once B has it, B has handled every replay.
    global(&a, CHANNEL, MESSAGES);
    flush(&a).await;
    wait_until("B receives the fresh message", DEADLINE, || {
        got_b.last() == Some(MESSAGES)
    })
    .await;
    let stats = stats_until(&b, "B counted the fresh message", |s| {
        s.global_received > MESSAGES
    })
    .await;
    let context = format!(
        "{} frames; received {:?}; {stats:?}; events {}",
        frames.len(),
        got_b.snapshot(),
        log_b.summary()
    );
    assert_eq!(
        got_b.snapshot(),
        (0..=MESSAGES).collect::<Vec<_>>(),
        "{context}"
    );
    assert_eq!(
        stats.global_duplicates,
        2 * MESSAGES,
        "every replayed message counted as a duplicate: {context}"
    );
    assert_eq!(stats.global_missed, 0, "{context}");
    assert_eq!(stats.global_decode_errors, 0, "{context}");
    assert_eq!(stats.global_received, MESSAGES + 1, "{context}");
    assert_eq!(log_b.missed_reported(), 0, "{context}");
    eprintln!(
        "duplicates_after_replay_are_dropped: {:?}; {} frames for {MESSAGES} messages, \
         duplicates {}",
        started.elapsed(),
        frames.len(),
        stats.global_duplicates
    );
    shutdown(&a).await;
    shutdown(&b).await;
}

/// G07, G08: while redis-server is down, A accepts exactly `outage_buffer` global posts and
/// refuses the next with Backpressure; after the restart the held posts are sent in order and
/// each Delivery resolves Ok. B, which re-subscribes on its own schedule, receives them in
/// order or, if its subscription came back after they were sent, reports them missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_posts_survive_an_outage_in_order() {
    const CHANNEL: &str = "held";
    const HELD: u64 = 200;
    let started = Instant::now();
    let mut server = RedisServer::start();
    let Pair {
        a,
        b,
        log_a,
        log_b,
        got_a,
        got_b,
    } = Pair::listening(&server, CHANNEL, HELD as usize).await;
    // B must know A's sequence before the outage, or a loss of the first held posts would be
    // undetectable (a gap shows only between two messages it has).
    let mut seq = 0;
    for _ in 0..10 {
        global(&a, CHANNEL, seq);
        seq += 1;
    }
    flush(&a).await;
    wait_until("A and B receive the first messages", DEADLINE, || {
        got_a.len() >= 10 && got_b.len() >= 10
    })
    .await;

    let (mark_a, mark_b) = (log_a.mark(), log_b.mark());
    blocking(|| server.stop());
    wait_until("both buses report Disconnected", DEADLINE, || {
        log_a.disconnected_since(mark_a) && log_b.disconnected_since(mark_b)
    })
    .await;
    let mut deliveries = Vec::new();
    for _ in 0..HELD {
        deliveries.push(global(&a, CHANNEL, seq));
        seq += 1;
    }
    assert_eq!(
        a.messages()
            .post_message(CHANNEL, seq, MessageScope::Global)
            .unwrap_err(),
        PostError::Backpressure,
        "the post past outage_buffer is refused"
    );
    assert_eq!(a.stats().global_buffered, HELD, "{:?}", a.stats());

    blocking(|| server.restart());
    wait_until(
        "both buses report Reconnected after Disconnected",
        DEADLINE,
        || log_a.recovered_since(mark_a) && log_b.recovered_since(mark_b),
    )
    .await;
    for (n, delivery) in deliveries.into_iter().enumerate() {
        tokio::time::timeout(DEADLINE, delivery.into_future())
            .await
            .unwrap_or_else(|_| panic!("held post {n} not acknowledged in time"))
            .unwrap_or_else(|e| panic!("held post {n} failed: {e}"));
    }
    flush(&a).await;
    assert_eq!(a.stats().global_buffered, 0);
    wait_numsub(&server, CHANNEL, 2).await;
    // A later message closes any gap at the end of the held posts.
    global(&a, CHANNEL, seq);
    seq += 1;
    flush(&a).await;
    let on_b = assert_accounted("B", &b, &got_b, &log_b, seq).await;
    let on_a = assert_accounted("A", &a, &got_a, &log_a, seq).await;
    eprintln!(
        "held_posts_survive_an_outage_in_order: {:?}; posted {seq}; B (received, missed, \
         duplicates) {on_b:?}; A {on_a:?}; events B {}",
        started.elapsed(),
        log_b.summary()
    );
    shutdown(&a).await;
    shutdown(&b).await;
}

/// G07, G08, G04: an outage longer than the bus's connection and command timeouts (5 s),
/// during which B removes its listener of one channel and adds one on another, and A posts.
/// `subscriptions_ready` waits while Redis is down; after the restart B's subscriptions are
/// exactly its listeners' channels (the removed one is not restored), the held posts are all
/// acknowledged, and the accounting is exact. Messages are numbered across the three channels
/// (posted one channel at a time, with a flush in between), so one check covers them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_changes_and_posts_during_a_long_outage() {
    const KEPT: &str = "long-outage-kept";
    const DROPPED: &str = "long-outage-dropped";
    const ADDED: &str = "long-outage-added";
    const OUTAGE: Duration = Duration::from_secs(6);
    let started = Instant::now();
    let mut server = RedisServer::start();
    let a = connect(&server, 1_000).await;
    let b = connect(&server, 1_000).await;
    let (log_a, log_b) = (EventLog::record(&a), EventLog::record(&b));
    let got = Received::listen(&b, KEPT, |n: &u64| *n);
    let dropped_calls = Arc::new(AtomicU64::new(0));
    let dropped_id = b.messages().add_listener(DROPPED, {
        let (calls, sink) = (dropped_calls.clone(), got.0.clone());
        move |n: &u64| {
            calls.fetch_add(1, SeqCst);
            sink.lock().unwrap().push(*n);
        }
    });
    ready(&b).await;
    let mut seq = 0;
    for _ in 0..5 {
        global(&a, KEPT, seq);
        seq += 1;
    }
    flush(&a).await;
    // The two channels are delivered by different dispatch threads, in no order between
    // them: DROPPED's message goes out once KEPT's are in, for this one log to be in order.
    wait_until("B gets KEPT's first five", DEADLINE, || got.len() >= 5).await;
    global(&a, DROPPED, seq);
    seq += 1;
    flush(&a).await;
    let first = eventually(DEADLINE, || got.len() >= 6).await;
    assert!(
        first,
        "B receives the first messages: got {:?}, NUMSUB {KEPT} {}, {DROPPED} {}; B {:?}; A \
         {:?}; events B {}",
        got.snapshot(),
        blocking(|| numsub(&server, KEPT)),
        blocking(|| numsub(&server, DROPPED)),
        b.stats(),
        a.stats(),
        log_b.summary()
    );
    assert_eq!(
        got.snapshot(),
        (0..6).collect::<Vec<_>>(),
        "{:?}",
        b.stats()
    );

    let (mark_a, mark_b) = (log_a.mark(), log_b.mark());
    blocking(|| server.stop());
    wait_until("both buses report Disconnected", DEADLINE, || {
        log_a.disconnected_since(mark_a) && log_b.disconnected_since(mark_b)
    })
    .await;
    // B's listeners change while Redis is down: DROPPED loses its only receiver, ADDED gets
    // its first.
    assert!(b.messages().remove_listener(DROPPED, dropped_id));
    b.messages().add_listener(ADDED, {
        let sink = got.0.clone();
        move |n: &u64| sink.lock().unwrap().push(*n)
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.subscriptions_ready())
            .await
            .is_err(),
        "subscriptions_ready() waits while Redis is down"
    );
    let mut deliveries = Vec::new();
    for _ in 0..100 {
        deliveries.push(global(&a, KEPT, seq));
        seq += 1;
    }
    tokio::time::sleep(OUTAGE).await;

    // MONITOR from right after the restart: the buses reconnect up to a second later.
    let monitor = blocking(|| {
        server.restart();
        Monitor::start(&server)
    });
    wait_until(
        "both buses report Reconnected after Disconnected",
        DEADLINE,
        || log_a.recovered_since(mark_a) && log_b.recovered_since(mark_b),
    )
    .await;
    ready(&b).await;
    for (n, delivery) in deliveries.into_iter().enumerate() {
        tokio::time::timeout(DEADLINE, delivery.into_future())
            .await
            .unwrap_or_else(|_| panic!("held post {n} not acknowledged in time"))
            .unwrap_or_else(|e| panic!("held post {n} failed: {e}"));
    }
    let subscribed = || {
        blocking(|| {
            (
                numsub(&server, KEPT),
                numsub(&server, ADDED),
                numsub(&server, DROPPED),
            )
        })
    };
    let settled = eventually(DEADLINE, || subscribed() == (1, 1, 0)).await;
    assert!(
        settled,
        "B's subscriptions after the reconnect are its listeners' channels: PUBSUB NUMSUB \
         (KEPT, ADDED, DROPPED) is {:?}, expected (1, 1, 0); B's pub/sub connection: {}; \
         (UN)SUBSCRIBEs the server received since the restart:\n{}",
        subscribed(),
        blocking(|| server.cli(&["CLIENT", "LIST", "TYPE", "pubsub"])),
        monitor.subscriptions()
    );
    // A later message on KEPT closes any gap at the end of the held posts. It waits while
    // that gap is repaired (K03), and messages of other channels do not: so ADDED's are
    // posted once it is in, for this one log of both channels to be in post order.
    global(&a, KEPT, seq);
    seq += 1;
    flush(&a).await;
    let kept_last = seq - 1;
    wait_until("B gets the last message on KEPT", DEADLINE, || {
        got.last() == Some(kept_last)
    })
    .await;
    for _ in 0..10 {
        global(&a, ADDED, seq);
        seq += 1;
    }
    flush(&a).await;
    let on_b = assert_accounted("B", &b, &got, &log_b, seq).await;
    assert_eq!(
        dropped_calls.load(SeqCst),
        1,
        "the removed listener is not called again"
    );
    // Still exactly the listeners' channels, once everything settled.
    assert_eq!(subscribed(), (1, 1, 0), "{}", monitor.subscriptions());
    eprintln!(
        "subscription_changes_and_posts_during_a_long_outage: {:?}; posted {seq}; B \
         (received, missed, duplicates) {on_b:?}; events A {}; events B {}",
        started.elapsed(),
        log_a.summary(),
        log_b.summary()
    );
    shutdown(&a).await;
    shutdown(&b).await;
}

/// G08, G06: redis-server killed and restarted five times in a row while A posts, the next
/// kill coming 0 to 300 ms after a restart, i.e. while the buses reconnect or restore their
/// subscriptions. They end connected (their last connection event is Reconnected), subscribed,
/// and account for every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_redis() {
    const CHANNEL: &str = "flapping";
    let started = Instant::now();
    let mut server = RedisServer::start();
    let Pair {
        a,
        b,
        log_a,
        log_b,
        got_a,
        got_b,
    } = Pair::listening(&server, CHANNEL, 5_000).await;
    let poster = Poster::start(a.clone(), CHANNEL);
    wait_until("B receives the stream", DEADLINE, || got_b.len() >= 500).await;
    let (mark_a, mark_b) = (log_a.mark(), log_b.mark());
    for delay in [0, 10, 40, 120, 300] {
        blocking(|| {
            server.stop();
            server.restart();
        });
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    wait_until(
        "both buses' last connection event is Reconnected",
        DEADLINE,
        || {
            log_a.recovered_since(mark_a)
                && log_b.recovered_since(mark_b)
                && log_a.back_up()
                && log_b.back_up()
        },
    )
    .await;
    wait_numsub(&server, CHANNEL, 2).await;
    let resumed_at = poster.posted();
    let (posted, refused, on_a, on_b) = finish_and_account(
        "A and B receive messages posted after the last restart",
        poster,
        (&a, &got_a, &log_a),
        (&b, &got_b, &log_b),
        resumed_at,
        500,
    )
    .await;
    assert!(
        log_a.back_up() && log_b.back_up(),
        "still connected at the end: A {}, B {}",
        log_a.summary(),
        log_b.summary()
    );
    eprintln!(
        "flapping_redis: {:?}; posted {posted} (Backpressure {refused}); B (received, missed, \
         duplicates) {on_b:?}; A {on_a:?}; events A {}; events B {}",
        started.elapsed(),
        log_a.summary(),
        log_b.summary()
    );
    shutdown(&a).await;
    shutdown(&b).await;
}
