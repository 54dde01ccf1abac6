//! Repair (K01 to K05): each bus keeps what it published in a bounded retransmit window, and
//! a receiver that finds a gap asks the origin for it through Redis instead of only
//! reporting it.
//!
//! Two kinds of test. With two real buses, a receiver is cut off from Redis while the other
//! posts, so that it loses exactly what was posted meanwhile, and must get all of it back,
//! once and in order. With a *fake origin* (frames and repair messages written by hand from
//! the documented layouts, `src/wire/frame.rs` and `src/wire/control.rs`, and published
//! raw), the test plays the origin's side itself, so that it sees each request and decides
//! when, or whether, to answer: what waits, and for how long (K03), announcements (K04), and
//! hostile input (K05).

mod support;

use std::time::Duration;

use evbus::{Bus, BusBuilder};
use support::bus::{
    blocking, build, flush, global, ready, recorder, shutdown, snapshot, stats_until, wait_until,
    DEADLINE,
};
use support::redis::{RawSubscriber, RedisServer};
use support::wire::string_frame;

// ---- the wire, by hand -----------------------------------------------------------------------

fn hex(origin: &[u8; 16]) -> String {
    origin.iter().map(|b| format!("{b:02x}")).collect()
}

/// The control channel of the bus (or fake origin) `origin`, with no namespace.
fn control_channel(origin: &[u8; 16]) -> String {
    format!("__evbus:repair:{}", hex(origin))
}

fn put_channel(out: &mut Vec<u8>, channel: &str) {
    out.extend_from_slice(&(channel.len() as u16).to_le_bytes());
    out.extend_from_slice(channel.as_bytes());
}

/// A repair request (kind 1), unsigned.
fn request(asker: [u8; 16], channel: &str, from: u64, to: u64) -> Vec<u8> {
    let mut out = b"EVC\x01\x01".to_vec();
    out.extend_from_slice(&asker);
    put_channel(&mut out, channel);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&to.to_le_bytes());
    out
}

/// A repair answer (kind 2): `frame` sent again for `channel`.
fn answer(channel: &str, frame: &[u8]) -> Vec<u8> {
    let mut out = b"EVC\x01\x02".to_vec();
    put_channel(&mut out, channel);
    out.extend_from_slice(frame);
    out
}

/// An announcement (kind 4): `origin`'s last sequence number on the channel it is sent on.
fn announce(origin: [u8; 16], last: u64) -> Vec<u8> {
    let mut out = b"EVC\x01\x04".to_vec();
    out.extend_from_slice(&origin);
    out.extend_from_slice(&last.to_le_bytes());
    out
}

/// A request read back: (asker, channel, from, to).
fn read_request(payload: &[u8]) -> ([u8; 16], String, u64, u64) {
    assert_eq!(
        &payload[..5],
        b"EVC\x01\x01",
        "a repair request: {payload:?}"
    );
    let asker: [u8; 16] = payload[5..21].try_into().unwrap();
    let len = u16::from_le_bytes([payload[21], payload[22]]) as usize;
    let channel = String::from_utf8(payload[23..23 + len].to_vec()).unwrap();
    let at = 23 + len;
    let from = u64::from_le_bytes(payload[at..at + 8].try_into().unwrap());
    let to = u64::from_le_bytes(payload[at + 8..at + 16].try_into().unwrap());
    (asker, channel, from, to)
}

/// The next request the fake origin's control channel gets, or a panic after `DEADLINE`.
fn next_request(raw: &mut RawSubscriber) -> ([u8; 16], String, u64, u64) {
    let (_, payload) = raw
        .next_message(DEADLINE)
        .expect("the receiver asks the origin for its gap");
    read_request(&payload)
}

fn builder(server: &RedisServer) -> BusBuilder {
    Bus::builder().redis_url(server.url())
}

/// Sends RESP commands through `redis-cli --pipe`, which writes them all before it reads a
/// reply: a flood as fast as Redis takes it.
fn pipe(server: &RedisServer, commands: &[u8]) {
    use std::io::Write;
    let mut child = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(commands)
        .expect("write the commands");
    assert!(child.wait().expect("redis-cli --pipe").success());
}

// ---- K01 ------------------------------------------------------------------------------------

/// K01: whatever is posted, the window never holds more than its byte bound; the oldest
/// frames go first; with repair off nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k01_the_retransmit_window_stays_within_its_bounds() {
    const BYTES: usize = 32 * 1024;
    let server = RedisServer::start();
    // Frames of at most 1 KiB, so that the window keeps many (a frame larger than the
    // whole bound is not kept at all).
    let small = || builder(&server).max_message_bytes(1024);
    let bus = build(small().repair_window(500, BYTES)).await;
    let off = build(small().repair_window(0, 0)).await;
    ready(&bus).await;
    let mut largest = 0;
    for i in 0..20_000u64 {
        let text = "k".repeat((i % 200) as usize);
        let channel = ["k01:a", "k01:b", "k01:c"][(i % 3) as usize];
        global(&bus, channel, text.clone());
        global(&off, channel, text);
        if i % 250 == 0 {
            let held = bus.stats().global_repair_window_bytes;
            assert!(
                held <= BYTES as u64,
                "window holds {held} bytes, bound {BYTES}"
            );
            largest = largest.max(held);
        }
    }
    flush(&bus).await;
    flush(&off).await;
    let held = bus.stats().global_repair_window_bytes;
    assert!(held <= BYTES as u64 && held > 0, "{held}");
    assert!(
        largest > BYTES as u64 / 2,
        "the window filled up: {largest}"
    );
    assert_eq!(off.stats().global_repair_window_bytes, 0);
    shutdown(&bus).await;
    shutdown(&off).await;
}

// ---- K02, K04 with two real buses --------------------------------------------------------------

/// B connects as an ACL user the test can lock out, so that it is cut off for exactly as
/// long as the test wants: it loses what A posts meanwhile, and nothing else.
struct LockedOut {
    server: RedisServer,
}

impl LockedOut {
    fn start() -> LockedOut {
        let server = RedisServer::start();
        let reply = server.cli(&["ACL", "SETUSER", "b", "on", ">pw", "~*", "&*", "+@all"]);
        assert_eq!(reply.trim(), "OK", "{reply}");
        LockedOut { server }
    }

    fn url_of_b(&self) -> String {
        format!("redis://b:pw@127.0.0.1:{}", self.server.port())
    }

    /// Disables B's user and closes its connections: it cannot reconnect until `let_in`.
    fn lock_out(&self) {
        blocking(|| {
            self.server.cli(&["ACL", "SETUSER", "b", "off"]);
            self.server.cli(&["CLIENT", "KILL", "USER", "b"]);
        });
    }

    fn let_in(&self) {
        blocking(|| self.server.cli(&["ACL", "SETUSER", "b", "on"]));
    }
}

/// K02, K04: B is cut off while A posts 2,000 messages on a channel and then goes quiet. B
/// reconnects, asks A for its latest sequence number, finds the gap, asks for it, and gets
/// every message, once and in order; nothing is missed. With a window of 100 messages, A
/// resends the last 100 and says the rest is gone: received + missed == posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k02_what_a_receiver_lost_is_repaired_from_its_origin() {
    for window in [100_000, 100] {
        let locked = LockedOut::start();
        let server = &locked.server;
        // Small frames, so that a window of 100 messages keeps several.
        let a = build(
            builder(server)
                .repair_window(window, 64 << 20)
                .max_message_bytes(256),
        )
        .await;
        let b = build(Bus::builder().redis_url(locked.url_of_b())).await;
        let got = recorder::<u64>(b.messages(), "k02");
        ready(&b).await;
        for i in 0..10u64 {
            global(&a, "k02", i);
        }
        wait_until("B gets the first ten", DEADLINE, || {
            snapshot(&got).len() == 10
        })
        .await;
        locked.lock_out();
        for i in 10..2_010u64 {
            global(&a, "k02", i);
        }
        flush(&a).await;
        locked.let_in();
        let stats = stats_until(&b, "B gets or counts all 2,010", |s| {
            s.global_received + s.global_missed >= 2_010
        })
        .await;
        let values = snapshot(&got);
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "window {window}: once each, in order: {values:?}"
        );
        assert_eq!(
            values.len() as u64 + stats.global_missed,
            2_010,
            "{stats:?}"
        );
        assert_eq!(
            stats.global_repaired + stats.global_missed,
            2_000,
            "window {window}: every lost message is repaired or counted: {stats:?}"
        );
        assert!(stats.global_repair_requests >= 2, "{stats:?}");
        if window == 100_000 {
            assert_eq!(values, (0..2_010).collect::<Vec<u64>>(), "{stats:?}");
        } else {
            // The last frames that fit in 100 messages come back; the rest is gone.
            assert!(
                (50..=100).contains(&stats.global_repaired),
                "window {window}: {stats:?}"
            );
            assert_eq!(
                values[10..],
                (2_010 - stats.global_repaired..2_010).collect::<Vec<u64>>()
            );
        }
        shutdown(&a).await;
        shutdown(&b).await;
    }
}

// ---- K03, K04 against a fake origin ---------------------------------------------------------

/// K03: a frame past a gap waits while the gap is asked for; another channel of the same
/// origin does not wait; the answer is delivered, then the frame that waited, in order. A
/// gap nobody answers is given up after `repair_timeout`: counted missed, and what waited
/// is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k03_later_messages_wait_for_the_gap_and_nothing_else_does() {
    let server = RedisServer::start();
    let origin = *b"a-fake-origin-k3";
    let b = build(builder(&server).repair_timeout(Duration::from_millis(300))).await;
    let held = recorder::<String>(b.messages(), "held");
    let free = recorder::<String>(b.messages(), "free");
    ready(&b).await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &[&control_channel(&origin)]));
    server.publish_raw("held", &string_frame(origin, 1, &["a"]));
    wait_until("a arrives", DEADLINE, || snapshot(&held) == ["a"]).await;

    server.publish_raw("held", &string_frame(origin, 3, &["c"]));
    let (asker, channel, from, to) = blocking(|| next_request(&mut raw));
    assert_eq!((channel.as_str(), from, to), ("held", 2, 2));
    // Another channel goes on while "c" waits.
    server.publish_raw("free", &string_frame(origin, 1, &["x"]));
    wait_until("the other channel is not held up", DEADLINE, || {
        snapshot(&free) == ["x"]
    })
    .await;
    assert_eq!(snapshot(&held), ["a"], "c waits for b");

    server.publish_raw(
        &control_channel(&asker),
        &answer("held", &string_frame(origin, 2, &["b"])),
    );
    wait_until("b, then c", DEADLINE, || snapshot(&held) == ["a", "b", "c"]).await;
    let stats = b.stats();
    assert_eq!(
        (stats.global_repaired, stats.global_missed),
        (1, 0),
        "{stats:?}"
    );

    // Nobody answers for d: after the timeout it is missed, and e is delivered.
    server.publish_raw("held", &string_frame(origin, 5, &["e"]));
    let (_, _, from, to) = blocking(|| next_request(&mut raw));
    assert_eq!((from, to), (4, 4));
    wait_until("e, after the timeout", DEADLINE, || {
        snapshot(&held) == ["a", "b", "c", "e"]
    })
    .await;
    assert_eq!(b.stats().global_missed, 1);
    // A late answer for d is a duplicate now, never delivered out of order.
    server.publish_raw(
        &control_channel(&asker),
        &answer("held", &string_frame(origin, 4, &["d"])),
    );
    stats_until(&b, "the late d is dropped", |s| s.global_duplicates == 1).await;
    assert_eq!(snapshot(&held), ["a", "b", "c", "e"]);
    shutdown(&b).await;
}

/// K04: an origin that goes quiet announces its last sequence number, and a receiver that
/// lost the last message asks for it at once. Both sides: a real bus announces after its
/// last post, and a receiver asks a fake origin that announced a number it never got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k04_a_lost_last_message_is_asked_for_without_another_post() {
    let server = RedisServer::start();
    // A real origin announces.
    let a = build(builder(&server)).await;
    let mut data = blocking(|| RawSubscriber::connect(&server, &["k04:real"]));
    for i in 0..3u64 {
        global(&a, "k04:real", i);
    }
    flush(&a).await;
    let announced = blocking(|| loop {
        let (_, payload) = data
            .next_message(DEADLINE)
            .expect("A announces its last sequence number once it is quiet");
        if payload.starts_with(b"EVC") {
            break payload;
        }
    });
    assert_eq!(&announced[..5], b"EVC\x01\x04");
    let last = u64::from_le_bytes(announced[21..29].try_into().unwrap());
    assert_eq!(last, 3, "A posted three messages on the channel");
    assert!(
        blocking(|| data.next_message(Duration::from_millis(500))).is_none(),
        "announced once"
    );

    // A receiver asks for what an announcement shows it lost.
    let origin = *b"a-fake-origin-k4";
    let b = build(builder(&server)).await;
    let got = recorder::<String>(b.messages(), "quiet");
    ready(&b).await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &[&control_channel(&origin)]));
    server.publish_raw("quiet", &string_frame(origin, 1, &["a"]));
    wait_until("a arrives", DEADLINE, || snapshot(&got) == ["a"]).await;
    server.publish_raw("quiet", &announce(origin, 2));
    let (asker, channel, from, to) = blocking(|| next_request(&mut raw));
    assert_eq!((channel.as_str(), from, to), ("quiet", 2, 2));
    server.publish_raw(
        &control_channel(&asker),
        &answer("quiet", &string_frame(origin, 2, &["b"])),
    );
    wait_until("b is repaired", DEADLINE, || snapshot(&got) == ["a", "b"]).await;
    assert_eq!(b.stats().global_repaired, 1);
    shutdown(&a).await;
    shutdown(&b).await;
}

// ---- K05 ------------------------------------------------------------------------------------

/// K05: repair messages are untrusted. Malformed ones are counted and change nothing; one
/// request for a huge range gets at most the window; a flood of requests from one asker is
/// cut off by its rate limit and counted; with a signing key, unsigned ones are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k05_hostile_repair_messages_are_counted_and_bounded() {
    const WINDOW: usize = 50;
    let server = RedisServer::start();
    // Small frames, so that the window keeps several.
    let a = build(
        builder(&server)
            .repair_window(WINDOW, 1 << 20)
            .max_message_bytes(256),
    )
    .await;
    let got = recorder::<u64>(a.messages(), "k05");
    ready(&a).await;
    for i in 0..1_000u64 {
        global(&a, "k05", i);
    }
    flush(&a).await;
    wait_until("A hears itself", DEADLINE, || snapshot(&got).len() == 1_000).await;
    let control = blocking(|| {
        let channels = server.cli(&["PUBSUB", "CHANNELS", "__evbus:repair:*"]);
        let channels: Vec<&str> = channels.lines().collect();
        assert_eq!(channels.len(), 1, "A's control channel: {channels:?}");
        channels[0].to_string()
    });

    // Malformed: counted, nothing else.
    for bad in [&b"EVC\x01\x09"[..], b"EVC\x01\x01short", b"EVC\x07", b"EVC"] {
        server.publish_raw(&control, bad);
    }
    stats_until(&a, "four refused", |s| s.global_repair_refused == 4).await;

    // One request for everything: at most the window comes back.
    let asker = *b"a-hostile-asker!";
    let mut answers = blocking(|| RawSubscriber::connect(&server, &[&control_channel(&asker)]));
    server.publish_raw(&control, &request(asker, "k05", 1, u64::MAX - 1));
    let mut resent = 0;
    let mut gone = None;
    while let Some((_, payload)) = blocking(|| answers.next_message(Duration::from_secs(2))) {
        match payload[4] {
            2 => {
                let len = u16::from_le_bytes([payload[5], payload[6]]) as usize;
                let frame = &payload[7 + len..];
                resent += u32::from_le_bytes(frame[28..32].try_into().unwrap()) as usize;
            }
            3 => {
                let at = 5 + 16 + 2 + 3;
                let from = u64::from_le_bytes(payload[at..at + 8].try_into().unwrap());
                let to = u64::from_le_bytes(payload[at + 8..at + 16].try_into().unwrap());
                gone = Some((from, to));
            }
            kind => panic!("unexpected answer kind {kind}: {payload:?}"),
        }
    }
    eprintln!("k05: resent {resent}, gone {gone:?}");
    assert!(resent > 10 && resent <= WINDOW, "resent {resent} messages");
    assert_eq!(gone, Some((1, 1_000 - resent as u64)));

    // A flood from one asker, pipelined: past its burst, refused and counted.
    let before = a.stats().global_repair_refused;
    let flood = request(asker, "k05", 999, 1_000);
    let mut commands = Vec::new();
    for _ in 0..40_000 {
        commands.extend_from_slice(b"*3\r\n");
        for part in [&b"PUBLISH"[..], control.as_bytes(), &flood] {
            commands.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            commands.extend_from_slice(part);
            commands.extend_from_slice(b"\r\n");
        }
    }
    blocking(|| pipe(&server, &commands));
    let stats = stats_until(&a, "the flood is cut off", |s| {
        s.global_repair_refused > before
    })
    .await;
    eprintln!(
        "k05: a flood of 40,000 requests, {} refused",
        stats.global_repair_refused - before
    );
    drop(answers);

    // Signed: an unsigned request is refused as not authentic.
    let signed = build(builder(&server).signing_key(&[7; 32])).await;
    let numbers = recorder::<u64>(signed.messages(), "k05s");
    ready(&signed).await;
    global(&signed, "k05s", 1u64);
    wait_until("signed hears itself", DEADLINE, || {
        snapshot(&numbers) == [1]
    })
    .await;
    let controls = blocking(|| server.cli(&["PUBSUB", "CHANNELS", "__evbus:repair:*"]));
    let theirs = controls
        .lines()
        .find(|c| *c != control)
        .expect("the signed bus's control channel")
        .to_string();
    let rejected = signed.stats().global_rejected;
    server.publish_raw(&theirs, &request(asker, "k05s", 1, 1));
    stats_until(&signed, "the unsigned request is rejected", |s| {
        s.global_rejected == rejected + 1
    })
    .await;
    shutdown(&a).await;
    shutdown(&signed).await;
}
