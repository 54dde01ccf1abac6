//! Serverpod's JSON envelope: the wire format of `WireFormat::Serverpod`.
//!
//! Serverpod publishes compact JSON, `{"className":"SimpleData","data":{...}}`. Since
//! Serverpod 3.x the model in `data` also carries `"__className__"`; 2.x did not write it.
//! [`decode_serverpod`] accepts both (and ignores other top-level keys) and returns `data`
//! as raw JSON text, so that the codec can decode it once per receiver type;
//! [`encode_serverpod`] writes the 3.x form.
//!
//! Decoding is total: serde_json never panics (its recursion limit of 128 stays on; raw
//! values and ignored keys are skipped without recursion). A Serverpod message borrows its
//! `data`, and its class name unless the name contains JSON escapes.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::error::{quote, DecodeError, QUOTE_LEN};
#[cfg(doc)]
use super::frame::MAX_CLASS_LEN;

/// At most this many bytes of a serde_json message are kept. With the envelope parsed as
/// raw values serde_json quotes no input, but nothing here should depend on that.
const JSON_ERROR_LEN: usize = 128;

/// A decoded Serverpod message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerpodMessage<'a> {
    /// `className`.
    pub class: Cow<'a, str>,
    /// The raw JSON text of `data`.
    pub data: &'a str,
}

/// The envelope as parsed: both members as raw JSON, so that a missing member and one of
/// the wrong type get errors of their own.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "className", borrow, default, deserialize_with = "present")]
    class: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

/// A member that is present, whatever its value (`null` included).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Decodes Serverpod's `{"className": .., "data": ..}`. Total.
///
/// Accepts Serverpod 3.x messages (with `__className__` inside `data`) and 2.x ones
/// (without), in any JSON layout, and ignores other top-level keys. `data` is returned as
/// its raw JSON text, of any JSON type; an `Ok` does not mean it decodes as the class's
/// model, nor that its `__className__` matches `className`.
///
/// # Errors
///
/// [`DecodeError::NotUtf8`], [`DecodeError::NotAnObject`], [`DecodeError::Json`] (not JSON,
/// or a duplicate member), [`DecodeError::MissingClassName`],
/// [`DecodeError::ClassNameNotString`], [`DecodeError::EmptyClassName`] and
/// [`DecodeError::MissingData`].
pub fn decode_serverpod(bytes: &[u8]) -> Result<ServerpodMessage<'_>, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|error| DecodeError::NotUtf8 {
        valid_up_to: error.valid_up_to(),
    })?;
    // serde_json would also take `["SimpleData", {..}]` for a struct; Serverpod never
    // writes that.
    if !trim_json_whitespace(text.as_bytes()).starts_with(b"{") {
        return Err(DecodeError::NotAnObject {
            found: quote(text.trim_start(), QUOTE_LEN),
        });
    }
    let envelope: Envelope<'_> = serde_json::from_str(text)
        .map_err(|error| DecodeError::Json(quote(&error.to_string(), JSON_ERROR_LEN)))?;
    let class = envelope.class.ok_or(DecodeError::MissingClassName)?.get();
    let class = json_string(class).ok_or_else(|| DecodeError::ClassNameNotString {
        found: quote(class, QUOTE_LEN),
    })?;
    if class.is_empty() {
        return Err(DecodeError::EmptyClassName);
    }
    let data = envelope.data.ok_or(DecodeError::MissingData)?.get();
    Ok(ServerpodMessage { class, data })
}

/// The value of `raw`, the text of one valid JSON value, if it is a string: borrowed unless
/// it contains escapes.
fn json_string(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        // Valid JSON without escapes: the characters between the quotes are the string.
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

/// Appends Serverpod's envelope of `data_json` (a model serialized by serde_json) to `out`.
///
/// Writes `{"className":<class>,"data":<data>}`, compact, with `class` as a JSON string.
/// When `data_json` is an object, `"__className__":<class>` is inserted as its first member,
/// as Serverpod 3.x writes it: `{}` becomes `{"__className__":"X"}` and `{"num":42}` becomes
/// `{"__className__":"X","num":42}`; an object whose first member already is
/// `"__className__"` is written unchanged, and so is data of any other JSON type. The
/// work is done on bytes, without a `serde_json::Value` round trip.
///
/// `data_json` must be one valid JSON value (as serde_json writes it); the output is then
/// valid JSON. `class` is not validated: callers refuse empty ones and ones past
/// [`MAX_CLASS_LEN`].
pub fn encode_serverpod(out: &mut Vec<u8>, class: &str, data_json: &[u8]) {
    const CLASS_KEY: &[u8] = b"\"__className__\"";
    out.reserve(data_json.len() + 2 * class.len() + 48);
    out.extend_from_slice(b"{\"className\":");
    write_json_string(out, class);
    out.extend_from_slice(b",\"data\":");
    let data = trim_json_whitespace(data_json);
    match data.strip_prefix(b"{") {
        Some(members) if !trim_json_whitespace(members).starts_with(CLASS_KEY) => {
            out.extend_from_slice(b"{\"__className__\":");
            write_json_string(out, class);
            let members = trim_json_whitespace(members);
            if !members.starts_with(b"}") {
                out.push(b',');
            }
            out.extend_from_slice(members);
        }
        _ => out.extend_from_slice(data),
    }
    out.push(b'}');
}

/// Appends `s` as a JSON string, escaped by serde_json.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a `str` into a `Vec` has no way to fail.
    let written = serde_json::to_writer(&mut *out, s);
    debug_assert!(written.is_ok(), "serde_json failed to write a string");
}

/// `bytes` without leading JSON whitespace (space, tab, line feed, carriage return).
fn trim_json_whitespace(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;

    // ---- Serverpod ----------------------------------------------------------------------

    /// The reference file's examples, as published by Serverpod 3.x.
    const SIMPLE: &str =
        r#"{"className":"SimpleData","data":{"__className__":"SimpleData","num":42}}"#;
    const USER: &str = r#"{"className":"serverpod.RevokedAuthenticationUser","data":{"__className__":"serverpod.RevokedAuthenticationUser"}}"#;
    const AUTH_ID: &str = r#"{"className":"serverpod.RevokedAuthenticationAuthId","data":{"__className__":"serverpod.RevokedAuthenticationAuthId","authId":"a1b2"}}"#;
    const SCOPE: &str = r#"{"className":"serverpod.RevokedAuthenticationScope","data":{"__className__":"serverpod.RevokedAuthenticationScope","scopes":["admin"]}}"#;

    #[derive(Serialize)]
    struct SimpleData {
        num: i64,
    }

    #[derive(Serialize)]
    struct RevokedAuthenticationUser {}

    #[derive(Serialize)]
    struct RevokedAuthenticationAuthId {
        #[serde(rename = "authId")]
        auth_id: String,
    }

    #[derive(Serialize)]
    struct RevokedAuthenticationScope {
        scopes: Vec<String>,
    }

    fn serverpod(class: &str, data_json: &[u8]) -> String {
        let mut out = Vec::new();
        encode_serverpod(&mut out, class, data_json);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn serverpod_reference_examples_decode() {
        let cases = [
            (
                SIMPLE,
                "SimpleData",
                r#"{"__className__":"SimpleData","num":42}"#,
            ),
            (
                USER,
                "serverpod.RevokedAuthenticationUser",
                r#"{"__className__":"serverpod.RevokedAuthenticationUser"}"#,
            ),
            (
                AUTH_ID,
                "serverpod.RevokedAuthenticationAuthId",
                r#"{"__className__":"serverpod.RevokedAuthenticationAuthId","authId":"a1b2"}"#,
            ),
            (
                SCOPE,
                "serverpod.RevokedAuthenticationScope",
                r#"{"__className__":"serverpod.RevokedAuthenticationScope","scopes":["admin"]}"#,
            ),
        ];
        for (message, class, data) in cases {
            let decoded = decode_serverpod(message.as_bytes()).unwrap();
            assert_eq!(decoded.class, class);
            assert!(matches!(decoded.class, Cow::Borrowed(_)));
            assert_eq!(decoded.data, data);
        }
    }

    #[test]
    fn serverpod_encode_reproduces_the_reference_examples() {
        let to_vec = |value: &dyn erased::Json| value.json();
        let cases: [(&str, &str, Vec<u8>); 4] = [
            (SIMPLE, "SimpleData", to_vec(&SimpleData { num: 42 })),
            (
                USER,
                "serverpod.RevokedAuthenticationUser",
                to_vec(&RevokedAuthenticationUser {}),
            ),
            (
                AUTH_ID,
                "serverpod.RevokedAuthenticationAuthId",
                to_vec(&RevokedAuthenticationAuthId {
                    auth_id: "a1b2".into(),
                }),
            ),
            (
                SCOPE,
                "serverpod.RevokedAuthenticationScope",
                to_vec(&RevokedAuthenticationScope {
                    scopes: vec!["admin".into()],
                }),
            ),
        ];
        for (message, class, data_json) in cases {
            assert_eq!(serverpod(class, &data_json), message);
            // Re-encoding a decoded 3.x message gives it back unchanged.
            let decoded = decode_serverpod(message.as_bytes()).unwrap();
            assert_eq!(serverpod(&decoded.class, decoded.data.as_bytes()), message);
        }
    }

    /// `serde_json::to_vec` behind a trait object, for a table of models of different types.
    mod erased {
        pub(super) trait Json {
            fn json(&self) -> Vec<u8>;
        }

        impl<T: serde::Serialize> Json for T {
            fn json(&self) -> Vec<u8> {
                serde_json::to_vec(self).unwrap()
            }
        }
    }

    #[test]
    fn serverpod_2x_messages_without_class_in_data_decode() {
        let decoded = decode_serverpod(br#"{"className":"SimpleData","data":{"num":42}}"#).unwrap();
        assert_eq!(decoded.class, "SimpleData");
        assert_eq!(decoded.data, r#"{"num":42}"#);
    }

    #[test]
    fn serverpod_decode_takes_any_layout_and_ignores_extra_keys() {
        let message = b" \n{ \"id\" : [1, {\"a\": null}], \"data\" :\t{ \"num\" : 42 } ,\r\n \"className\" : \"SimpleData\", \"x\": {} } ";
        let decoded = decode_serverpod(message).unwrap();
        assert_eq!(decoded.class, "SimpleData");
        assert_eq!(decoded.data, r#"{ "num" : 42 }"#);
        let decoded = decode_serverpod(br#"{"className":"A","data":null}"#).unwrap();
        assert_eq!(decoded.data, "null");
    }

    #[test]
    fn serverpod_class_names_with_escapes_are_unescaped() {
        let decoded = decode_serverpod(br#"{"className":"a\"b\u00e9\\","data":1}"#).unwrap();
        assert_eq!(decoded.class, "a\"bé\\");
        assert!(matches!(decoded.class, Cow::Owned(_)));
        let decoded = decode_serverpod("{\"className\":\"事件\",\"data\":1}".as_bytes()).unwrap();
        assert_eq!(decoded.class, "事件");
        assert!(matches!(decoded.class, Cow::Borrowed(_)));
    }

    #[test]
    fn serverpod_encode_inserts_the_class_only_into_objects() {
        assert_eq!(
            serverpod("X", b"{}"),
            r#"{"className":"X","data":{"__className__":"X"}}"#
        );
        assert_eq!(
            serverpod("X", br#"{"num":42}"#),
            r#"{"className":"X","data":{"__className__":"X","num":42}}"#
        );
        assert_eq!(serverpod("X", b"42"), r#"{"className":"X","data":42}"#);
        assert_eq!(serverpod("X", br#""s""#), r#"{"className":"X","data":"s"}"#);
        assert_eq!(
            serverpod("X", b"[1,{}]"),
            r#"{"className":"X","data":[1,{}]}"#
        );
        assert_eq!(serverpod("X", b"null"), r#"{"className":"X","data":null}"#);
        // Not what serde_json writes, but still valid JSON out.
        assert_eq!(
            serverpod("X", b"{ }"),
            r#"{"className":"X","data":{"__className__":"X"}}"#
        );
        assert_eq!(
            serverpod("X", b"{ \"a\" : 1 }"),
            r#"{"className":"X","data":{"__className__":"X","a" : 1 }}"#
        );
    }

    #[test]
    fn serverpod_encode_escapes_the_class() {
        let class = "a\"b\\c\n\u{1}é";
        let out = serverpod(class, b"{}");
        assert_eq!(
            out,
            r#"{"className":"a\"b\\c\n\u0001é","data":{"__className__":"a\"b\\c\n\u0001é"}}"#
        );
        assert_eq!(decode_serverpod(out.as_bytes()).unwrap().class, class);
    }

    #[test]
    fn serverpod_encode_appends() {
        let mut out = b"prefix".to_vec();
        encode_serverpod(&mut out, "X", b"1");
        assert_eq!(out, br#"prefix{"className":"X","data":1}"#);
    }

    #[test]
    fn serverpod_decode_refuses_garbage() {
        let cases: [(&[u8], DecodeError, &str); 9] = [
            (
                b"{\"className\":\"\xff\"}",
                DecodeError::NotUtf8 { valid_up_to: 14 },
                "Serverpod message is not UTF-8 (invalid after 14 bytes)",
            ),
            (
                b"",
                DecodeError::NotAnObject { found: String::new() },
                "Serverpod message is not a JSON object: ",
            ),
            (
                br#" ["SimpleData",{"num":42}]"#,
                DecodeError::NotAnObject {
                    found: r#"["SimpleData",{"num":42}]"#.into(),
                },
                r#"Serverpod message is not a JSON object: ["SimpleData",{"num":42}]"#,
            ),
            (
                br#"{"className":"A","data":{}"#,
                DecodeError::Json("EOF while parsing an object at line 1 column 26".into()),
                "Serverpod message is not valid JSON: EOF while parsing an object at line 1 column 26",
            ),
            (
                br#"{"data":{}}"#,
                DecodeError::MissingClassName,
                r#"Serverpod message has no "className""#,
            ),
            (
                br#"{"className":null,"data":{}}"#,
                DecodeError::ClassNameNotString { found: "null".into() },
                r#"Serverpod message's "className" is not a string: null"#,
            ),
            (
                br#"{"className":"","data":{}}"#,
                DecodeError::EmptyClassName,
                r#"Serverpod message's "className" is empty"#,
            ),
            (
                br#"{"className":"A"}"#,
                DecodeError::MissingData,
                r#"Serverpod message has no "data""#,
            ),
            (
                br#"{"className":"A","data":1,"className":"B"}"#,
                DecodeError::Json("duplicate field `className` at line 1 column 37".into()),
                "Serverpod message is not valid JSON: duplicate field `className` at line 1 column 37",
            ),
        ];
        for (bytes, error, text) in cases {
            assert_eq!(
                decode_serverpod(bytes),
                Err(error),
                "{}",
                bytes.escape_ascii()
            );
            assert_eq!(decode_serverpod(bytes).unwrap_err().to_string(), text);
        }
    }

    #[test]
    fn serverpod_decode_survives_deep_nesting() {
        // Raw values and ignored members are skipped without recursion: no stack overflow,
        // whatever the depth.
        let deep = format!(
            r#"{{"className":"A","data":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(decode_serverpod(deep.as_bytes()).unwrap().class, "A");
        let deep = format!(
            r#"{{"className":"A","x":{}1{},"data":1}}"#,
            "{\"a\":".repeat(100_000),
            "}".repeat(100_000)
        );
        assert_eq!(decode_serverpod(deep.as_bytes()).unwrap().class, "A");
        let unclosed = format!(r#"{{"className":"A","data":{}"#, "[".repeat(100_000));
        assert!(matches!(
            decode_serverpod(unclosed.as_bytes()),
            Err(DecodeError::Json(_))
        ));
    }

    fn class() -> impl Strategy<Value = String> {
        vec(any::<char>(), 1..12).prop_map(String::from_iter)
    }

    proptest! {
        #[test]
        fn serverpod_messages_round_trip(
            class in class(),
            num in any::<i64>(),
            text in any::<String>(),
            object in any::<bool>(),
        ) {
            let data = if object {
                serde_json::to_vec(&serde_json::json!({ "num": num, "text": text })).unwrap()
            } else {
                serde_json::to_vec(&text).unwrap()
            };
            let mut out = Vec::new();
            encode_serverpod(&mut out, &class, &data);
            let decoded = decode_serverpod(&out).unwrap();
            prop_assert_eq!(&decoded.class, &class);
            let value: serde_json::Value = serde_json::from_str(decoded.data).unwrap();
            let mut expected: serde_json::Value = serde_json::from_slice(&data).unwrap();
            if let Some(map) = expected.as_object_mut() {
                map.insert("__className__".into(), class.clone().into());
            }
            prop_assert_eq!(value, expected);
            // Encoding is a fixed point after one application.
            let mut again = Vec::new();
            encode_serverpod(&mut again, &decoded.class, decoded.data.as_bytes());
            prop_assert_eq!(again, out);
        }
    }
}
