//! Class names on one bus, against a real `redis-server`: one receiver type's refusal of a
//! message never keeps it from another type that reads the same class. The rule is
//! documented on `evbus::Message`.

mod support;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use evbus::{Bus, BusEvent, BusEvents, Message, Messages, WireFormat};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

use support::bus::{build, flush, global, ready, wait_until, DEADLINE};
use support::redis::RedisServer;

type Log<M> = Arc<Mutex<Vec<M>>>;

/// A listener on `channel` that records what it gets.
fn recorder<M: Message + Clone>(messages: &Messages, channel: &str) -> Log<M> {
    let log: Log<M> = Arc::default();
    let sink = log.clone();
    messages.add_listener(channel, move |m: &M| sink.lock().unwrap().push(m.clone()));
    log
}

fn snapshot<M: Clone>(log: &Log<M>) -> Vec<M> {
    log.lock().unwrap().clone()
}

/// The reason of the next `DecodeFailed` on `channel`; panics if none comes in time.
async fn decode_failure(events: &mut BusEvents, on: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, events.recv()).await {
            Ok(Some(BusEvent::DecodeFailed { channel, reason })) if channel == on => return reason,
            Ok(Some(event)) => seen.push(event),
            Ok(None) => panic!("waiting for DecodeFailed on {on}: the events ended; saw {seen:?}"),
            Err(_) => {
                panic!("waiting for DecodeFailed on {on}: not within {DEADLINE:?}; saw {seen:?}")
            }
        }
    }
}

/// Reads class "Reading" strictly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Reading {
    celsius: f64,
}

/// Reads class "Reading" tolerantly (registered under it with `BusBuilder::class_name`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ReadingView {
    celsius: Option<serde_json::Value>,
    station: Option<String>,
}

/// Writes class "Reading" in a shape that `Reading` refuses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct WrongReading {
    celsius: String,
}

/// In `format`: a message of class "Reading" that `Reading` refuses still reaches
/// `ReadingView`, whose group comes after `Reading`'s; `send`, awaited once the bus is
/// subscribed, publishes it on "readings".
async fn one_refusal_does_not_stop_another_type(
    server: &RedisServer,
    format: WireFormat,
    send: impl Future<Output = ()>,
) {
    let bus = build(
        Bus::builder()
            .redis_url(server.url())
            .wire_format(format)
            .class_name::<ReadingView>("Reading"),
    )
    .await;
    let mut events = bus.events();
    let strict = recorder::<Reading>(bus.messages(), "readings");
    let tolerant = recorder::<ReadingView>(bus.messages(), "readings");
    ready(&bus).await;

    send.await;
    wait_until(
        &format!("{format:?}: the view got the message Reading refused"),
        DEADLINE,
        || !snapshot(&tolerant).is_empty(),
    )
    .await;
    let view = ReadingView {
        celsius: Some(serde_json::Value::String("hot".into())),
        station: None,
    };
    assert_eq!(snapshot(&tolerant), [view], "{format:?}");
    assert!(snapshot(&strict).is_empty(), "{format:?}");
    // Reported once, naming the type that refused it.
    let reason = decode_failure(&mut events, "readings").await;
    assert!(
        reason.contains(std::any::type_name::<Reading>()),
        "{format:?}: {reason}"
    );
    assert_eq!(bus.stats().global_decode_errors, 1, "{format:?}");

    // Both types get a message both read.
    global(&bus, "readings", Reading { celsius: 21.5 });
    wait_until(
        &format!("{format:?}: both types got a good Reading"),
        DEADLINE,
        || snapshot(&strict).len() == 1 && snapshot(&tolerant).len() == 2,
    )
    .await;
    assert_eq!(snapshot(&strict), [Reading { celsius: 21.5 }]);
    assert_eq!(bus.stats().global_decode_errors, 1, "{format:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_types_decode_failure_does_not_stop_delivery_to_another_type() {
    let server = RedisServer::start();
    // Serverpod: the payload published raw, as another server could.
    let raw = br#"{"className":"Reading","data":{"__className__":"Reading","celsius":"hot"}}"#;
    one_refusal_does_not_stop_another_type(&server, WireFormat::Serverpod, async {
        assert_eq!(server.publish_raw("readings", raw), 1);
    })
    .await;
    // Native: posted by another bus that writes class "Reading" in another shape.
    let other = build(
        Bus::builder()
            .redis_url(server.url())
            .class_name::<WrongReading>("Reading"),
    )
    .await;
    one_refusal_does_not_stop_another_type(&server, WireFormat::Native, async {
        global(
            &other,
            "readings",
            WrongReading {
                celsius: "hot".into(),
            },
        );
        flush(&other).await;
    })
    .await;
}
