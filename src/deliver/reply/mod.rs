//! Webhook replies: a backend may answer a delivery with a Bot API call in
//! its 2xx body (`{"method":"sendMessage","chat_id":…,"text":…}`), as
//! Telegram allows for real webhooks. pollhook makes that call on the
//! backend's behalf, so a backend with no internet egress can still answer.
//!
//! Bodies come as JSON, `application/x-www-form-urlencoded` or
//! `multipart/form-data` (aiogram answers in multipart); file parts are
//! passed on as uploads. Only `method` is read: the other parameters go on
//! as the bytes that came, so a reply costs its size once, not a parsed
//! tree several times that.
//!
//! A reply may only call what the forward's `reply_methods` admits (by
//! default the methods that answer a user). Methods that make no sense as a
//! reply (`get*`, `setWebhook`, `deleteWebhook`, `close`, `logOut`) are
//! ignored even if admitted, as Telegram ignores them.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::value::RawValue;

mod body;
mod multipart;
mod runner;

use crate::platform::call::{BotCall, Params};
use crate::policy::methods::MethodSet;
pub(super) use body::{take, Pending, ReadReply, ReplyBody, ReplyBudget};
pub(super) use runner::Replies;

#[derive(Debug)]
pub enum Parsed {
    /// No call in the body (empty, or no `method`).
    Nothing,
    /// A method that is never executed as a reply.
    Ignored(String),
    /// A method `reply_methods` does not admit.
    Refused(String),
    Call(BotCall),
    /// The body claimed an encoding it does not have.
    Invalid(String),
}

fn ignored(method: &str) -> bool {
    let m = method.to_ascii_lowercase();
    m.starts_with("get")
        || matches!(
            m.as_str(),
            "setwebhook" | "deletewebhook" | "close" | "logout"
        )
}

fn decide(method: Option<String>, params: impl FnOnce() -> Params, admitted: &MethodSet) -> Parsed {
    match method {
        None => Parsed::Nothing,
        Some(m) if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric()) => {
            Parsed::Invalid(format!("{m:?} is not a method name"))
        }
        Some(m) if ignored(&m) => Parsed::Ignored(m),
        Some(m) if !admitted.allows(&m) => Parsed::Refused(m),
        Some(method) => Parsed::Call(BotCall {
            method,
            params: params(),
        }),
    }
}

/// Reads a 2xx reply body; `admitted` is the forward's `reply_methods`.
pub fn parse(content_type: Option<&str>, body: Bytes, admitted: &MethodSet) -> Parsed {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Parsed::Nothing;
    }
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("multipart/form-data") {
        return parse_multipart(content_type.unwrap_or(""), &body, admitted);
    }
    if ct.starts_with("application/x-www-form-urlencoded") {
        return parse_form(&body, admitted);
    }
    // JSON, declared or not: many handlers answer without a content type.
    // The values stay raw (borrowed from the body) and only `method` is
    // decoded.
    match serde_json::from_slice::<BTreeMap<String, &RawValue>>(&body) {
        Ok(mut map) => {
            let method = match map.remove("method") {
                Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                    Ok(m) => Some(m),
                    Err(_) => return Parsed::Invalid("\"method\" is not a string".into()),
                },
                None => None,
            };
            decide(
                method,
                || {
                    Params::Json(Bytes::from(
                        serde_json::to_vec(&map).expect("raw JSON values serialise"),
                    ))
                },
                admitted,
            )
        }
        // Valid JSON that is not an object is no call.
        Err(_) if serde_json::from_slice::<&RawValue>(&body).is_ok() => Parsed::Nothing,
        Err(_) if ct.contains("json") => Parsed::Invalid("the body is not valid JSON".into()),
        // Plain text such as "OK" is an ordinary acknowledgement.
        Err(_) => Parsed::Nothing,
    }
}

/// The pairs stay encoded as they came; only the `method` pair is decoded
/// and left out.
fn parse_form(body: &[u8], admitted: &MethodSet) -> Parsed {
    let mut method = None;
    let mut rest: Vec<&[u8]> = Vec::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        match url::form_urlencoded::parse(pair).next() {
            Some((k, v)) if k == "method" => method = Some(v.into_owned()),
            _ => rest.push(pair),
        }
    }
    decide(
        method,
        || Params::Form(Bytes::from(rest.join(&b'&'))),
        admitted,
    )
}

fn parse_multipart(content_type: &str, body: &Bytes, admitted: &MethodSet) -> Parsed {
    let mut parts = match multipart::parse(content_type, body) {
        Ok(p) => p,
        Err(e) => return Parsed::Invalid(e),
    };
    let method = parts
        .iter()
        .rposition(|p| p.name == "method" && p.file_name.is_none())
        .map(|i| parts.remove(i))
        .map(|p| String::from_utf8_lossy(&p.data).into_owned());
    parts.retain(|p| !(p.name == "method" && p.file_name.is_none()));
    decide(method, || Params::Multipart(parts), admitted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn default_set() -> MethodSet {
        MethodSet::parse(crate::policy::methods::DEFAULT_REPLY_METHODS).unwrap()
    }

    fn call(ct: Option<&str>, body: &'static [u8]) -> BotCall {
        match parse(ct, Bytes::from_static(body), &default_set()) {
            Parsed::Call(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_form_and_multipart_replies() {
        let c = call(
            Some("application/json"),
            br#"{"text":"h\u00e9 \"q\"","method":"sendMessage","chat_id":5,"reply_markup":{"a":[1, 2]}}"#,
        );
        assert_eq!(c.method, "sendMessage");
        let Params::Json(json) = &c.params else {
            panic!()
        };
        let v: Value = serde_json::from_slice(json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"chat_id":5,"text":"hé \"q\"","reply_markup":{"a":[1,2]}})
        );
        // Values are passed on as written, escapes and spacing included.
        let text = String::from_utf8_lossy(json);
        assert!(
            text.contains(r#""h\u00e9 \"q\"""#) && text.contains("[1, 2]"),
            "{text}"
        );

        let c = call(
            Some("application/x-www-form-urlencoded"),
            b"method=sendMessage&chat_id=5&&text=a+b%26c",
        );
        assert!(matches!(&c.params, Params::Form(f) if &f[..] == b"chat_id=5&text=a+b%26c"));

        let c = call(
            Some("multipart/form-data; boundary=XX"),
            b"--XX\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\nsendPhoto\r\n--XX\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n5\r\n--XX\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--XX--\r\n",
        );
        assert_eq!(c.method, "sendPhoto");
        let Params::Multipart(parts) = c.params else {
            panic!()
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].file_name.as_deref(), Some("p.png"));
        assert_eq!(&parts[1].data[..], b"\x89PNG");
    }

    #[test]
    fn ignored_refused_empty_and_invalid_bodies() {
        let set = default_set();
        let p = |ct: Option<&str>, body: &'static [u8]| parse(ct, Bytes::from_static(body), &set);
        for body in [
            &br#"{"method":"getMe"}"#[..],
            br#"{"method":"deleteWebhook"}"#,
            br#"{"method":"logOut"}"#,
        ] {
            assert!(matches!(p(None, body), Parsed::Ignored(_)));
        }
        // Ignored even when admitted: Telegram does not run them either.
        let all = MethodSet::parse(&["*"]).unwrap();
        assert!(matches!(
            parse(
                None,
                Bytes::from_static(br#"{"method":"getUpdates"}"#),
                &all
            ),
            Parsed::Ignored(_)
        ));
        for body in [
            &br#"{"method":"setMyName","name":"x"}"#[..],
            br#"{"method":"leaveChat","chat_id":1}"#,
            br#"{"method":"sendGift","user_id":1}"#,
            br#"{"method":"SENDGIFT","user_id":1}"#,
            br#"{"method":"editUserStarSubscription"}"#,
        ] {
            assert!(
                matches!(p(None, body), Parsed::Refused(_)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            parse(
                None,
                Bytes::from_static(br#"{"method":"setMyName"}"#),
                &MethodSet::parse(&["setMyName"]).unwrap()
            ),
            Parsed::Call(_)
        ));
        assert!(matches!(p(None, b""), Parsed::Nothing));
        assert!(matches!(p(Some("text/plain"), b"OK"), Parsed::Nothing));
        assert!(matches!(
            p(Some("application/json"), b"\"OK\""),
            Parsed::Nothing
        ));
        assert!(matches!(
            p(Some("application/json"), br#"{"ok":true}"#),
            Parsed::Nothing
        ));
        assert!(matches!(
            p(Some("application/json"), b"{oops"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(p(None, br#"{"method":5}"#), Parsed::Invalid(_)));
        assert!(matches!(
            p(None, br#"{"method":"../x"}"#),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            p(Some("multipart/form-data"), b"x"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            p(Some("application/x-www-form-urlencoded"), b"chat_id=1"),
            Parsed::Nothing
        ));
    }
}
