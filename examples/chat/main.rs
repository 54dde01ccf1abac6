//! A chat server on evbus: run two of them on two ports, sharing one Redis, and the pages of
//! both show the same rooms.
//!
//! ```sh
//! PORT=3001 cargo run --example chat    # then open http://127.0.0.1:3001
//! PORT=3002 cargo run --example chat    # and http://127.0.0.1:3002
//! ```
//!
//! `REDIS_URL` (default `redis://127.0.0.1:6379`) is the Redis to share; `PORT` (default 3000,
//! 0 for any free port) and `HOST` (default 127.0.0.1) where to listen. Its Redis channels are
//! prefixed `evbus-chat:`. Once it listens it prints `chat: listening on http://HOST:PORT`.
//!
//! The page (`index.html`, embedded, plain HTML and JavaScript) opens a WebSocket to `/ws` as
//! the user named on the page: the name is the identity here, with no password, where a real
//! server would take it from its authentication. Each connection is one task that owns one
//! evbus `Session` (`connection.rs`); what the page may send, and what it gets for bad input,
//! is in `protocol.rs`. "Sign out everywhere" posts `RevokedAuthentication::User` on the
//! user's revocation channel, and every connection of that user, on every server, closes.
//! `/stats` shows the open connections and the bus's gauges (streams, listeners, channels).
//!
//! Ctrl-C shuts the bus down, which ends every stream: each connection then closes with 1001.

mod connection;
mod protocol;

use std::collections::HashMap;
use std::error::Error;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use evbus::Bus;
use tokio::net::TcpListener;

use crate::protocol::{ChatLine, WS_MAX_MESSAGE_BYTES};

/// What every connection shares.
pub struct App {
    bus: Bus,
    /// This server's name on the page and in chat lines: ":PORT".
    server: String,
    /// Open WebSocket connections (each one task, one session).
    connections: AtomicUsize,
    next_auth_id: AtomicU64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port:?} is not a port"))?,
        Err(_) => 3000,
    };
    let listener = TcpListener::bind((host.as_str(), port))
        .await
        .map_err(|error| format!("cannot listen on {host}:{port}: {error}"))?;
    let address = listener.local_addr()?;

    let built = Bus::builder()
        .redis_url(url)
        .namespace("evbus-chat:")
        .class_name::<ChatLine>("evbus-chat.ChatLine")
        .build();
    let bus = match tokio::time::timeout(Duration::from_secs(10), built).await {
        Ok(Ok(bus)) => bus,
        Ok(Err(error)) => return Err(no_redis(url, &error.to_string())),
        Err(_) => return Err(no_redis(url, "timed out connecting")),
    };
    let app = Arc::new(App {
        bus: bus.clone(),
        server: format!(":{}", address.port()),
        connections: AtomicUsize::new(0),
        next_auth_id: AtomicU64::new(1),
    });
    let router = Router::new()
        .route("/", get(page))
        .route("/ws", get(upgrade))
        .route("/stats", get(stats))
        .with_state(app.clone());

    println!("chat: listening on http://{address}");
    std::io::stdout().flush()?;
    let stop = async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("chat: shutting down");
        // Ends every stream of every session: each connection task closes its socket.
        if let Err(error) = bus.shutdown().await {
            eprintln!("chat: {error}");
        }
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await?;
    // Give the connection tasks a moment to send their close frames.
    let started = Instant::now();
    while app.connections.load(Ordering::SeqCst) > 0 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn no_redis(url: &str, error: &str) -> Box<dyn Error> {
    format!(
        "cannot connect to Redis at {url}: {error}. Start one with `redis-server`, or set \
         REDIS_URL=redis://host:port"
    )
    .into()
}

async fn page() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

/// `/ws?user=NAME`: the page's WebSocket. A bad name still gets the upgrade, so that the page
/// can be told what was wrong in an error event.
async fn upgrade(
    upgrade: WebSocketUpgrade,
    State(app): State<Arc<App>>,
    Query(mut query): Query<HashMap<String, String>>,
) -> Response {
    let user = query.remove("user");
    upgrade
        .max_message_size(WS_MAX_MESSAGE_BYTES)
        .max_frame_size(WS_MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| connection::run(socket, app, user))
}

/// The open connections and the bus's gauges, as JSON: after a connection closes, its
/// session's streams are gone from `streams`.
async fn stats(State(app): State<Arc<App>>) -> impl IntoResponse {
    let stats = app.bus.stats();
    let body = serde_json::json!({
        "server": app.server,
        "connections": app.connections.load(Ordering::SeqCst),
        "streams": stats.streams,
        "listeners": stats.listeners,
        "channels": stats.channels,
        "global_posted": stats.global_posted,
        "global_received": stats.global_received,
    });
    ([("content-type", "application/json")], body.to_string())
}
