//! What an idle bus with Redis costs in memory (issue: it took ~78 MB of RSS, from fred's
//! broadcast channels sized for a reader that could fall behind; the reader now only moves
//! messages to dispatch threads, so they stay small). Its own test binary, so that nothing
//! else in the process moves the figure.

mod support;

use evbus::Bus;
use support::bus::build;
use support::redis::RedisServer;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kb * 1024
}

/// The bound: an idle bus with Redis under 8 MB of RSS.
const IDLE_BOUND: u64 = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_bus_with_redis_stays_small() {
    let server = RedisServer::start();
    // A first bus pays for what every later one shares (code pages, the runtime, TLS).
    let first = build(Bus::builder().redis_url(server.url())).await;
    let before = rss_bytes();
    let second = build(Bus::builder().redis_url(server.url())).await;
    let after = rss_bytes();
    let cost = after.saturating_sub(before);
    println!("an idle bus with Redis: {} KiB of RSS", cost / 1024);
    assert!(
        cost < IDLE_BOUND,
        "an idle bus with Redis took {cost} bytes of RSS"
    );
    drop((first, second));
}
