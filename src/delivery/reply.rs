//! Webhook replies: a backend may answer a delivery with a Bot API call in
//! its 2xx body (`{"method":"sendMessage","chat_id":…,"text":…}`), as
//! Telegram allows for real webhooks. pollhook makes that call on the
//! backend's behalf, so a backend with no internet egress can still answer.
//!
//! Bodies come as JSON, `application/x-www-form-urlencoded` or
//! `multipart/form-data` (aiogram answers in multipart); file parts are
//! passed on as uploads. Methods that make no sense as a reply (`get*`,
//! `setWebhook`, `deleteWebhook`, `close`, `logOut`) are ignored, as
//! Telegram ignores them.

use bytes::Bytes;
use serde_json::{Map, Value};

/// A Bot API call's parameters, in the encoding they arrived in.
#[derive(Debug, Clone)]
pub enum Params {
    Json(Map<String, Value>),
    Form(Vec<(String, String)>),
    Multipart(Vec<Part>),
}

#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

#[derive(Debug, Clone)]
pub struct BotCall {
    pub method: String,
    pub params: Params,
}

#[derive(Debug)]
pub enum Parsed {
    /// No call in the body (empty, or no `method`).
    Nothing,
    /// A method that is not executed as a reply.
    Ignored(String),
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

fn decide(method: Option<String>, params: Params) -> Parsed {
    match method {
        None => Parsed::Nothing,
        Some(m) if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric()) => {
            Parsed::Invalid(format!("{m:?} is not a method name"))
        }
        Some(m) if ignored(&m) => Parsed::Ignored(m),
        Some(method) => Parsed::Call(BotCall { method, params }),
    }
}

/// Reads a 2xx reply body.
pub async fn parse(content_type: Option<&str>, body: Bytes) -> Parsed {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Parsed::Nothing;
    }
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("multipart/form-data") {
        return parse_multipart(content_type.unwrap_or(""), body).await;
    }
    if ct.starts_with("application/x-www-form-urlencoded") {
        let mut method = None;
        let mut pairs = Vec::new();
        for (k, v) in url::form_urlencoded::parse(&body) {
            if k == "method" {
                method = Some(v.into_owned());
            } else {
                pairs.push((k.into_owned(), v.into_owned()));
            }
        }
        return decide(method, Params::Form(pairs));
    }
    // JSON, declared or not: many handlers answer without a content type.
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut map)) => {
            let method = match map.remove("method") {
                Some(Value::String(m)) => Some(m),
                Some(_) => return Parsed::Invalid("\"method\" is not a string".into()),
                None => None,
            };
            decide(method, Params::Json(map))
        }
        Ok(_) => Parsed::Nothing,
        Err(_) if ct.contains("json") => Parsed::Invalid("the body is not valid JSON".into()),
        // Plain text such as "OK" is an ordinary acknowledgement.
        Err(_) => Parsed::Nothing,
    }
}

async fn parse_multipart(content_type: &str, body: Bytes) -> Parsed {
    let boundary = match multer::parse_boundary(content_type) {
        Ok(b) => b,
        Err(e) => return Parsed::Invalid(format!("multipart without a boundary: {e}")),
    };
    let stream =
        futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut method = None;
    let mut parts = Vec::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Parsed::Invalid(format!("broken multipart body: {e}")),
        };
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(|m| m.to_string());
        let data = match field.bytes().await {
            Ok(d) => d,
            Err(e) => return Parsed::Invalid(format!("broken multipart field {name:?}: {e}")),
        };
        if name == "method" && file_name.is_none() {
            method = Some(String::from_utf8_lossy(&data).into_owned());
        } else {
            parts.push(Part {
                name,
                file_name,
                content_type,
                data,
            });
        }
    }
    decide(method, Params::Multipart(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_form_and_multipart_replies() {
        let Parsed::Call(c) = parse(
            Some("application/json"),
            Bytes::from_static(br#"{"method":"sendMessage","chat_id":5,"text":"hi"}"#),
        )
        .await
        else {
            panic!("json")
        };
        assert_eq!(c.method, "sendMessage");
        assert!(
            matches!(&c.params, Params::Json(m) if m.get("chat_id") == Some(&Value::from(5)) && !m.contains_key("method"))
        );

        let Parsed::Call(c) = parse(
            Some("application/x-www-form-urlencoded"),
            Bytes::from_static(b"method=sendMessage&chat_id=5&text=a+b"),
        )
        .await
        else {
            panic!("form")
        };
        assert!(matches!(&c.params, Params::Form(p) if p.contains(&("text".into(), "a b".into()))));

        let body: &'static [u8] = b"--XX\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\nsendPhoto\r\n--XX\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n5\r\n--XX\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--XX--\r\n";
        let Parsed::Call(c) = parse(
            Some("multipart/form-data; boundary=XX"),
            Bytes::from_static(body),
        )
        .await
        else {
            panic!("multipart")
        };
        assert_eq!(c.method, "sendPhoto");
        let Params::Multipart(parts) = c.params else {
            panic!()
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].file_name.as_deref(), Some("p.png"));
        assert_eq!(&parts[1].data[..], b"\x89PNG");
    }

    #[tokio::test]
    async fn ignored_empty_and_invalid_bodies() {
        assert!(matches!(
            parse(None, Bytes::from_static(br#"{"method":"getMe"}"#)).await,
            Parsed::Ignored(_)
        ));
        assert!(matches!(
            parse(None, Bytes::from_static(br#"{"method":"deleteWebhook"}"#)).await,
            Parsed::Ignored(_)
        ));
        assert!(matches!(
            parse(None, Bytes::from_static(br#"{"method":"logOut"}"#)).await,
            Parsed::Ignored(_)
        ));
        assert!(matches!(parse(None, Bytes::new()).await, Parsed::Nothing));
        assert!(matches!(
            parse(Some("text/plain"), Bytes::from_static(b"OK")).await,
            Parsed::Nothing
        ));
        assert!(matches!(
            parse(
                Some("application/json"),
                Bytes::from_static(br#"{"ok":true}"#)
            )
            .await,
            Parsed::Nothing
        ));
        assert!(matches!(
            parse(Some("application/json"), Bytes::from_static(b"{oops")).await,
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(None, Bytes::from_static(br#"{"method":"../x"}"#)).await,
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(Some("multipart/form-data"), Bytes::from_static(b"x")).await,
            Parsed::Invalid(_)
        ));
    }
}
