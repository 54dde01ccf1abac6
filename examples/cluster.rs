//! Two buses sharing one Redis, as two servers of a cluster would: global posts from server A
//! read by a stream on server B, and a revocation from A that closes a connection on B.
//!
//! Run: `cargo run --example cluster` (needs a Redis on redis://127.0.0.1:6379; set
//! `REDIS_URL=redis://host:port` to point elsewhere). Channels are prefixed with
//! "evbus-example:", so a shared Redis is not disturbed.
//!
//! With a Redis Cluster URL, `REDIS_URL=redis-cluster://host:port?node=host2:port2&..`, the same
//! code runs on sharded pub/sub: each channel is `SSUBSCRIBE`d on the master that owns its slot
//! and posts are `SPUBLISH`ed there (the chat channel and the revocation channel may well live
//! on different masters). A `redis-sentinel://host:port?sentinelServiceName=name&node=..` URL
//! follows a Sentinel failover.

use std::error::Error;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use evbus::{revoked_authentication_channel, Bus, MessageScope, RevokedAuthentication};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct ChatMessage {
    from: String,
    text: String,
}

/// `step`, or an error saying what did not happen in time.
async fn within<T>(what: &str, step: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(Duration::from_secs(5), step)
        .await
        .map_err(|_| format!("timed out {what}"))
}

async fn server(url: &str) -> Result<Bus, Box<dyn Error>> {
    let built = Bus::builder()
        .redis_url(url)
        .namespace("evbus-example:")
        .build();
    Ok(within("connecting", built).await??)
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!(
                "Is Redis running at {url}? Start one with `redis-server`, or set \
                 REDIS_URL=redis://host:port (or redis-cluster://host:port?node=host2:port2&..)"
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let (server_a, server_b) = (server(url).await?, server(url).await?);
    println!("server A and server B are connected to {url}");

    // On B: a chat room reading "chat", and a connection of user 42 (authenticated as "a1",
    // on an endpoint that requires the "chat" scope) that closes itself when revoked.
    let room = server_b.session();
    let mut chat = room.messages().create_stream::<ChatMessage>("chat");
    let connection = server_b.session();
    let mut revocations = connection
        .messages()
        .create_stream::<RevokedAuthentication>(&revoked_authentication_channel("42"));
    let connection_task = tokio::spawn(async move {
        while let Some(revoked) = revocations.recv().await {
            if revoked.affects(Some("a1"), &["chat"]) {
                println!("B: connection of user 42 got {revoked:?}: closing it");
                break;
            }
            println!("B: connection of user 42 got {revoked:?}: it stays open");
        }
        connection.close();
    });
    within("subscribing", server_b.subscriptions_ready()).await??;
    within("subscribing", server_a.subscriptions_ready()).await??;

    for text in ["hello from A", "is anyone on B?"] {
        let message = ChatMessage {
            from: "A".into(),
            text: text.into(),
        };
        let delivery = server_a
            .messages()
            .post_message("chat", message, MessageScope::Global)?;
        within("publishing", delivery.acknowledged()).await??;
        println!("A: posted {text:?} globally");
    }
    for _ in 0..2 {
        match within("waiting for the chat", chat.recv()).await? {
            Some(message) => println!("B: the chat stream yielded {message:?}"),
            None => return Err("the chat stream ended early".into()),
        }
    }

    let messages = server_a.messages();
    messages.revoke_authentication("42", RevokedAuthentication::Scope(vec!["admin".into()]))?;
    println!("A: revoked user 42's \"admin\" scope");
    messages.revoke_authentication("42", RevokedAuthentication::AuthId("a1".into()))?;
    println!("A: revoked user 42's auth id \"a1\"");
    within("waiting for the connection to close", connection_task).await??;
    println!("B: the connection task has ended");

    drop((chat, room));
    server_a.shutdown().await?;
    server_b.shutdown().await?;
    println!("both servers shut down");
    Ok(())
}
