//! What an operator sees in the logs: the bus's `tracing` events (target `evbus`), their
//! levels and structured fields, for what happens on the global path: a refused payload, a
//! dropped and restored connection, a full outage buffer, a shutdown. And nothing at all from
//! the local post path.
//!
//! A small collector (below) records every event; it is the process's global one, so the
//! events of the buses' own threads reach it. One test drives the whole scenario, so that no
//! other test's events interleave with it; the local-path test collects on its own thread only.

mod support;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};

use evbus::{Bus, MessageScope, PostError};
use support::bus::{blocking, build, delivered, global, ready, recorder, wait_until, DEADLINE};
use support::redis::RedisServer;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// One event as recorded: level, target, and every field as text (`message` included).
#[derive(Clone, Debug)]
struct Logged {
    level: Level,
    target: String,
    fields: BTreeMap<String, String>,
}

impl Logged {
    fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Records every event into a shared log, and counts how often a callsite asked whether it
/// is enabled. Spans are not used by evbus.
#[derive(Clone, Default)]
struct Collector {
    log: Arc<Mutex<Vec<Logged>>>,
    asked: Arc<AtomicUsize>,
}

impl Collector {
    /// The `evbus` events recorded so far.
    fn evbus(&self) -> Vec<Logged> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|e| e.target == "evbus")
            .cloned()
            .collect()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl Subscriber for Collector {
    /// Every callsite asks `enabled` each time, so that `asked` counts them all.
    fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        self.asked.fetch_add(1, SeqCst);
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.log.lock().unwrap().push(Logged {
            level: *event.metadata().level(),
            target: event.metadata().target().to_string(),
            fields,
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// The process's collector, installed once.
fn collector() -> &'static Collector {
    static GLOBAL: OnceLock<Collector> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let collector = Collector::default();
        tracing::subscriber::set_global_default(collector.clone())
            .expect("no other global subscriber in this test binary");
        collector
    })
}

/// Waits until an `evbus` event at `level` whose message contains `text` was recorded, and
/// returns it.
async fn logged(collector: &Collector, level: Level, text: &str) -> Logged {
    let find = || {
        collector
            .evbus()
            .into_iter()
            .find(|e| e.level == level && e.message().contains(text))
    };
    wait_until(
        &format!("a {level} event saying {text:?}"),
        DEADLINE,
        || find().is_some(),
    )
    .await;
    find().unwrap()
}

/// A refused payload is a `warn` naming its channel and reason; a connection Redis drops is
/// a `warn`, the resubscription (with how many channels) and the recovery `info`; a full
/// outage buffer is one `warn` however many posts it refuses, and one `info` with their
/// number when posts are taken again; a clean shutdown is an `info`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_path_logs_what_happened_at_an_operators_levels() {
    let collector = collector();
    let mut server = RedisServer::start();
    let bus = build(Bus::builder().redis_url(server.url()).outage_buffer(3)).await;
    let lines = recorder::<String>(bus.messages(), "observed");
    ready(&bus).await;

    // A payload that is not a frame.
    server.publish_raw(
        "observed",
        b"not an evbus frame, but long enough for a header",
    );
    let refused = logged(collector, Level::WARN, "was refused").await;
    assert_eq!(refused.field("channel"), Some("observed"), "{refused:?}");
    assert!(
        refused.field("reason").is_some_and(|r| r.contains("EVB")),
        "the reason says what was wrong: {refused:?}"
    );

    // The subscriber's connection killed by Redis: lost, resubscribed, recovered.
    blocking(|| server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]));
    logged(collector, Level::WARN, "lost a Redis connection").await;
    let resubscribed = logged(collector, Level::INFO, "resubscribing").await;
    assert_eq!(
        resubscribed.field("channels"),
        Some("1"),
        "{resubscribed:?}"
    );
    logged(collector, Level::INFO, "subscriptions restored").await;
    delivered(global(&bus, "observed", "after".to_string())).await;
    wait_until("the post after the reconnect arrived", DEADLINE, || {
        support::bus::snapshot(&lines) == ["after"]
    })
    .await;

    // Redis down: three posts wait in the outage buffer, the next ten are refused, and the
    // log says so once.
    blocking(|| server.stop());
    let mut held = Vec::new();
    let mut refusals = 0;
    for i in 0..13 {
        match bus
            .messages()
            .post_message("observed", format!("held {i}"), MessageScope::Global)
        {
            Ok(delivery) => held.push(delivery),
            Err(PostError::Backpressure) => refusals += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((held.len(), refusals), (3, 10));
    let full = collector
        .evbus()
        .into_iter()
        .filter(|e| e.message().contains("outage buffer is full"))
        .collect::<Vec<_>>();
    assert_eq!(full.len(), 1, "one warning for ten refusals: {full:?}");
    assert_eq!(full[0].level, Level::WARN);
    assert_eq!(full[0].field("waiting"), Some("3"), "{full:?}");

    blocking(|| server.restart());
    for delivery in held {
        delivered(delivery).await;
    }
    delivered(global(&bus, "observed", "taken again".to_string())).await;
    let again = logged(collector, Level::INFO, "takes global posts again").await;
    assert_eq!(again.field("refused"), Some("10"), "{again:?}");

    support::bus::shutdown(&bus).await;
    logged(collector, Level::INFO, "every global post was acknowledged").await;
    assert!(
        collector.evbus().iter().all(|e| e.level <= Level::INFO),
        "nothing below info by default: no per-message logging"
    );
}

/// The local post path never calls into `tracing`: 10,000 posts to a listener and a stream
/// leave no event, not even a disabled one asking the collector whether it is enabled.
#[test]
fn the_local_post_path_traces_nothing() {
    let local = Collector::default();
    tracing::subscriber::with_default(local.clone(), || {
        let bus = Bus::local();
        let session = bus.session();
        session.messages().add_listener("quiet", |_: &u64| {});
        let mut stream = session.messages().create_stream::<u64>("quiet");
        let channel = bus.channel::<u64>("quiet");
        for i in 0..5_000u64 {
            bus.messages()
                .post_message("quiet", i, MessageScope::Local)
                .unwrap();
            channel.post(i, MessageScope::Local).unwrap();
        }
        let mut taken = 0;
        while stream.try_recv().is_some() {
            taken += 1;
        }
        assert!(taken > 0);
    });
    assert_eq!(local.asked.load(SeqCst), 0, "the local path asked tracing");
    assert!(
        local.log.lock().unwrap().is_empty(),
        "the local path traced"
    );
}
