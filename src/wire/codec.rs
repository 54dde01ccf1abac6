//! Class names and typed payloads: how a message of type `M` becomes the bytes of one
//! record (Native) or one JSON envelope (Serverpod), and back.
//!
//! # Payload encoding
//!
//! Native payloads are MessagePack (rmp-serde), with structs written as maps of field names.
//! MessagePack is the fastest self-describing serde format we know of: one pass, no
//! escaping, integers in their smallest form, strings copied as they are, and being
//! self-describing it serves every serde feature (untagged enums, `serde_json::Value`
//! fields, `deserialize_any`) that compact non-describing formats such as bincode or
//! postcard refuse. Field names rather than positions cost a few bytes per field and buy
//! tolerance of rolling deploys: a server that added an `Option` field with
//! `#[serde(default)]` still reads, and is read by, the previous version.
//!
//! Serverpod payloads are serde_json, in Serverpod's envelope ([`serverpod::encode_serverpod`]).
//!
//! # Class names
//!
//! A message's wire class is the name set with [`BusBuilder::class_name`](crate::BusBuilder),
//! or else its type's name without module path or generic arguments. Decoding an `M`
//! accepts only `M`'s class, so a receiver never gets a value of another model that happens
//! to have the same shape. [`RevokedAuthentication`] is one Rust type with Serverpod's three
//! classes; it is mapped here, in both formats (R02).
//!
//! A type given another type's name (`class_name::<EventSummary>("Event")`) takes that
//! class on purpose, beside the class's own type, for example as a tolerant view with
//! optional fields. Such types share a class, and each decodes a received message by
//! itself: when one refuses it, the others still get it, and the refusal is reported once.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::format::WireFormat;
use super::frame::{self, HEADER_LEN, MAX_CLASS_LEN};
use super::serverpod;
use crate::error::{PostError, Reason};
use crate::message::Message;
use crate::revocation::RevokedAuthentication;

/// A message's payload as received.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Payload<'a> {
    /// MessagePack bytes of a Native record.
    Native(&'a [u8]),
    /// The raw JSON text of a Serverpod envelope's `data`.
    Json(&'a str),
}

/// The bus's wire settings and class table.
pub(crate) struct Codec {
    pub(crate) format: WireFormat,
    pub(crate) max_message_bytes: usize,
    /// Names set with `BusBuilder::class_name`.
    names: HashMap<TypeId, Arc<str>>,
    /// Classes this bus takes: of every type that was ever a receiver here, and every name
    /// set explicitly. A received class outside it is refused as unknown (G09); a known
    /// class that no receiver of the channel takes is a type mismatch (L05).
    known: RwLock<HashSet<Arc<str>>>,
}

const USER: &str = "serverpod.RevokedAuthenticationUser";
const AUTH_ID: &str = "serverpod.RevokedAuthenticationAuthId";
const SCOPE: &str = "serverpod.RevokedAuthenticationScope";

#[derive(Serialize, Deserialize)]
struct UserData {}

#[derive(Serialize, Deserialize)]
struct AuthIdData<'a> {
    #[serde(rename = "authId", borrow)]
    auth_id: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
struct ScopeData {
    scopes: Vec<String>,
}

impl Codec {
    pub(crate) fn new(
        format: WireFormat,
        max_message_bytes: usize,
        names: HashMap<TypeId, Arc<str>>,
    ) -> Self {
        let known = names.values().cloned().collect();
        Codec {
            format,
            max_message_bytes,
            names,
            known: RwLock::new(known),
        }
    }

    /// The wire class of `M`.
    pub(crate) fn class_of<M: 'static>(&self) -> Cow<'_, str> {
        match self.names.get(&TypeId::of::<M>()) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Borrowed(default_class_name(std::any::type_name::<M>())),
        }
    }

    /// Records that `M` has a receiver on this bus, so its class is known.
    pub(crate) fn learn<M: Message>(&self) {
        if TypeId::of::<M>() == TypeId::of::<RevokedAuthentication>() {
            return;
        }
        let class = self.class_of::<M>();
        if !self.known.read().contains(&*class) {
            self.known.write().insert(class.into());
        }
    }

    /// Whether some receiver type of this bus takes `class`.
    pub(crate) fn knows(&self, class: &str) -> bool {
        matches!(class, USER | AUTH_ID | SCOPE) || self.known.read().contains(class)
    }

    /// Encodes `message` for the publish queue: a Native record, or a whole Serverpod
    /// payload.
    ///
    /// # Errors
    ///
    /// [`PostError::Encode`] when serde refuses the value or the class name is too long;
    /// [`PostError::TooLarge`] past `max_message_bytes`.
    pub(crate) fn encode<M: Message>(&self, message: &M) -> Result<Vec<u8>, PostError> {
        match (message as &dyn Any).downcast_ref::<RevokedAuthentication>() {
            Some(RevokedAuthentication::User) => self.encode_as(USER, &UserData {}),
            Some(RevokedAuthentication::AuthId(id)) => self.encode_as(
                AUTH_ID,
                &AuthIdData {
                    auth_id: Cow::Borrowed(id),
                },
            ),
            Some(RevokedAuthentication::Scope(scopes)) => self.encode_as(
                SCOPE,
                &ScopeData {
                    scopes: scopes.clone(),
                },
            ),
            None => self.encode_as(&self.class_of::<M>(), message),
        }
    }

    fn encode_as<T: Serialize + ?Sized>(
        &self,
        class: &str,
        data: &T,
    ) -> Result<Vec<u8>, PostError> {
        if class.is_empty() || class.len() > MAX_CLASS_LEN {
            return Err(PostError::Encode(Reason::new(format!(
                "class name of {} bytes; it must have 1 to {MAX_CLASS_LEN}",
                class.len()
            ))));
        }
        let (bytes, size) = match self.format {
            WireFormat::Serverpod => {
                let json = serde_json::to_vec(data).map_err(encode_error)?;
                let mut out = Vec::with_capacity(json.len() + 2 * class.len() + 48);
                serverpod::encode_serverpod(&mut out, class, &json);
                let size = out.len();
                (out, size)
            }
            WireFormat::Native => {
                let mut out = Vec::with_capacity(64);
                frame::write_record(&mut out, class, |out| {
                    rmp_serde::encode::write_named(out, data)
                })
                .map_err(encode_error)?;
                // A Native message travels in a frame: it must fit one with its header.
                let size = out.len() + HEADER_LEN;
                (out, size)
            }
        };
        if size > self.max_message_bytes {
            return Err(PostError::TooLarge {
                size,
                max: self.max_message_bytes,
            });
        }
        Ok(bytes)
    }

    /// Decodes a message of class `class` as an `M`: `None` when `M` does not take that class.
    ///
    /// # Errors
    ///
    /// Why `M` refuses the message, as the text of a `BusEvent::DecodeFailed`: its payload
    /// does not decode as `M`. `class` is then `M`'s own class, not text from the wire.
    pub(crate) fn decode<M: Message>(
        &self,
        class: &str,
        payload: Payload<'_>,
    ) -> Option<Result<M, String>> {
        if TypeId::of::<M>() == TypeId::of::<RevokedAuthentication>() {
            let revocation = match class {
                USER => decode::<UserData>(payload).map(|_| RevokedAuthentication::User),
                AUTH_ID => decode::<AuthIdData>(payload)
                    .map(|d| RevokedAuthentication::AuthId(d.auth_id.into_owned())),
                SCOPE => {
                    decode::<ScopeData>(payload).map(|d| RevokedAuthentication::Scope(d.scopes))
                }
                _ => return None,
            };
            let revocation = revocation.map_err(|reason| undecodable::<M>(class, &reason));
            let boxed: Box<dyn Any> = Box::new(revocation);
            return match boxed.downcast::<Result<M, String>>() {
                Ok(result) => Some(*result),
                Err(_) => unreachable!("M is RevokedAuthentication"),
            };
        }
        (self.class_of::<M>() == class)
            .then(|| decode::<M>(payload).map_err(|reason| undecodable::<M>(class, &reason)))
    }
}

/// Why a payload of class `class` was refused by `M`: serde's `reason`, cut to 256
/// characters.
fn undecodable<M>(class: &str, reason: &str) -> String {
    format!(
        "{class}: payload does not decode as {}: {reason:.256}",
        std::any::type_name::<M>()
    )
}

/// serde refused a value: its error is the cause.
fn encode_error(error: impl std::error::Error + Send + Sync + 'static) -> PostError {
    PostError::Encode(Reason::caused_by(error.to_string(), error))
}

fn decode<'a, T: Deserialize<'a>>(payload: Payload<'a>) -> Result<T, String> {
    match payload {
        Payload::Native(bytes) => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        Payload::Json(text) => serde_json::from_str(text).map_err(|e| e.to_string()),
    }
}

/// `app::models::UserUpdate<T>` becomes `UserUpdate`.
pub(crate) fn default_class_name(type_name: &'static str) -> &'static str {
    let path = type_name.split('<').next().unwrap_or(type_name);
    path.rsplit("::").next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct SimpleData {
        num: i64,
    }

    fn codec(format: WireFormat) -> Codec {
        Codec::new(format, 1 << 20, HashMap::new())
    }

    #[test]
    fn default_class_names_drop_paths_and_generics() {
        assert_eq!(default_class_name("app::models::UserUpdate"), "UserUpdate");
        assert_eq!(default_class_name("alloc::vec::Vec<app::X>"), "Vec");
        assert_eq!(default_class_name("u64"), "u64");
    }

    #[test]
    fn serverpod_payloads_are_serverpods_exactly() {
        let codec = codec(WireFormat::Serverpod);
        let bytes = codec.encode(&SimpleData { num: 42 }).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"className":"SimpleData","data":{"__className__":"SimpleData","num":42}}"#
        );
        let bytes = codec
            .encode(&RevokedAuthentication::AuthId("a1b2".into()))
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"className":"serverpod.RevokedAuthenticationAuthId","data":{"__className__":"serverpod.RevokedAuthenticationAuthId","authId":"a1b2"}}"#
        );
    }

    #[test]
    fn revocations_round_trip_in_both_formats() {
        for format in [WireFormat::Native, WireFormat::Serverpod] {
            let codec = codec(format);
            for revocation in [
                RevokedAuthentication::User,
                RevokedAuthentication::AuthId("a1".into()),
                RevokedAuthentication::Scope(vec!["admin".into(), "chat".into()]),
            ] {
                let bytes = codec.encode(&revocation).unwrap();
                let back: RevokedAuthentication = match format {
                    WireFormat::Native => {
                        let mut bytes_of_frame = Vec::new();
                        frame::write_header(&mut bytes_of_frame, &[0; 16], 1, 1);
                        bytes_of_frame.extend_from_slice(&bytes);
                        let frame = frame::decode_frame(&bytes_of_frame).unwrap();
                        let record = frame.records[0];
                        codec.decode(record.class, Payload::Native(record.payload))
                    }
                    _ => {
                        let message = serverpod::decode_serverpod(&bytes).unwrap();
                        codec.decode(&message.class, Payload::Json(message.data))
                    }
                }
                .unwrap()
                .unwrap();
                assert_eq!(back, revocation);
            }
        }
    }

    #[test]
    fn a_type_takes_only_its_own_class() {
        let codec = codec(WireFormat::Serverpod);
        assert!(codec
            .decode::<SimpleData>("Other", Payload::Json("{\"num\":1}"))
            .is_none());
        assert_eq!(
            codec.decode::<SimpleData>("SimpleData", Payload::Json("{\"num\":1}")),
            Some(Ok(SimpleData { num: 1 }))
        );
        assert!(!codec.knows("SimpleData"));
        codec.learn::<SimpleData>();
        assert!(codec.knows("SimpleData"));
    }

    #[test]
    fn oversized_messages_are_refused_when_posted() {
        let codec = Codec::new(WireFormat::Native, 256, HashMap::new());
        let error = codec.encode(&"x".repeat(300)).unwrap_err();
        assert!(
            matches!(error, PostError::TooLarge { max: 256, .. }),
            "{error:?}"
        );
    }
}
