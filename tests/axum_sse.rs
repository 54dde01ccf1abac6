//! `examples/axum_sse.rs`, driven by a real HTTP client (hyper's HTTP/1.1 client): instances
//! of the example's server, each with a bus of its own, on one `redis-server` the test starts.
//! Each instance runs in-process on an ephemeral loopback port, with the example's own
//! `serve` (routes and graceful shutdown), so what is tested is what the example runs.
//!
//! Every wait is bounded by [`DEADLINE`] and fails naming what it waited for; nothing sleeps a
//! fixed time. Needs the `axum` feature: `cargo test --features axum --test axum_sse`.

#[allow(dead_code)] // the example's `main` is not the test's
#[path = "../examples/axum_sse.rs"]
mod example;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use evbus::{Bus, BusError, PostError, Reason};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at};

use support::bus::{blocking, build, redis_bus, wait_until, DEADLINE};
use support::redis::{numsub, RedisServer};

/// The example's channel.
const CHAT: &str = "chat";

// ---- the servers ----------------------------------------------------------------------------

/// One instance of the example's server: its bus, its address, its shutdown signal.
struct Instance {
    bus: Bus,
    addr: SocketAddr,
    signal: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Instance {
    /// Serves the example's routes on `bus`, on a free loopback port.
    async fn start(bus: Bus) -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let addr = listener.local_addr().unwrap();
        let (signal, signalled) = oneshot::channel::<()>();
        let signalled = async move {
            let _ = signalled.await;
        };
        let server = tokio::spawn(example::serve(listener, bus.clone(), signalled));
        Instance {
            bus,
            addr,
            signal: Some(signal),
            server,
        }
    }

    /// Sends the shutdown signal (the example's Ctrl-C) and waits until the server stopped;
    /// how long that took.
    async fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.signal.take().unwrap().send(());
        timeout(DEADLINE, &mut self.server)
            .await
            .expect("the server did not stop after its shutdown signal")
            .expect("the server task panicked")
            .expect("the server failed");
        started.elapsed()
    }
}

// ---- the client -----------------------------------------------------------------------------

fn get(addr: SocketAddr, path: &str) -> Request<String> {
    Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(String::new())
        .unwrap()
}

fn post(addr: SocketAddr, path: &str, body: &str) -> Request<String> {
    Request::post(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body.to_string())
        .unwrap()
}

/// A response, and the task that drives its connection: aborting it closes the connection.
struct Exchange {
    response: hyper::Response<Incoming>,
    connection: JoinHandle<()>,
}

/// Sends `request` on a new HTTP/1.1 connection to `addr`.
async fn send(addr: SocketAddr, request: Request<String>) -> Exchange {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.expect("connecting");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("the HTTP/1.1 handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let response = sender.send_request(request).await.expect("the request");
        Exchange {
            response,
            connection,
        }
    };
    timeout(DEADLINE, exchange)
        .await
        .expect("no response in time")
}

/// Sends `request`; its status and whole body.
async fn fetch(addr: SocketAddr, request: Request<String>) -> (StatusCode, String) {
    let Exchange {
        response,
        connection,
    } = send(addr, request).await;
    let status = response.status();
    let body = timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("the body did not end in time")
        .expect("the body");
    connection.abort();
    (
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    )
}

/// An open Server-Sent Events response, and what it received so far.
struct Events {
    body: Incoming,
    received: String,
    connection: JoinHandle<()>,
}

impl Events {
    /// `GET /events` on `addr`; the server answers once the stream is subscribed.
    async fn open(addr: SocketAddr) -> Events {
        let Exchange {
            response,
            connection,
        } = send(addr, get(addr, "/events")).await;
        assert_eq!(response.status(), StatusCode::OK, "GET /events");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        Events {
            body: response.into_body(),
            received: String::new(),
            connection,
        }
    }

    /// Reads until `text` was received.
    async fn until(&mut self, text: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !self.received.contains(text) {
            match timeout_at(deadline, self.body.frame()).await {
                Err(_) => panic!("no {text:?} in time; received {:?}", self.received),
                Ok(None) => panic!("the response ended before {text:?}: {:?}", self.received),
                Ok(Some(frame)) => self.take(frame),
            }
        }
    }

    /// Reads until the response ends, and checks it ended whole (not cut off).
    async fn end(&mut self) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match timeout_at(deadline, self.body.frame()).await {
                Err(_) => panic!("the response did not end in time: {:?}", self.received),
                Ok(None) => return,
                Ok(Some(frame)) => self.take(frame),
            }
        }
    }

    fn take(&mut self, frame: Result<hyper::body::Frame<axum::body::Bytes>, hyper::Error>) {
        let frame = frame.expect("the response was cut off");
        if let Ok(data) = frame.into_data() {
            self.received.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

impl Drop for Events {
    /// The client goes away: its connection closes.
    fn drop(&mut self) {
        self.connection.abort();
    }
}

// ---- the tests ------------------------------------------------------------------------------

/// The scenario: a POST to one instance reaches an SSE client of the other; the
/// client going away removes its stream and closes its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_posted_to_one_instance_reaches_an_sse_client_of_the_other() {
    let redis = RedisServer::start();
    let a = Instance::start(redis_bus(&redis).await).await;
    let b = Instance::start(redis_bus(&redis).await).await;
    let streams_before = b.bus.stats().streams;

    let mut events = Events::open(b.addr).await;
    // The stream owns its session: it outlived the handler that made it.
    assert_eq!(b.bus.stats().streams, streams_before + 1);
    // The handler answered after `subscribed()`: Redis has B's SUBSCRIBE already.
    assert_eq!(blocking(|| numsub(&redis, CHAT)), 1);

    let (status, _) = fetch(a.addr, post(a.addr, "/post", "hello from A")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "POST /post: Redis has it");
    events.until("data: hello from A\n\n").await;

    let closed = Instant::now();
    drop(events);
    wait_until("the closed client's stream is removed", DEADLINE, || {
        b.bus.stats().streams == streams_before
    })
    .await;
    eprintln!(
        "a closed client's stream was removed after {:?}",
        closed.elapsed()
    );
    // Its session closed with it: the channel has no receiver left on B, which unsubscribes.
    timeout(DEADLINE, b.bus.subscriptions_ready())
        .await
        .expect("subscriptions_ready timed out")
        .expect("subscriptions_ready failed");
    assert_eq!(blocking(|| numsub(&redis, CHAT)), 0);

    a.stop().await;
    b.stop().await;
}

/// The shutdown signal shuts the bus down, which ends the open SSE responses (whole, not cut
/// off), so the graceful shutdown does not wait for their clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_sse_responses_promptly() {
    let redis = RedisServer::start();
    let a = Instance::start(redis_bus(&redis).await).await;
    let bus = a.bus.clone();
    let mut first = Events::open(a.addr).await;
    let mut second = Events::open(a.addr).await;

    let took = a.stop().await;
    first.end().await;
    second.end().await;
    eprintln!("the server with two open SSE responses stopped {took:?} after its signal");
    // Promptly: a bus shutdown with Redis up takes milliseconds; without one the server would
    // wait for the clients forever (SSE keep-alives hold the connections).
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    assert_eq!(bus.stats().streams, 0);
}

/// Errors reach the client as the statuses `PostError::http_status` and
/// `BusError::http_status` document; `/stats` is the bus's `Stats` as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_statuses_and_stats_are_json() {
    let redis = RedisServer::start();
    let bus = build(Bus::builder().redis_url(redis.url()).max_message_bytes(256)).await;
    let a = Instance::start(bus).await;

    let (status, body) = fetch(a.addr, get(a.addr, "/stats")).await;
    assert_eq!(status, StatusCode::OK);
    let stats: serde_json::Value = serde_json::from_str(&body).expect("GET /stats is JSON");
    assert_eq!(stats["streams"], 0, "{body}");
    assert_eq!(stats["posted"], 0, "{body}");

    let (status, body) = fetch(a.addr, post(a.addr, "/post", &"x".repeat(1000))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("exceeds max_message_bytes"), "{body}");

    timeout(DEADLINE, a.bus.shutdown())
        .await
        .expect("shutdown timed out")
        .expect("shutdown failed");
    let (status, body) = fetch(a.addr, post(a.addr, "/post", "late")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body, "the bus is shut down");
    let (status, _) = fetch(a.addr, get(a.addr, "/events")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "GET /events after shutdown"
    );

    a.stop().await;
}

/// The `axum` feature's responses: every error's status is its `http_status`, and the body
/// shows a client nothing of the server's insides (no Redis address, no serde text).
#[tokio::test]
async fn every_error_has_its_status_and_a_body_safe_to_show() {
    let redis = || Reason::new("cannot connect to redis://10.1.2.3:6379");
    let too_large = PostError::TooLarge { size: 9, max: 8 };
    // (response, status, http_status(), body)
    let cases = [
        (
            too_large.clone().into_response(),
            413,
            too_large.http_status(),
            too_large.to_string(),
        ),
        (
            PostError::Backpressure.into_response(),
            503,
            PostError::Backpressure.http_status(),
            PostError::Backpressure.to_string(),
        ),
        (
            PostError::ShutDown.into_response(),
            503,
            PostError::ShutDown.http_status(),
            "the bus is shut down".into(),
        ),
        (
            PostError::Redis(redis()).into_response(),
            502,
            PostError::Redis(redis()).http_status(),
            "Bad Gateway".into(),
        ),
        (
            PostError::Encode("key must be a string".into()).into_response(),
            500,
            PostError::Encode("".into()).http_status(),
            "Internal Server Error".into(),
        ),
        (
            PostError::RedisNotEnabled.into_response(),
            500,
            PostError::RedisNotEnabled.http_status(),
            "Internal Server Error".into(),
        ),
        (
            BusError::ShutDown.into_response(),
            503,
            BusError::ShutDown.http_status(),
            "the bus is shut down".into(),
        ),
        (
            BusError::Redis(redis()).into_response(),
            502,
            BusError::Redis(redis()).http_status(),
            "Bad Gateway".into(),
        ),
        (
            BusError::InvalidConfig("x".into()).into_response(),
            500,
            BusError::InvalidConfig("x".into()).http_status(),
            "Internal Server Error".into(),
        ),
    ];
    for (response, status, http_status, body) in cases {
        assert_eq!((response.status().as_u16(), http_status), (status, status));
        let shown = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(String::from_utf8_lossy(&shown), body);
    }

    assert!(PostError::Backpressure.is_retryable());
    for error in [
        too_large,
        PostError::ShutDown,
        PostError::Redis(redis()),
        PostError::Encode("e".into()),
        PostError::RedisNotEnabled,
    ] {
        assert!(!error.is_retryable(), "{error:?}");
    }
}

/// `MessageStream::subscribed`: once it returns, Redis has the stream's SUBSCRIBE; on a bus
/// that shut down it fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_subscribed_when_subscribed_returns() {
    let redis = RedisServer::start();
    let bus = redis_bus(&redis).await;
    let stream = bus.session().into_stream::<String>("one-stream");
    timeout(DEADLINE, stream.subscribed())
        .await
        .expect("subscribed timed out")
        .expect("subscribed failed");
    assert_eq!(blocking(|| numsub(&redis, "one-stream")), 1);

    timeout(DEADLINE, bus.shutdown())
        .await
        .expect("shutdown timed out")
        .expect("shutdown failed");
    let after = timeout(DEADLINE, stream.subscribed())
        .await
        .expect("subscribed after shutdown did not return");
    assert_eq!(after, Err(BusError::ShutDown));
    let inert = bus.session().into_stream::<String>("one-stream");
    assert_eq!(inert.subscribed().await, Err(BusError::ShutDown));
}

/// `MessageStream::subscribed` and `Bus::subscriptions_ready` while Redis is unreachable:
/// they wait (the timeout is the caller's), and a shutdown ends both waits with `ShutDown`,
/// though Redis never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_the_subscription_waits_that_redis_cannot_answer() {
    let mut redis = RedisServer::start();
    let bus = redis_bus(&redis).await;
    blocking(|| redis.stop());
    let stream = bus.session().into_stream::<String>("unreachable");
    let mut stream_wait = std::pin::pin!(stream.subscribed());
    let mut bus_wait = std::pin::pin!(bus.subscriptions_ready());
    // Start both waits: Redis is down, so the SUBSCRIBE cannot be confirmed.
    tokio::select! {
        biased;
        early = &mut stream_wait => panic!("subscribed returned with Redis down: {early:?}"),
        early = &mut bus_wait => panic!("subscriptions_ready returned with Redis down: {early:?}"),
        () = std::future::ready(()) => {}
    }
    let _ = timeout(DEADLINE, bus.shutdown())
        .await
        .expect("shutdown with Redis down is bounded");
    let ended = timeout(DEADLINE, async { (stream_wait.await, bus_wait.await) })
        .await
        .expect("the shutdown did not end the waits");
    assert_eq!(ended, (Err(BusError::ShutDown), Err(BusError::ShutDown)));
}
