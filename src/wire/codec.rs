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
//! # One type per own name
//!
//! A class that is a type's own name (the default, or the same name set explicitly to pin
//! it) says which model a message is, so on one bus it names one type. `a::Event` and
//! `b::Event` would both be `"Event"`, as would `Page<User>` and `Page<Order>`: the first of
//! them the bus uses (a listener or stream registered, a global post made) *claims* the
//! class for the life of the bus, and the other is *in conflict* with it:
//!
//! - its global posts fail with [`PostError::Encode`], whose text names both types and says
//!   to set `BusBuilder::class_name` for one of them;
//! - messages of that class are not delivered to its receivers: the message counts as a
//!   decode error, reported as `BusEvent::DecodeFailed` with the same text (G09), while the
//!   receivers of the type that claimed the class get it as usual.
//!
//! The default name itself never changes (Serverpod interop depends on it), and registration
//! cannot fail, so this is where the conflict shows. Which of the two claims the class
//! depends on the order of use: resolve a conflict rather than rely on that order. The rule
//! holds within a bus: the wire carries only the class name, so another process that knows
//! only `b::Event` takes `a::Event`'s messages for its own (or refuses them, when the shapes
//! differ). That is why types that cross process boundaries want explicit names.
//!
//! A type given a name other than its own (`class_name::<EventSummary>("Event")`) claims
//! nothing and is never in conflict: it reads and writes that class on purpose, beside the
//! class's own type, for example as a tolerant view with optional fields. Such types share a
//! class, and each decodes a received message by itself: when one refuses it, the others
//! still get it, and the refusal is reported once.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::format::WireFormat;
use super::frame::{self, HEADER_LEN, MAX_CLASS_LEN};
use super::mac::Keys;
use super::serverpod;
use crate::error::{PostError, Reason};
use crate::message::Message;
use crate::revocation::RevokedAuthentication;

/// Bytes of an encoded post held inline, without an allocation: a record of a small message
/// (its class name and a few fields) fits.
pub(crate) const INLINE: usize = 64;

/// One post, encoded: a Native record or a whole Serverpod payload.
///
/// A post is encoded on the posting thread and freed on the publisher's. With glibc's
/// allocator a buffer freed on another thread goes back to its arena under a lock and is
/// merged on the next allocation there; that took about a fifth of the CPU of the
/// `global_throughput` bench (`perf`, 2026-12). Up to [`INLINE`] bytes travel in the queue's
/// slot instead; a larger post takes one allocation, as before.
pub(crate) type Encoded = smallvec::SmallVec<[u8; INLINE]>;

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
    names: foldhash::HashMap<TypeId, Arc<str>>,
    /// Classes this bus takes: of every type that was ever a receiver here, and every name
    /// set explicitly. A received class outside it is refused as unknown (G09); a known
    /// class that no receiver of the channel takes is a type mismatch (L05).
    known: RwLock<foldhash::HashSet<Arc<str>>>,
    /// The frame MAC keys (`BusBuilder::signing_key`).
    pub(crate) keys: Keys,
    /// Per class that is some type's own name: the first such type this bus used, which
    /// keeps it (see "One type per own name" above).
    claims: RwLock<foldhash::HashMap<Arc<str>, Claimant>>,
    /// Tells this codec from every other one in the process, for [`CLAIMED`].
    id: u64,
}

thread_local! {
    /// Where this thread encodes a Native record before it is copied into an [`Encoded`].
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// The last (codec, type) whose claim this thread found in effect. A claim is never
    /// withdrawn, so this stays true: the next post or receive of that type on that bus, on
    /// this thread, skips the shared lock and the lookup (two cache misses when another
    /// thread used the lock meanwhile).
    static CLAIMED: Cell<Option<(u64, TypeId)>> = const { Cell::new(None) };
}

/// The type that claimed a class.
#[derive(Clone, Copy)]
struct Claimant {
    id: TypeId,
    name: &'static str,
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
        static CODECS: AtomicU64 = AtomicU64::new(0);
        let known = names.values().cloned().collect();
        Codec {
            format,
            max_message_bytes,
            names: names.into_iter().collect(),
            known: RwLock::new(known),
            keys: Keys::default(),
            claims: RwLock::default(),
            id: CODECS.fetch_add(1, Relaxed),
        }
    }

    /// The same codec, signing and verifying Native frames with `keys`.
    pub(crate) fn with_keys(mut self, keys: Keys) -> Self {
        self.keys = keys;
        self
    }

    /// The wire class of `M`.
    pub(crate) fn class_of<M: 'static>(&self) -> &str {
        let named = match self.names.is_empty() {
            true => None,
            false => self.names.get(&TypeId::of::<M>()),
        };
        match named {
            Some(name) => name,
            None => default_class_of::<M>(),
        }
    }

    /// Records that `M` has a receiver on this bus, so its class is known, and claims the
    /// class when it is `M`'s own name and unclaimed.
    pub(crate) fn learn<M: Message>(&self) {
        if TypeId::of::<M>() == TypeId::of::<RevokedAuthentication>() {
            return;
        }
        let class = self.class_of::<M>();
        if !self.known.read().contains(class) {
            self.known.write().insert(Arc::from(class));
        }
        // Registration cannot fail: a conflict shows when `M` is posted or received.
        let _ = self.claim::<M>(class);
    }

    /// Whether `M` may use `class`, its wire class, on this bus; claims `class` for `M` when
    /// it is `M`'s own name and no type claimed it yet.
    ///
    /// # Errors
    ///
    /// The conflict, naming both types, when `class` is `M`'s own name and another type
    /// claimed it first.
    fn claim<M: 'static>(&self, class: &str) -> Result<(), String> {
        let this = Some((self.id, TypeId::of::<M>()));
        if CLAIMED.with(Cell::get) == this {
            return Ok(());
        }
        let name = std::any::type_name::<M>();
        if default_class_of::<M>() != class {
            return Ok(());
        }
        let me = Claimant {
            id: TypeId::of::<M>(),
            name,
        };
        // Bound first: the read guard must be gone before the write lock is taken.
        let claimed = self.claims.read().get(class).copied();
        let owner = match claimed {
            Some(owner) => owner,
            None => *self.claims.write().entry(class.into()).or_insert(me),
        };
        if owner.id == me.id {
            CLAIMED.with(|claimed| claimed.set(this));
            return Ok(());
        }
        Err(format!(
            "class name {class:?} is used by both {} and {name} on this bus; \
             set BusBuilder::class_name for one of them",
            owner.name
        ))
    }

    /// Whether some receiver type of this bus takes `class`.
    pub(crate) fn knows(&self, class: &str) -> bool {
        matches!(class, USER | AUTH_ID | SCOPE) || self.known.read().contains(class)
    }

    /// Encodes `message` for the publish queue, a Native record or a whole Serverpod
    /// payload, and hands the bytes to `hand`: borrowed from this thread's scratch buffer when
    /// they are small (so the queue's slot is the one copy), owned otherwise.
    ///
    /// # Errors
    ///
    /// [`PostError::Encode`] when serde refuses the value, the class name is too long, or
    /// `M` is in conflict for its class (see "One type per own name" above);
    /// [`PostError::TooLarge`] past `max_message_bytes`. `hand` is not called then.
    pub(crate) fn encode_with<M: Message, R>(
        &self,
        message: &M,
        hand: impl FnOnce(Cow<'_, [u8]>) -> R,
    ) -> Result<R, PostError> {
        match (message as &dyn Any).downcast_ref::<RevokedAuthentication>() {
            Some(RevokedAuthentication::User) => self.encode_as(USER, &UserData {}, hand),
            Some(RevokedAuthentication::AuthId(id)) => self.encode_as(
                AUTH_ID,
                &AuthIdData {
                    auth_id: Cow::Borrowed(id),
                },
                hand,
            ),
            Some(RevokedAuthentication::Scope(scopes)) => self.encode_as(
                SCOPE,
                &ScopeData {
                    scopes: scopes.clone(),
                },
                hand,
            ),
            None => {
                let class = self.class_of::<M>();
                self.claim::<M>(class)
                    .map_err(|conflict| PostError::Encode(Reason::new(conflict)))?;
                self.encode_as(class, message, hand)
            }
        }
    }

    /// [`Codec::encode_with`], into a `Vec`.
    #[cfg(test)]
    pub(crate) fn encode<M: Message>(&self, message: &M) -> Result<Vec<u8>, PostError> {
        self.encode_with(message, |bytes| bytes.into_owned())
    }

    fn encode_as<T: Serialize + ?Sized, R>(
        &self,
        class: &str,
        data: &T,
        hand: impl FnOnce(Cow<'_, [u8]>) -> R,
    ) -> Result<R, PostError> {
        if class.is_empty() || class.len() > MAX_CLASS_LEN {
            return Err(PostError::Encode(Reason::new(format!(
                "class name of {} bytes; it must have 1 to {MAX_CLASS_LEN}",
                class.len()
            ))));
        }
        match self.format {
            WireFormat::Serverpod => {
                let json = serde_json::to_vec(data).map_err(encode_error)?;
                let mut out = Vec::with_capacity(json.len() + 2 * class.len() + 48);
                serverpod::encode_serverpod(&mut out, class, &json);
                self.fits(out.len())?;
                Ok(hand(Cow::Owned(out)))
            }
            WireFormat::Native => {
                // Written into this thread's scratch `Vec`, whose one-byte writes (most of
                // MessagePack's) are a capacity check and a store: into the inline
                // `Encoded` directly, each took a call and twice the time. A post from a
                // thread-local destructor, after the scratch is gone, writes a new `Vec`.
                let mut out = SCRATCH.try_with(Cell::take).unwrap_or_default();
                out.clear();
                let written = frame::write_record(&mut out, class, |out| {
                    rmp_serde::encode::write_named(out, data)
                })
                .map_err(encode_error)
                // A Native message travels in a frame: it must fit one with its header (and
                // its MAC, when frames are signed).
                .and_then(|()| self.fits(out.len() + HEADER_LEN + self.keys.overhead()));
                let handed = match written {
                    Err(error) => Err(error),
                    Ok(()) if out.len() <= INLINE => Ok(hand(Cow::Borrowed(&out))),
                    // Larger: the scratch buffer itself goes, not a copy of it, and the
                    // thread keeps no buffer the size of its largest post.
                    Ok(()) => return Ok(hand(Cow::Owned(out))),
                };
                // `Cell::replace`, not `LocalKey::set`, which takes a lazy-init path.
                let _ = SCRATCH.try_with(|scratch| scratch.replace(out));
                handed
            }
        }
    }

    /// `Ok` when a message of `size` bytes on the wire is within `max_message_bytes`.
    fn fits(&self, size: usize) -> Result<(), PostError> {
        if size > self.max_message_bytes {
            return Err(PostError::TooLarge {
                size,
                max: self.max_message_bytes,
            });
        }
        Ok(())
    }

    /// Decodes a message of class `class` as an `M`: `None` when `M` does not take that class.
    ///
    /// # Errors
    ///
    /// Why `M` refuses the message, as the text of a `BusEvent::DecodeFailed`: its payload
    /// does not decode as `M`, or `M` is in conflict for the class (see "One type per own
    /// name" above). `class` is then `M`'s own class, not text from the wire.
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
        if self.class_of::<M>() != class {
            return None;
        }
        Some(
            self.claim::<M>(class).and_then(|()| {
                decode::<M>(payload).map_err(|reason| undecodable::<M>(class, &reason))
            }),
        )
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

/// [`default_class_name`] of `M`, remembered per thread for the type it was last asked for:
/// a thread that posts or receives one type asks for it on every message.
fn default_class_of<M: 'static>() -> &'static str {
    thread_local! {
        static LAST: Cell<Option<(TypeId, &'static str)>> = const { Cell::new(None) };
    }
    let id = TypeId::of::<M>();
    LAST.with(|last| match last.get() {
        Some((cached, class)) if cached == id => class,
        _ => {
            let class = default_class_name(std::any::type_name::<M>());
            last.set(Some((id, class)));
            class
        }
    })
}

/// `app::models::UserUpdate<T>` becomes `UserUpdate`.
pub(crate) fn default_class_name(type_name: &'static str) -> &'static str {
    // Single-byte searches (memchr): `str`'s pattern searchers set up a two-way search for
    // "::" on every call, on every post.
    let path = match type_name.find('<') {
        Some(end) => &type_name[..end],
        None => type_name,
    };
    match path.rfind(':') {
        Some(colon) => &path[colon + 1..],
        None => path,
    }
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
                        frame::write_header(&mut bytes_of_frame, &[0; 16], 1, 1, 0);
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

    mod a {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        pub struct Event {
            pub id: u64,
        }
    }

    mod b {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        pub struct Event {
            pub id: u64,
        }
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Summary {
        id: Option<u64>,
    }

    #[test]
    fn a_types_own_name_belongs_to_the_first_type_that_uses_it() {
        let codec = codec(WireFormat::Serverpod);
        codec.learn::<a::Event>();
        codec.learn::<b::Event>();
        assert!(codec.encode(&a::Event { id: 1 }).is_ok());
        let Err(PostError::Encode(reason)) = codec.encode(&b::Event { id: 1 }) else {
            panic!("b::Event is in conflict for \"Event\"");
        };
        let a_name = std::any::type_name::<a::Event>();
        let b_name = std::any::type_name::<b::Event>();
        assert!(
            reason.contains(a_name) && reason.contains(b_name),
            "{reason}"
        );
        assert!(reason.contains("BusBuilder::class_name"), "{reason}");
        let json = Payload::Json("{\"id\":1}");
        assert_eq!(
            codec.decode::<a::Event>("Event", json),
            Some(Ok(a::Event { id: 1 }))
        );
        assert_eq!(
            codec.decode::<b::Event>("Event", json),
            Some(Err(reason.to_string()))
        );
    }

    #[test]
    fn a_post_claims_a_name_as_a_registration_does() {
        let codec = codec(WireFormat::Native);
        assert!(codec.encode(&b::Event { id: 1 }).is_ok());
        codec.learn::<a::Event>();
        assert!(codec.encode(&a::Event { id: 1 }).is_err());
        assert!(codec.encode(&b::Event { id: 2 }).is_ok());
    }

    #[test]
    fn a_name_pinned_to_its_own_type_is_claimed_like_a_default() {
        let names = HashMap::from([(TypeId::of::<b::Event>(), Arc::from("Event"))]);
        let codec = Codec::new(WireFormat::Native, 1 << 20, names);
        codec.learn::<b::Event>();
        codec.learn::<a::Event>();
        assert!(codec.encode(&b::Event { id: 1 }).is_ok());
        assert!(codec.encode(&a::Event { id: 1 }).is_err());
    }

    #[test]
    fn a_type_named_after_another_shares_its_class_without_conflict() {
        let names = HashMap::from([(TypeId::of::<Summary>(), Arc::from("Event"))]);
        let codec = Codec::new(WireFormat::Serverpod, 1 << 20, names);
        codec.learn::<Summary>();
        codec.learn::<a::Event>();
        assert!(codec.encode(&Summary { id: None }).is_ok());
        assert!(codec.encode(&a::Event { id: 1 }).is_ok());
        let json = Payload::Json("{\"id\":\"seven\"}");
        let Some(Err(reason)) = codec.decode::<Summary>("Event", json) else {
            panic!("a string id does not decode as an Option<u64>");
        };
        assert!(
            reason.contains(std::any::type_name::<Summary>()),
            "the refusal names the type: {reason}"
        );
    }

    #[test]
    fn small_records_are_lent_from_scratch_and_large_ones_handed_over() {
        let codec = codec(WireFormat::Native);
        let record = |text: &str| {
            let mut out = Vec::new();
            frame::write_record(&mut out, "String", |out| {
                rmp_serde::encode::write_named(out, text)
            })
            .unwrap();
            out
        };
        // Small, large, then small again: the scratch buffer given away with the large one
        // leaves nothing of it in the next.
        for text in ["hi", &"x".repeat(INLINE * 4), "hello"] {
            let handed = codec
                .encode_with(&text.to_string(), |bytes| {
                    (matches!(bytes, Cow::Borrowed(_)), bytes.into_owned())
                })
                .unwrap();
            assert_eq!(
                handed,
                (record(text).len() <= INLINE, record(text)),
                "{text}"
            );
        }
        // A refused message leaves the scratch buffer usable, and is never handed.
        let small = Codec::new(WireFormat::Native, HEADER_LEN + 16, HashMap::new());
        assert!(small
            .encode_with(&"y".repeat(64), |_| unreachable!())
            .is_err());
        let handed = small.encode_with(&"z".to_string(), |bytes| bytes.into_owned());
        assert_eq!(handed.unwrap(), record("z"));
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
