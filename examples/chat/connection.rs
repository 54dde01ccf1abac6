//! One WebSocket connection: one task, which owns the connection's evbus `Session`.
//!
//! The session holds a stream on the user's revocation channel and one stream per room the
//! connection is in. The task reads the socket and the streams together; when the socket
//! closes (or breaks), the loop ends and the session is closed with it, so a session never
//! outlives its connection. The other way round: a revocation that affects this connection,
//! or the bus shutting down (its streams end), makes the task close the socket.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use evbus::{revoked_authentication_channel, MessageScope, MessageStream, RevokedAuthentication};
use futures_core::Stream;

use crate::protocol::{self, ChatLine, Event, Request, MAX_ROOMS, MAX_TEXT_CHARS};
use crate::App;

/// Close code of a connection whose user signed out everywhere (4000-4999: the application's).
pub const SIGNED_OUT: u16 = 4001;
/// Close code when the server shuts down ("going away").
const GOING_AWAY: u16 = 1001;
/// Close code when the page sent something the connection cannot go on after.
const POLICY: u16 = 1008;
/// The scopes the chat endpoint requires: a revocation of any of them closes the connection.
const REQUIRED_SCOPES: &[&str] = &["chat"];
/// How long a join (or a new connection) waits for Redis to confirm its SUBSCRIBE, and a
/// sign-out for Redis to take the revocation.
const REDIS_WAIT: Duration = Duration::from_secs(5);

/// What the page's socket did, or what ends the connection.
enum Next {
    Frame(Message),
    Revoked(Arc<RevokedAuthentication>),
    Line(Arc<ChatLine>),
    /// The page closed the socket, or it broke.
    SocketGone,
    /// A stream of the session ended: the bus is shutting down.
    BusGone,
}

/// Serves one upgraded WebSocket until it closes. `user` is the `user` query parameter.
pub async fn run(mut socket: WebSocket, app: Arc<App>, user: Option<String>) {
    app.connections.fetch_add(1, Ordering::SeqCst);
    let _counted = Counted(&app);
    let user = match protocol::user_name(user.as_deref().unwrap_or_default()) {
        Ok(user) => user.to_string(),
        Err(message) => {
            let _ = send(&mut socket, &Event::Error { message }).await;
            let _ = close(&mut socket, POLICY, "bad user name").await;
            return;
        }
    };
    let session = app.bus.session();
    let auth_id = format!(
        "{}-{}",
        app.server,
        app.next_auth_id.fetch_add(1, Ordering::SeqCst)
    );
    let mut connection = Connection {
        revocations: session
            .messages()
            .create_stream(&revoked_authentication_channel(&user)),
        rooms: Rooms::default(),
        session: &session,
        app: &app,
        user: &user,
    };
    // Once Redis confirmed the SUBSCRIBE, a sign-out from any server reaches this connection.
    let _ = tokio::time::timeout(REDIS_WAIT, app.bus.subscriptions_ready()).await;
    let welcome = Event::Welcome {
        user: &user,
        auth_id: &auth_id,
        server: &app.server,
        max_rooms: MAX_ROOMS,
        max_text_chars: MAX_TEXT_CHARS,
    };
    if send(&mut socket, &welcome).await.is_err() {
        return;
    }
    loop {
        let next = tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(frame)) => Next::Frame(frame),
                Some(Err(error)) => {
                    // Most likely a message over WS_MAX_MESSAGE_BYTES: say so if the socket
                    // still takes it.
                    let message = format!("the connection failed: {error}");
                    let _ = send(&mut socket, &Event::Error { message }).await;
                    let _ = close(&mut socket, POLICY, "connection error").await;
                    break;
                }
                None => Next::SocketGone,
            },
            revoked = next(&mut connection.revocations) => match revoked {
                Some(revoked) => Next::Revoked(revoked),
                None => Next::BusGone,
            },
            line = poll_fn(|cx| connection.rooms.poll_line(cx)) => match line {
                Some(line) => Next::Line(line),
                None => Next::BusGone,
            },
        };
        let sent = match next {
            Next::Frame(Message::Text(text)) => connection.request(&mut socket, &text).await,
            Next::Frame(Message::Binary(_)) => {
                let message = "binary frames are not read: send JSON in text frames".into();
                send(&mut socket, &Event::Error { message }).await
            }
            Next::Frame(Message::Close(_)) | Next::SocketGone => break,
            Next::Frame(Message::Ping(_) | Message::Pong(_)) => Ok(()),
            Next::Revoked(revoked) => {
                if !revoked.affects(Some(&auth_id), REQUIRED_SCOPES) {
                    continue;
                }
                let message = match *revoked {
                    RevokedAuthentication::User => "signed out everywhere",
                    _ => "signed out",
                };
                let _ = send(&mut socket, &Event::SignedOut { message }).await;
                let _ = close(&mut socket, SIGNED_OUT, message).await;
                break;
            }
            Next::Line(line) => send(&mut socket, &Event::Message(&line)).await,
            Next::BusGone => {
                let _ = close(&mut socket, GOING_AWAY, "server shutting down").await;
                break;
            }
        };
        if sent.is_err() {
            break;
        }
    }
    // The session ends with its connection (dropping it would do the same).
    session.close();
}

/// What one connection has, besides its socket.
struct Connection<'a> {
    revocations: MessageStream<RevokedAuthentication>,
    rooms: Rooms,
    session: &'a evbus::Session,
    app: &'a App,
    user: &'a str,
}

impl Connection<'_> {
    /// Answers one text frame from the page. `Err` only when the socket is gone.
    async fn request(&mut self, socket: &mut WebSocket, frame: &str) -> Result<(), axum::Error> {
        match self.answer(frame).await {
            Ok(Some(event)) => send(socket, &event).await,
            Ok(None) => Ok(()),
            Err(message) => send(socket, &Event::Error { message }).await,
        }
    }

    /// The event that answers `frame`, if any; `Err` with what was wrong with it.
    async fn answer(&mut self, frame: &str) -> Result<Option<Event<'static>>, String> {
        Ok(match protocol::parse(frame)? {
            Request::Join { room } => {
                let room = protocol::room_name(&room)?;
                if self.rooms.contains(room) {
                    return Err(format!("already in room {room}"));
                }
                if self.rooms.len() >= MAX_ROOMS {
                    return Err(format!(
                        "too many rooms: a connection may be in at most {MAX_ROOMS}; leave one first"
                    ));
                }
                let stream = self.session.messages().create_stream(&room_channel(room));
                self.rooms.joined.push((room.to_string(), stream));
                // So that a line posted after the page sees "joined", from any server, arrives.
                let ready = self.app.bus.subscriptions_ready();
                if tokio::time::timeout(REDIS_WAIT, ready).await.is_err() {
                    eprintln!("chat: Redis has not confirmed the subscription to {room} yet");
                }
                Some(Event::Joined {
                    room: room.to_string(),
                })
            }
            Request::Leave { room } => {
                let room = protocol::room_name(&room)?;
                if !self.rooms.leave(room) {
                    return Err(format!("not in room {room}"));
                }
                Some(Event::Left {
                    room: room.to_string(),
                })
            }
            Request::Say { room, text } => {
                let room = protocol::room_name(&room)?;
                if !self.rooms.contains(room) {
                    return Err(format!("not in room {room}: join it first"));
                }
                let line = ChatLine {
                    room: room.to_string(),
                    from: self.user.to_string(),
                    server: self.app.server.clone(),
                    text: protocol::chat_text(&text)?.to_string(),
                };
                // Every server in the room, this one included, gets it back from Redis.
                self.app
                    .bus
                    .messages()
                    .post_message(&room_channel(room), line, MessageScope::Global)
                    .map_err(|error| format!("could not post: {error}"))?;
                None
            }
            Request::SignOutEverywhere => {
                let delivery = self
                    .app
                    .bus
                    .messages()
                    .revoke_authentication(self.user, RevokedAuthentication::User)
                    .map_err(|error| format!("could not sign out: {error}"))?;
                // This connection is closed too, when the revocation comes back from Redis.
                match tokio::time::timeout(REDIS_WAIT, delivery).await {
                    Ok(Ok(())) => None,
                    Ok(Err(error)) => return Err(format!("could not sign out: {error}")),
                    Err(_) => return Err("could not sign out: Redis did not answer".into()),
                }
            }
        })
    }
}

/// The rooms a connection is in, each with its stream.
#[derive(Default)]
struct Rooms {
    joined: Vec<(String, MessageStream<ChatLine>)>,
    /// Where the next poll starts, so that a busy room does not starve the others.
    start: usize,
}

impl Rooms {
    fn len(&self) -> usize {
        self.joined.len()
    }

    fn contains(&self, room: &str) -> bool {
        self.joined.iter().any(|(name, _)| name == room)
    }

    /// Drops the room's stream (which unregisters it). Whether the connection was in the room.
    fn leave(&mut self, room: &str) -> bool {
        let before = self.joined.len();
        self.joined.retain(|(name, _)| name != room);
        self.joined.len() != before
    }

    /// The next line of any room; `None` if a stream ended (the bus is shutting down). Pending
    /// while the connection is in no room.
    fn poll_line(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<ChatLine>>> {
        let count = self.joined.len();
        for i in 0..count {
            let at = (self.start + i) % count;
            if let Poll::Ready(line) = Pin::new(&mut self.joined[at].1).poll_next(cx) {
                self.start = at + 1;
                return Poll::Ready(line);
            }
        }
        Poll::Pending
    }
}

/// The evbus channel of a room (the bus adds its namespace in front on Redis).
fn room_channel(room: &str) -> String {
    format!("room:{room}")
}

async fn next<M: evbus::Message>(stream: &mut MessageStream<M>) -> Option<Arc<M>> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

async fn send(socket: &mut WebSocket, event: &Event<'_>) -> Result<(), axum::Error> {
    socket.send(Message::text(event.to_json())).await
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) -> Result<(), axum::Error> {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    socket.send(Message::Close(Some(frame))).await
}

/// Counts the connection down when its task ends, however it ends.
struct Counted<'a>(&'a App);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}
