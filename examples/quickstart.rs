//! The examples of Serverpod's "Server events" document, done in Rust on a local evbus.
//!
//! Run: `cargo run --release --example quickstart`

use std::sync::Arc;

use evbus::{revoked_authentication_channel, Bus, MessageScope, PostError, RevokedAuthentication};
use serde::{Deserialize, Serialize};

/// A model that represents changes to user data.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct UserUpdate {
    user_id: u64,
    name: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::local();
    let session = bus.session();

    println!("== Sending messages");
    // session.messages.postMessage('user_updates', message);
    let delivery = session.messages().post_message(
        "user_updates",
        UserUpdate {
            user_id: 1,
            name: "Ada".into(),
        },
        MessageScope::Auto,
    )?;
    println!(
        "posted on user_updates before anyone listened: reached {} receivers",
        delivery.local_receivers()
    );

    println!("\n== Global messages");
    // session.messages.postMessage('user_updates', message, global: true);
    match session.messages().post_message(
        "user_updates",
        UserUpdate {
            user_id: 1,
            name: "Ada".into(),
        },
        MessageScope::Global,
    ) {
        Err(PostError::RedisNotEnabled) => {
            println!(
                "global post on a bus without Redis: error \"{}\"",
                PostError::RedisNotEnabled
            )
        }
        other => println!("unexpected: {other:?}"),
    }

    println!("\n== Creating a stream");
    // var stream = session.messages.createStream('user_updates');
    let mut stream = session
        .messages()
        .create_stream::<UserUpdate>("user_updates");
    for (id, name) in [(1, "Ada"), (2, "Grace")] {
        let update = UserUpdate {
            user_id: id,
            name: name.into(),
        };
        bus.messages()
            .post_message("user_updates", update, MessageScope::Local)?;
    }
    for _ in 0..2 {
        if let Some(message) = stream.recv().await {
            println!("stream received: {message:?}");
        }
    }

    println!("\n== Stream lifecycle");
    // The stream is automatically closed when the session is closed...
    let request = bus.session();
    let mut request_stream = request
        .messages()
        .create_stream::<UserUpdate>("user_updates");
    let update = UserUpdate {
        user_id: 3,
        name: "Edsger".into(),
    };
    bus.messages()
        .post_message("user_updates", update, MessageScope::Local)?;
    request.close();
    while let Some(message) = request_stream.recv().await {
        println!("buffered before the session closed: {message:?}");
    }
    println!("the session closed: its stream ended");
    // ...or cancelled by dropping it.
    drop(stream);
    println!(
        "dropped a stream: streams registered now = {}",
        bus.stats().streams
    );

    println!("\n== Adding a listener");
    // session.messages.addListener('user_updates', (message) { ... });
    let id = session
        .messages()
        .add_listener("user_updates", |message: &UserUpdate| {
            println!("listener received: {message:?}");
        });
    let update = UserUpdate {
        user_id: 4,
        name: "Barbara".into(),
    };
    let delivery = session
        .messages()
        .post_message("user_updates", update, MessageScope::Auto)?;
    println!(
        "post returned after calling {} listener(s) on this thread",
        delivery.local_receivers()
    );

    println!("\n== Listener lifecycle");
    // session.messages.removeListener('user_updates', myListenerCallback);
    println!(
        "remove_listener: {}",
        session.messages().remove_listener("user_updates", id)
    );
    println!(
        "remove it again: {}",
        session.messages().remove_listener("user_updates", id)
    );
    session
        .messages()
        .add_listener("user_updates", |message: &UserUpdate| {
            println!("session listener received: {message:?}");
        });
    drop(session); // closing (or dropping) the session removes its listeners
    let update = UserUpdate {
        user_id: 5,
        name: "Alan".into(),
    };
    let delivery = bus
        .messages()
        .post_message("user_updates", update, MessageScope::Local)?;
    println!(
        "after the session closed, a post reached {} receivers",
        delivery.local_receivers()
    );

    println!("\n== Revoke authentication");
    // A connection of user 42, authenticated as "a1", on an endpoint that requires "chat",
    // closes itself when a revocation affects it.
    let connection = bus.session();
    connection.messages().add_listener(
        &revoked_authentication_channel("42"),
        |revoked: &RevokedAuthentication| {
            let verdict = if revoked.affects(Some("a1"), &["chat"]) {
                "closes"
            } else {
                "stays open"
            };
            println!("connection of user 42 got {revoked:?}: it {verdict}");
        },
    );
    let messages = bus.messages();
    messages.revoke_authentication("42", RevokedAuthentication::Scope(vec!["admin".into()]))?;
    messages.revoke_authentication("42", RevokedAuthentication::AuthId("a1".into()))?;
    drop(connection);

    println!("\n== A hot path: a pre-interned typed channel handle");
    let ticks = bus.channel::<u64>("ticks");
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sum = total.clone();
    bus.messages().add_listener("ticks", move |tick: &u64| {
        sum.fetch_add(*tick, std::sync::atomic::Ordering::Relaxed);
    });
    for tick in 1..=1_000_000u64 {
        ticks.post(tick, MessageScope::Local)?;
    }
    println!(
        "posted 1,000,000 ticks through a handle; listener sum = {}",
        total.load(std::sync::atomic::Ordering::Relaxed)
    );

    let stats = bus.stats();
    println!(
        "\nstats: posted {}, delivered {}, channels {}, listeners {}, streams {}",
        stats.posted, stats.delivered, stats.channels, stats.listeners, stats.streams
    );
    bus.shutdown().await?;
    Ok(())
}
