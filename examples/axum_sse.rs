//! Server-Sent Events from an axum 0.8 server, shared by every instance through one Redis: a
//! line posted to any instance reaches the SSE clients of all of them.
//!
//! Run two instances (on `REDIS_URL`, default `redis://127.0.0.1:6379`), read one, post to
//! the other:
//!
//! ```sh
//! PORT=3000 cargo run --example axum_sse --features axum &
//! PORT=3001 cargo run --example axum_sse --features axum &
//! curl -N localhost:3000/events &
//! curl -d 'hello' localhost:3001/post
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use evbus::{Bus, MessageScope, PostError, Stats};
use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// The channel all instances share.
const CHAT: &str = "chat";
/// How long a request waits for Redis before it gives up (a 503) or leaves a post held (a 202).
const REDIS_WAIT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let bus = Bus::builder().redis_url(url).build().await?;
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let ctrl_c = async { tokio::signal::ctrl_c().await.expect("listening for Ctrl-C") };
    Ok(serve(listener, bus, ctrl_c).await?)
}

/// Serves the routes until `signal`, then shuts the bus down: that ends every stream, so the
/// open SSE responses end and the graceful shutdown does not wait for their clients.
pub async fn serve(
    listener: TcpListener,
    bus: Bus,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let routes = app(bus.clone());
    axum::serve(listener, routes)
        .with_graceful_shutdown(async move {
            signal.await;
            if let Err(error) = bus.shutdown().await {
                eprintln!("shutdown: {error}");
            }
        })
        .await
}

/// The routes, on `bus`.
pub fn app(bus: Bus) -> Router {
    Router::new()
        .route("/events", get(events))
        .route("/post", post(post_line))
        .route("/stats", get(stats))
        .with_state(bus)
}

/// `GET /events`: the lines posted on any instance, as Server-Sent Events.
async fn events(
    State(bus): State<Bus>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    // The stream owns its session: both live as long as the response, and go with the client.
    let stream = bus.session().into_stream::<String>(CHAT);
    // Once Redis confirmed the SUBSCRIBE, a line posted on any instance reaches this client.
    match timeout(REDIS_WAIT, stream.subscribed()).await {
        Ok(subscribed) => subscribed.map_err(IntoResponse::into_response)?, // shut down: 503
        Err(_elapsed) => return Err(StatusCode::SERVICE_UNAVAILABLE.into_response()),
    }
    let events = stream.map(|line| Ok(Event::default().data(line.as_str())));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// `POST /post`: the body, to every client of every instance. 204 once Redis has it, 202 when
/// Redis is unreachable (the post is held and goes out after the reconnect); errors are
/// statuses: too large 413, outage buffer full or shut down 503, refused by Redis 502.
async fn post_line(State(bus): State<Bus>, line: String) -> Result<StatusCode, PostError> {
    let delivery = bus
        .messages()
        .post_message(CHAT, line, MessageScope::Global)?;
    match timeout(REDIS_WAIT, delivery).await {
        Ok(acknowledged) => acknowledged.map(|()| StatusCode::NO_CONTENT),
        Err(_elapsed) => Ok(StatusCode::ACCEPTED),
    }
}

/// `GET /stats`: the bus's counters, as JSON.
async fn stats(State(bus): State<Bus>) -> Json<Stats> {
    Json(bus.stats())
}
