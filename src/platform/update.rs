//! What pollhook reads of an update: its id, its kind and the lane it is
//! ordered in. Nothing else is interpreted; the exact bytes travel on.
//!
//! Updates are opaque on purpose (new update types and unknown fields must
//! pass through untouched), so parsing is lenient: a field that is missing or
//! of an unexpected type only means less information, never an error,
//! except for `update_id`, without which the batch cannot be confirmed.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

use crate::platform::utf8::readable;

/// The parsed head of one update plus its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// None only for an update pollhook could not read; it is still stored
    /// and forwarded, because dropping input is worse than passing it on.
    pub update_id: Option<i64>,
    /// The update's type: the first field other than `update_id`
    /// (`message`, `callback_query`, …), or `unknown`.
    pub kind: String,
    /// Updates of one lane are delivered in order, one at a time.
    pub lane: Lane,
    /// `private`, `group`, `supergroup`, `channel`, when the update has a chat.
    pub chat_type: Option<String>,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Everything about one chat.
    Chat(String),
    /// No chat, but a user (inline queries, chosen inline results, …):
    /// one user's actions stay in order.
    User(String),
    /// Neither (polls, for one): the update is ordered with nothing.
    Alone,
}

impl Lane {
    /// The chat's id, for a chat's lane.
    pub fn chat(&self) -> Option<&str> {
        match self {
            Lane::Chat(id) => Some(id),
            _ => None,
        }
    }

    /// A compact textual form for storage: `c:<id>`, `u:<id>` or empty.
    pub fn encode(&self) -> String {
        match self {
            Lane::Chat(id) => format!("c:{id}"),
            Lane::User(id) => format!("u:{id}"),
            Lane::Alone => String::new(),
        }
    }

    pub fn decode(text: &str) -> Lane {
        if let Some(id) = text.strip_prefix("c:") {
            Lane::Chat(id.to_string())
        } else if let Some(id) = text.strip_prefix("u:") {
            Lane::User(id.to_string())
        } else {
            Lane::Alone
        }
    }
}

/// An id that platforms send as a number (Telegram) or a string (MPChat's
/// decimal strings, WWChat's UUIDs). `123` and `"123"` name the same chat.
enum Id {
    Int(i64),
    Text(String),
    /// Anything else (a fraction, an object, …): no id.
    Other,
}

/// Read by hand, as `#[serde(untagged)]` would, minus its cost: untagged
/// buffers every value to try each variant in turn, and ids are read for
/// every update (2 % of the relay's CPU went to parsing updates' heads).
impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an id")
            }
            fn visit_i64<E>(self, n: i64) -> Result<Id, E> {
                Ok(Id::Int(n))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Id, E> {
                Ok(i64::try_from(n).map_or(Id::Other, Id::Int))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Id, E> {
                Ok(Id::Other)
            }
            fn visit_str<E>(self, s: &str) -> Result<Id, E> {
                Ok(Id::Text(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Id, E> {
                Ok(Id::Text(s))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Id, E> {
                Ok(Id::Other)
            }
            fn visit_unit<E>(self) -> Result<Id, E> {
                Ok(Id::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Id, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Id::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Id, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Id::Other)
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Id {
    fn key(self) -> Option<String> {
        match self {
            // UUIDs are case-insensitive; one chat must map to one lane.
            Id::Int(n) => Some(n.to_string()),
            Id::Text(s) if !s.is_empty() => Some(chat_key(s)),
            _ => None,
        }
    }
}

/// A chat id as lanes and filters compare it (UUIDs lower-cased).
pub fn chat_key(id: String) -> String {
    if looks_like_uuid(&id) {
        id.to_ascii_lowercase()
    } else {
        id
    }
}

fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[derive(Deserialize)]
struct HasId {
    id: Option<Id>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
}

/// The fields of an update's body that locate its chat or user.
#[derive(Deserialize)]
struct Body {
    chat: Option<HasId>,
    /// callback_query carries the chat inside its message.
    message: Option<Inner>,
    from: Option<HasId>,
    user: Option<HasId>,
}

#[derive(Deserialize)]
struct Inner {
    chat: Option<HasId>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("update is not a JSON object: {0}")]
    NotAnObject(String),
    #[error("update has no integer update_id")]
    NoUpdateId,
}

/// What a value that is not an object is, without quoting it: serde's own
/// message quotes the input ("invalid type: string \"…\""), and the input
/// is the platform's text, which may hold the token and may be megabytes.
pub(super) fn what_it_is(text: &str, e: &serde_json::Error) -> String {
    match text.trim_start().chars().next() {
        Some('{') if e.is_data() => "it is an object".into(),
        Some('"') => "it is a string".into(),
        Some('[') => "it is an array".into(),
        Some('t' | 'f') => "it is a boolean".into(),
        Some('n') => "it is null".into(),
        Some('-' | '0'..='9') => "it is a number".into(),
        _ => format!("malformed JSON at line {} column {}", e.line(), e.column()),
    }
}

/// An object's top-level fields in document order, values unparsed.
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Fields<'a>, M::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'a RawValue>()? {
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// An update's head as `from_bytes` reads it (the first `update_id`; the
/// kind, the first other field whose value is an object, else the first
/// other field; the kind's body), read in one pass: the slow path reads the
/// fields, then the body again.
struct Head {
    update_id: Option<Id>,
    /// The kind, and its body if its value is an object.
    kind: Option<(String, Option<Body>)>,
}

impl<'de> Deserialize<'de> for Head {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::IgnoredAny;
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Head;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Head, M::Error> {
                let mut head = Head {
                    update_id: None,
                    kind: None,
                };
                // Whether `head.kind` is final: an object-valued field.
                let mut found = false;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "update_id" {
                        match head.update_id {
                            None => head.update_id = Some(map.next_value()?),
                            Some(_) => drop(map.next_value::<IgnoredAny>()?),
                        }
                    } else if found {
                        map.next_value::<IgnoredAny>()?;
                    } else if let Some(body) = map.next_value::<MaybeBody>()?.0 {
                        head.kind = Some((key, Some(body)));
                        found = true;
                    } else if head.kind.is_none() {
                        head.kind = Some((key, None));
                    }
                }
                Ok(head)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A field's value: read as a [`Body`] when it is an object, skipped
/// otherwise.
struct MaybeBody(Option<Body>);

impl<'de> Deserialize<'de> for MaybeBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = MaybeBody;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<MaybeBody, M::Error> {
                let body = Body::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(MaybeBody(Some(body)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeBody, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeBody(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeBody, E> {
                Ok(MaybeBody(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeBody, E> {
                Ok(MaybeBody(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeBody, E> {
                Ok(MaybeBody(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeBody, E> {
                Ok(MaybeBody(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<MaybeBody, E> {
                Ok(MaybeBody(None))
            }
            fn visit_unit<E>(self) -> Result<MaybeBody, E> {
                Ok(MaybeBody(None))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Update {
    pub fn parse(raw: &RawValue) -> Result<Update, ParseError> {
        Update::from_bytes(raw.get().as_bytes())
    }

    /// Reads the head of one update from its exact bytes, which become the
    /// payload unchanged, even where they are not valid UTF-8 (the head is
    /// read from a same-length view, see [`readable`]).
    pub fn from_bytes(payload: &[u8]) -> Result<Update, ParseError> {
        match Update::at_once(payload) {
            Some(update) => Ok(update),
            None => Update::field_by_field(payload),
        }
    }

    /// `from_bytes` for any input: the fields, then the body.
    fn field_by_field(payload: &[u8]) -> Result<Update, ParseError> {
        let text = readable(payload);
        let Fields(fields) = serde_json::from_str(&text)
            .map_err(|e| ParseError::NotAnObject(what_it_is(&text, &e)))?;
        let update_id = fields
            .iter()
            .find(|(k, _)| k == "update_id")
            .and_then(|(_, v)| match serde_json::from_str::<Id>(v.get()).ok()? {
                // MPChat may send ids as decimal strings.
                Id::Int(n) => Some(n),
                Id::Text(s) => s.trim().parse().ok(),
                Id::Other => None,
            })
            .ok_or(ParseError::NoUpdateId)?;
        // The kind is the body field: the first field, in the document's
        // order, whose value is an object; a platform's extra top-level
        // scalars (a timestamp, say) must not be taken for it.
        let others = || fields.iter().filter(|(k, _)| k != "update_id");
        let (kind, body) = match others()
            .find(|(_, v)| v.get().starts_with('{'))
            .or_else(|| others().next())
        {
            Some((k, v)) => (k.clone(), Some(*v)),
            None => ("unknown".to_string(), None),
        };
        let (lane, chat_type) = body
            .and_then(|b| serde_json::from_str::<Body>(b.get()).ok())
            .map(lane_of)
            .unwrap_or((Lane::Alone, None));
        Ok(Update {
            update_id: Some(update_id),
            kind,
            lane,
            chat_type,
            payload: payload.to_vec(),
        })
    }

    /// The usual update (valid UTF-8, an object, an integer `update_id`,
    /// a body that reads) in one pass over its JSON; None for anything
    /// else, which `from_bytes` then reads field by field as before. Where
    /// this returns an update, it is the one `from_bytes`'s slow path
    /// would: a body that would not read, there or here, makes this give up.
    fn at_once(payload: &[u8]) -> Option<Update> {
        let text = std::str::from_utf8(payload).ok()?;
        let head: Head = serde_json::from_str(text).ok()?;
        let update_id = match head.update_id? {
            Id::Int(n) => n,
            Id::Text(s) => s.trim().parse().ok()?,
            Id::Other => return None,
        };
        let (kind, (lane, chat_type)) = match head.kind {
            Some((kind, Some(body))) => (kind, lane_of(body)),
            Some((kind, None)) => (kind, (Lane::Alone, None)),
            None => ("unknown".to_string(), (Lane::Alone, None)),
        };
        Some(Update {
            update_id: Some(update_id),
            kind,
            lane,
            chat_type,
            payload: payload.to_vec(),
        })
    }

    /// An update that could not be read: forwarded as is, ordered with nothing.
    pub fn opaque(payload: &[u8]) -> Update {
        Update {
            update_id: None,
            kind: "unknown".to_string(),
            lane: Lane::Alone,
            chat_type: None,
            payload: payload.to_vec(),
        }
    }
}

fn lane_of(body: Body) -> (Lane, Option<String>) {
    let chat = body.chat.or(body.message.and_then(|m| m.chat));
    let chat_type = chat
        .as_ref()
        .and_then(|c| c.kind.as_ref())
        .and_then(|t| t.as_str())
        .map(str::to_string);
    if let Some(id) = chat.and_then(|c| c.id).and_then(Id::key) {
        return (Lane::Chat(id), chat_type);
    }
    match body.from.or(body.user).and_then(|u| u.id).and_then(Id::key) {
        Some(id) => (Lane::User(id), None),
        None => (Lane::Alone, None),
    }
}

/// An update's id for log fields: `update_id=244272513`, or `none` for an
/// update that has no readable id.
pub struct LogId(pub Option<i64>);

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Update, ParseError> {
        let raw: Box<RawValue> = serde_json::from_str(s).unwrap();
        Update::parse(&raw)
    }

    /// The one-pass reading must give what the field-by-field one gives,
    /// for every shape it takes on (and it must take on the usual ones).
    #[test]
    fn one_pass_reads_what_field_by_field_reads() {
        let usual = [
            r#"{"update_id":7,"message":{"message_id":1,"chat":{"id":-100,"type":"group"},"from":{"id":5},"text":"a \"b\" \u00e9"}}"#,
            r#"{"update_id":8,"callback_query":{"id":"x","from":{"id":5},"message":{"chat":{"id":42}}}}"#,
            r#"{"update_id":"77","message":{"chat":{"id":"0B7E8F3A-6F5C-4F7A-9D1E-2C3B4A5D6E7F"}}}"#,
            r#"{"update_id":9,"inline_query":{"id":"q","from":{"id":77},"query":""}}"#,
            r#"{"update_id":10,"poll":{"id":"p","question":"?"}}"#,
            r#"{"update_id":11, "future_thing" : {"chat":{"id":[1]}}, "x":1}"#,
            r#"{"update_id":12,"a_timestamp":5,"message":{"chat":{"id":1,"type":"group"}}}"#,
            r#"{"update_id":13,"zzz":{"chat":{"id":2}},"aaa":{"x":1}}"#,
            r#"{"a":[1,{"b":2}],"update_id":14,"b":"text","my_chat_member":{"chat":{"id":3},"from":{"id":4}}}"#,
            r#"{"update_id":15}"#,
            r#"{"update_id":16,"x":null,"y":true}"#,
            r#"{"update_id":17,"update_id":18,"message":{"chat":{"id":1.5},"user":{"id":"u"}}}"#,
            r#"{"update_id":19,"mess\u0061ge":{"chat":{"id":1,"type":{"odd":1}}}}"#,
            r#" {"update_id":20,"message":{}} "#,
            // Only the kind's body is read as one.
            r#"{"update_id":23,"message":{"chat":{"id":1}},"other":{"from":7}}"#,
        ];
        for text in usual {
            let fast = Update::at_once(text.as_bytes());
            assert!(fast.is_some(), "not read in one pass: {text}");
            let slow = Update::field_by_field(text.as_bytes()).unwrap();
            assert_eq!(fast.unwrap(), slow, "{text}");
        }
        // Shapes the one pass leaves to the slow path, which must still
        // read them as it always did.
        let odd: [&[u8]; 8] = [
            br#"{"update_id":21, "future_thing" : {"chat":"weird"}, "x":1}"#,
            br#"{"update_id":22,"message":{"chat":{"id":1},"chat":{"id":2}}}"#,
            br#"{"update_id":"x1","message":{}}"#,
            br#"{"update_id":1.5}"#,
            br#"{"message":{"chat":{"id":1}}}"#,
            b"{\"update_id\":24,\"message\":{\"text\":\"\xff\",\"chat\":{\"id\":9}}}",
            br#"[1,2]"#,
            br#"{"update_id":25,"message":{"chat":{"id":1}}"#,
        ];
        for bytes in odd {
            assert_eq!(
                Update::at_once(bytes),
                None,
                "{}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(
                Update::from_bytes(bytes),
                Update::field_by_field(bytes),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let weird = Update::from_bytes(odd[0]).unwrap();
        assert_eq!(
            (weird.kind.as_str(), weird.lane),
            ("future_thing", Lane::Alone)
        );
        let bad_utf8 = Update::from_bytes(odd[5]).unwrap();
        assert_eq!(
            (bad_utf8.update_id, bad_utf8.payload.as_slice()),
            (Some(24), odd[5])
        );
    }

    #[test]
    fn message_lane_is_its_chat() {
        let u = parse(r#"{"update_id":7,"message":{"message_id":1,"chat":{"id":-100,"type":"group"},"from":{"id":5}}}"#).unwrap();
        assert_eq!(
            (u.update_id, u.kind.as_str(), u.lane),
            (Some(7), "message", Lane::Chat("-100".into()))
        );
    }

    #[test]
    fn callback_query_lane_is_the_chat_of_its_message() {
        let u = parse(r#"{"update_id":8,"callback_query":{"id":"x","from":{"id":5},"message":{"chat":{"id":42}}}}"#).unwrap();
        assert_eq!(u.lane, Lane::Chat("42".into()));
    }

    #[test]
    fn string_and_number_ids_share_a_lane() {
        let a = parse(r#"{"update_id":1,"message":{"chat":{"id":"123"}}}"#).unwrap();
        let b = parse(r#"{"update_id":2,"message":{"chat":{"id":123}}}"#).unwrap();
        assert_eq!(a.lane, b.lane);
        let uuid = parse(
            r#"{"update_id":3,"message":{"chat":{"id":"0b7e8f3a-6f5c-4f7a-9d1e-2c3b4a5d6e7f"}}}"#,
        )
        .unwrap();
        assert_eq!(
            uuid.lane,
            Lane::Chat("0b7e8f3a-6f5c-4f7a-9d1e-2c3b4a5d6e7f".into())
        );
    }

    #[test]
    fn inline_query_falls_back_to_the_user_and_poll_stands_alone() {
        let u = parse(r#"{"update_id":9,"inline_query":{"id":"q","from":{"id":77},"query":""}}"#)
            .unwrap();
        assert_eq!(u.lane, Lane::User("77".into()));
        let p = parse(r#"{"update_id":10,"poll":{"id":"p","question":"?"}}"#).unwrap();
        assert_eq!(p.lane, Lane::Alone);
    }

    #[test]
    fn unknown_kinds_and_odd_shapes_pass_with_exact_bytes() {
        let text = r#"{"update_id":11, "future_thing" : {"chat":"weird"}, "x":1}"#;
        let u = parse(text).unwrap();
        assert_eq!(u.payload, text.as_bytes());
        assert_eq!(u.lane, Lane::Alone);
        assert_eq!(u.kind, "future_thing");
    }

    #[test]
    fn the_kind_is_the_body_field_even_after_extra_scalars() {
        let u =
            parse(r#"{"update_id":12,"a_timestamp":5,"message":{"chat":{"id":1,"type":"group"}}}"#)
                .unwrap();
        assert_eq!(
            (u.kind.as_str(), u.chat_type.as_deref()),
            ("message", Some("group"))
        );
        let z = parse(r#"{"update_id":13,"zzz":{"chat":{"id":2}},"aaa":{"x":1}}"#).unwrap();
        assert_eq!(z.kind, "zzz", "document order, not alphabetical");
    }

    #[test]
    fn string_update_ids_and_uuid_case() {
        let u = parse(r#"{"update_id":"77","message":{"chat":{"id":"0B7E8F3A-6F5C-4F7A-9D1E-2C3B4A5D6E7F"}}}"#).unwrap();
        assert_eq!(u.update_id, Some(77));
        assert_eq!(
            u.lane,
            Lane::Chat("0b7e8f3a-6f5c-4f7a-9d1e-2c3b4a5d6e7f".into())
        );
        let other = parse(r#"{"update_id":1,"message":{"chat":{"id":"Alice"}}}"#).unwrap();
        assert_eq!(
            other.lane,
            Lane::Chat("Alice".into()),
            "only UUIDs are case-folded"
        );
    }

    #[test]
    fn invalid_utf8_is_read_around_and_kept_byte_for_byte() {
        let bytes = b"{\"update_id\":14,\"message\":{\"chat\":{\"id\":3},\"text\":\"a\xFF\xFEb\"}}";
        let u = Update::from_bytes(bytes).unwrap();
        assert_eq!(
            (u.update_id, u.kind.as_str(), &u.lane),
            (Some(14), "message", &Lane::Chat("3".into()))
        );
        assert_eq!(u.payload, bytes);
    }

    #[test]
    fn out_of_range_ids_are_read_as_sent_or_not_at_all() {
        let max = parse(r#"{"update_id":9223372036854775807,"message":{}}"#).unwrap();
        assert_eq!(max.update_id, Some(i64::MAX));
        let negative = parse(r#"{"update_id":-5,"message":{}}"#).unwrap();
        assert_eq!(negative.update_id, Some(-5));
        // Above i64: no id, not a wrapped one.
        assert_eq!(
            parse(r#"{"update_id":18446744073709551615,"message":{}}"#),
            Err(ParseError::NoUpdateId)
        );
    }

    #[test]
    fn ids_that_are_not_numbers_or_strings_give_no_lane_and_no_error() {
        for id in [
            "1.5",
            "true",
            "null",
            "[1,2]",
            r#"{"a":[1,{"b":2}]}"#,
            "18446744073709551615",
        ] {
            let chat = parse(&format!(
                r#"{{"update_id":3,"message":{{"chat":{{"id":{id},"type":"group"}},"text":"x"}}}}"#
            ))
            .unwrap();
            assert_eq!(
                (chat.update_id, &chat.lane),
                (Some(3), &Lane::Alone),
                "chat id {id}"
            );
            let user = parse(&format!(
                r#"{{"update_id":4,"inline_query":{{"from":{{"id":{id}}},"query":""}}}}"#
            ))
            .unwrap();
            assert_eq!(user.lane, Lane::Alone, "user id {id}");
            assert_eq!(
                parse(&format!(r#"{{"update_id":{id},"message":{{}}}}"#)),
                Err(ParseError::NoUpdateId),
                "update_id {id}"
            );
        }
        let negative = parse(r#"{"update_id":5,"message":{"chat":{"id":-1001234}}}"#).unwrap();
        assert_eq!(negative.lane, Lane::Chat("-1001234".into()));
    }

    #[test]
    fn missing_update_id_is_an_error_not_a_panic() {
        assert_eq!(parse(r#"{"message":{}}"#), Err(ParseError::NoUpdateId));
        assert!(matches!(parse("[1]"), Err(ParseError::NotAnObject(_))));
    }

    #[test]
    fn lane_round_trips_through_its_encoding() {
        for l in [Lane::Chat("-1".into()), Lane::User("u".into()), Lane::Alone] {
            assert_eq!(Lane::decode(&l.encode()), l);
        }
    }
}
