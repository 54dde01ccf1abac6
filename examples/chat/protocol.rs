//! What the page and the server say to each other, and the rules for what the page may send.
//!
//! Every WebSocket frame is one JSON object in a text frame, with a `"type"`:
//!
//! - page to server ([`Request`]): `{"type":"join","room":"lobby"}`, `{"type":"leave","room":..}`,
//!   `{"type":"say","room":"lobby","text":"hi"}`, `{"type":"sign_out_everywhere"}`;
//! - server to page ([`Event`]): `welcome`, `joined`, `left`, `message`, `error` (the request
//!   was refused; the connection stays up), `signed_out` (sent just before the server closes
//!   the connection with code 4001).
//!
//! What the page sends is untrusted. A frame larger than [`MAX_FRAME_BYTES`], one that is not
//! JSON or not a request, a room name outside the grammar of [`room_name`], a line longer than
//! [`MAX_TEXT_CHARS`], or a join past [`MAX_ROOMS`] gets an `error` event saying what was wrong,
//! and nothing else happens. Quoted input is cut to [`QUOTE_CHARS`] characters.

use serde::{Deserialize, Serialize};

/// Largest text frame the server reads as a request. Frames up to `WS_MAX_MESSAGE_BYTES` are
/// refused with an error event; larger ones end the connection (the WebSocket layer stops
/// reading them), so a page cannot make the server buffer more than that.
pub const MAX_FRAME_BYTES: usize = 4096;
/// The WebSocket layer's own bound on one message (and one frame).
pub const WS_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Longest chat line, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;
/// Most rooms one connection may be in at once.
pub const MAX_ROOMS: usize = 16;
/// Longest room or user name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// How much of a bad input an error event quotes.
pub const QUOTE_CHARS: usize = 40;

/// A request from the page.
#[derive(Deserialize, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Start reading a room.
    Join { room: String },
    /// Stop reading a room.
    Leave { room: String },
    /// Post a line to a room this connection is in.
    Say { room: String, text: String },
    /// Revoke every sign-in of this connection's user, on every server.
    SignOutEverywhere,
}

/// What the server tells the page.
#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event<'a> {
    Welcome {
        user: &'a str,
        auth_id: &'a str,
        server: &'a str,
        max_rooms: usize,
        max_text_chars: usize,
    },
    Joined {
        room: String,
    },
    Left {
        room: String,
    },
    Message(&'a ChatLine),
    Error {
        message: String,
    },
    SignedOut {
        message: &'a str,
    },
}

impl Event<'_> {
    /// The event as the text of one WebSocket frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events are plain strings and numbers")
    }
}

/// One line of a room: the message every server subscribed to the room receives through Redis.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChatLine {
    pub room: String,
    pub from: String,
    /// The server the line was posted on.
    pub server: String,
    pub text: String,
}

/// Reads one text frame from the page.
///
/// # Errors
/// The message for the page's error event: too large, not JSON, not a request.
pub fn parse(frame: &str) -> Result<Request, String> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(format!(
            "message too large: {} bytes, the limit is {MAX_FRAME_BYTES}",
            frame.len()
        ));
    }
    serde_json::from_str(frame).map_err(|error| {
        if error.is_syntax() || error.is_eof() {
            format!("invalid JSON ({error}): {}", quote(frame))
        } else {
            format!(
                "not a request ({error}): expected {{\"type\": \"join\" | \"leave\" | \"say\" | \
                 \"sign_out_everywhere\", ..}}"
            )
        }
    })
}

/// The room names there are: 1 to [`MAX_NAME_CHARS`] characters of `a-z`, `0-9` and `-`.
/// Every such name is a room (it exists as soon as someone joins it); any other is unknown.
///
/// # Errors
/// The message for the page's error event.
pub fn room_name(name: &str) -> Result<&str, String> {
    let valid = (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "unknown room {}: a room name is 1 to {MAX_NAME_CHARS} characters of a-z, 0-9 and -",
            quote(name)
        ))
    }
}

/// User names: 1 to [`MAX_NAME_CHARS`] characters of `A-Z`, `a-z`, `0-9`, `_` and `-`. The
/// name is also part of a Redis channel name (the user's revocation channel).
///
/// # Errors
/// The message for the page's error event.
pub fn user_name(name: &str) -> Result<&str, String> {
    let valid = (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "bad user name {}: 1 to {MAX_NAME_CHARS} characters of A-Z, a-z, 0-9, _ and -",
            quote(name)
        ))
    }
}

/// A chat line's text, checked.
///
/// # Errors
/// The message for the page's error event: empty or too long.
pub fn chat_text(text: &str) -> Result<&str, String> {
    let chars = text.chars().count();
    if text.trim().is_empty() {
        Err("empty message".into())
    } else if chars > MAX_TEXT_CHARS {
        Err(format!(
            "message too long: {chars} characters, the limit is {MAX_TEXT_CHARS}"
        ))
    } else {
        Ok(text)
    }
}

/// `input` as a JSON-style quoted string, cut to [`QUOTE_CHARS`] characters.
pub fn quote(input: &str) -> String {
    match input.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{:?}...", &input[..cut]),
        None => format!("{input:?}"),
    }
}
