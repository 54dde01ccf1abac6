//! Class names on one bus, against a real `redis-server`: two types with the same name in
//! different modules (one class name on the wire) are never confused, and one receiver
//! type's refusal of a message never keeps it from another type that reads it. The rule is
//! documented on `evbus::Message` ("One type per name on a bus").

mod support;

use std::future::Future;
use std::time::Instant;

use evbus::{Bus, BusEvent, BusEvents, MessageScope, PostError, WireFormat};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

use support::bus::{
    build, flush, global, ready, recorder, snapshot, stats_until, wait_until, Log, DEADLINE,
};
use support::redis::RedisServer;

mod a {
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Event {
        pub id: u64,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Ping {
        pub seq: u64,
    }
}

mod b {
    use serde::{Deserialize, Serialize};

    /// Same name as `a::Event`, another shape.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Event {
        pub title: String,
        pub urgent: bool,
    }

    /// Same name and shape as `a::Ping`.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Ping {
        pub seq: u64,
    }
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

/// Posts a `String` marker on `channel` and waits until `marks` (a `String` recorder there)
/// has it: the bus's reader handles a channel's messages in order, so everything posted on
/// `channel` before the marker has been fully handled by then.
async fn settle(bus: &Bus, channel: &str, marks: &Log<String>, mark: &str) {
    global(bus, channel, mark.to_string());
    flush(bus).await;
    wait_until(
        &format!("marker {mark:?} arrived on {channel}"),
        DEADLINE,
        || snapshot(marks).iter().any(|m| m == mark),
    )
    .await;
}

fn names_both<A, B>(reason: &str) -> bool {
    reason.contains(std::any::type_name::<A>()) && reason.contains(std::any::type_name::<B>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_type_with_the_same_name_is_in_conflict_and_the_first_keeps_working() {
    let server = RedisServer::start();
    let bus = build(Bus::builder().redis_url(server.url())).await;
    let mut events = bus.events();
    // a::Event is the first "Event" this bus uses: it claims the class. On "ab" its group
    // comes first, on "ba" second (behind b::Event's, which refuses the message).
    let a_first = recorder::<a::Event>(bus.messages(), "ab");
    let b_second = recorder::<b::Event>(bus.messages(), "ab");
    let b_first = recorder::<b::Event>(bus.messages(), "ba");
    let a_second = recorder::<a::Event>(bus.messages(), "ba");
    ready(&bus).await;

    // a::Event's global posts reach its listeners on both channels, whatever the order.
    for (channel, log) in [("ba", &a_second), ("ab", &a_first)] {
        global(&bus, channel, a::Event { id: 7 });
        flush(&bus).await;
        wait_until(
            &format!("a::Event's listener on {channel} got the post"),
            DEADLINE,
            || snapshot(log) == [a::Event { id: 7 }],
        )
        .await;
        // b::Event's receivers on the channel got nothing: the conflict is reported, once.
        let reason = decode_failure(&mut events, channel).await;
        assert!(names_both::<a::Event, b::Event>(&reason), "{reason}");
    }

    // b::Event's global posts are refused, with a reason naming both types.
    let refused = bus.messages().post_message(
        "ab",
        b::Event {
            title: "t".into(),
            urgent: true,
        },
        MessageScope::Global,
    );
    match refused {
        Err(PostError::Encode(reason)) => {
            assert!(names_both::<a::Event, b::Event>(&reason), "{reason}");
            assert!(reason.contains("BusBuilder::class_name"), "{reason}");
        }
        other => panic!("b::Event is in conflict for \"Event\": {other:?}"),
    }
    assert!(snapshot(&b_second).is_empty() && snapshot(&b_first).is_empty());
    let stats = stats_until(&bus, "both deliveries are counted", |s| s.delivered >= 2).await;
    assert_eq!(stats.global_decode_errors, 2, "one per message: {stats:?}");
    assert_eq!(stats.delivered, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_is_never_delivered_to_another_type_of_the_same_name_and_shape() {
    let server = RedisServer::start();
    // On `x`, a::Ping claims "Ping"; on `y`, b::Ping does.
    let x = build(Bus::builder().redis_url(server.url())).await;
    let y = build(Bus::builder().redis_url(server.url())).await;
    let x_a = recorder::<a::Ping>(x.messages(), "x");
    let x_b = recorder::<b::Ping>(x.messages(), "x");
    let x_marks = recorder::<String>(x.messages(), "x");
    let y_b = recorder::<b::Ping>(y.messages(), "y");
    let y_a = recorder::<a::Ping>(y.messages(), "y");
    let y_marks = recorder::<String>(y.messages(), "y");
    ready(&x).await;
    ready(&y).await;

    // On x, a posted a::Ping reaches a::Ping's listener and never b::Ping's.
    global(&x, "x", a::Ping { seq: 1 });
    settle(&x, "x", &x_marks, "after the ping").await;
    assert_eq!(snapshot(&x_a), [a::Ping { seq: 1 }]);
    assert_eq!(snapshot(&x_b), [], "a::Ping reached b::Ping's listener");

    // On y, where b::Ping came first, a::Ping cannot be posted at all.
    let refused = y
        .messages()
        .post_message("y", a::Ping { seq: 2 }, MessageScope::Global);
    assert!(
        matches!(&refused, Err(PostError::Encode(reason)) if names_both::<a::Ping, b::Ping>(reason)),
        "{refused:?}"
    );
    global(&y, "y", b::Ping { seq: 3 });
    settle(&y, "y", &y_marks, "after the pings").await;
    assert_eq!(snapshot(&y_b), [b::Ping { seq: 3 }]);
    assert_eq!(snapshot(&y_a), [], "b::Ping reached a::Ping's listener");
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
