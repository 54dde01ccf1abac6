//! `rediss://`: a bus talks to Redis over TLS (the `tls` feature). Run by CI as
//! `cargo test --features tls --test tls`; without the feature this file is empty, and
//! `tests/rules.rs` checks that a `rediss://` URL is refused with a message naming the feature.
//!
//! The test makes its own certificate authority and server certificate with `openssl`, starts
//! a `redis-server` with a TLS port beside its plain one, and points rustls at the authority
//! through `SSL_CERT_FILE` (this test binary holds only this test, so setting it is safe).
#![cfg(feature = "tls")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use evbus::{Bus, MessageScope};
use support::bus::{build, flush, ready, shutdown, wait_until};
use support::cluster::make_certificates;
use support::redis::{free_port, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_posts_and_receives_over_tls() {
    let dir = std::env::temp_dir().join(format!("evbus-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let tls_port = free_port().to_string();
    let (cert, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
    let server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    std::env::set_var("SSL_CERT_FILE", &ca);

    let url = format!("rediss://127.0.0.1:{tls_port}");
    let bus = build(Bus::builder().redis_url(&url)).await;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    bus.messages()
        .add_listener("secure", move |n: &u64| _ = counter.fetch_add(*n, SeqCst));
    ready(&bus).await;
    for n in 1..=10u64 {
        bus.messages()
            .post_message("secure", n, MessageScope::Global)
            .unwrap();
    }
    flush(&bus).await;
    wait_until(
        "the posts to come back over TLS",
        Duration::from_secs(30),
        || received.load(SeqCst) == 55,
    )
    .await;
    // Both of the bus's connections (publisher, subscriber) are on the TLS port.
    let clients = server.cli(&["CLIENT", "LIST"]);
    let on_tls = format!("laddr=127.0.0.1:{tls_port} ");
    assert_eq!(clients.matches(&on_tls).count(), 2, "{clients}");
    shutdown(&bus).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
