//! One Bot API call as it leaves pollhook: a method and its parameters in
//! the encoding they arrived in. Webhook replies make these today; a
//! gateway will pass backends' calls the same way, through [`super::api`].

use bytes::Bytes;

/// A Bot API call's parameters, in the encoding they arrived in.
#[derive(Debug, Clone)]
pub enum Params {
    /// A JSON object without `method`; the values are the reply's bytes.
    Json(Bytes),
    /// urlencoded pairs without `method`, as they came.
    Form(Bytes),
    /// The parts but `method`; their data share the reply body's buffer.
    Multipart(Vec<Part>),
}

/// The parameters that name a chat: a call acts in its `chat_id`, and
/// forwarding or copying reads from its `from_chat_id`.
pub const CHAT_PARAMS: [&str; 2] = ["chat_id", "from_chat_id"];

/// The chat parameters of urlencoded pairs, as (name, value), in order.
pub fn chat_fields_of_form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body)
        .filter(|(k, _)| CHAT_PARAMS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .collect()
}

/// The chat parameters of a JSON object, `chat_id`'s first; an error for a
/// body that is no object or a chat that is neither a number nor a string.
pub fn chat_fields_of_json(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    #[derive(serde::Deserialize)]
    struct Chats {
        chat_id: Option<serde_json::Value>,
        from_chat_id: Option<serde_json::Value>,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let c: Chats = serde_json::from_slice(body)
        .map_err(|e| format!("Bad Request: the body is not a JSON object: {e}"))?;
    let mut out = Vec::new();
    for (name, v) in [("chat_id", c.chat_id), ("from_chat_id", c.from_chat_id)] {
        let v = match v {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(s)) => s.trim().to_string(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(_) => return Err(format!("Bad Request: {name} must be a number or a string")),
        };
        out.push((name.to_string(), v));
    }
    Ok(out)
}

impl Params {
    /// The chat the call acts in (`chat_id`), as text: what its rate
    /// limits are counted against.
    pub fn chat_id(&self) -> Option<String> {
        let fields = match self {
            Params::Json(body) => chat_fields_of_json(body).ok()?,
            Params::Form(body) => chat_fields_of_form(body),
            Params::Multipart(parts) => {
                return parts
                    .iter()
                    .find(|p| p.name == "chat_id" && p.file_name.is_none())
                    .and_then(|p| std::str::from_utf8(&p.data).ok())
                    .map(|s| s.trim().to_string())
            }
        };
        fields
            .into_iter()
            .find(|(name, _)| name == "chat_id")
            .map(|(_, v)| v)
    }
}

#[derive(Debug, Clone)]
pub struct BotCall {
    pub method: String,
    pub params: Params,
}

/// One part of a multipart call; `data` shares the buffer it came in.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calls_chat_is_read_from_each_encoding() {
        assert_eq!(
            Params::Json(Bytes::from_static(br#"{"chat_id":-100,"text":"a"}"#))
                .chat_id()
                .as_deref(),
            Some("-100")
        );
        assert_eq!(
            Params::Json(Bytes::from_static(br#"{"chat_id":"@ch"}"#))
                .chat_id()
                .as_deref(),
            Some("@ch")
        );
        assert_eq!(
            Params::Json(Bytes::from_static(br#"{"callback_query_id":"1"}"#)).chat_id(),
            None
        );
        assert_eq!(
            Params::Form(Bytes::from_static(b"text=x&chat_id=42"))
                .chat_id()
                .as_deref(),
            Some("42")
        );
        let part = |name: &str, data: &'static [u8]| Part {
            name: name.into(),
            file_name: None,
            content_type: None,
            data: Bytes::from_static(data),
        };
        assert_eq!(
            Params::Multipart(vec![part("photo", b"x"), part("chat_id", b" 7 ")])
                .chat_id()
                .as_deref(),
            Some("7")
        );
    }
}
