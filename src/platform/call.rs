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

impl Params {
    /// The chat the call acts in (`chat_id`), as text: what its rate
    /// limits are counted against.
    pub fn chat_id(&self) -> Option<String> {
        match self {
            Params::Json(body) => {
                #[derive(serde::Deserialize)]
                struct Chat {
                    chat_id: Option<serde_json::Value>,
                }
                match serde_json::from_slice::<Chat>(body).ok()?.chat_id? {
                    serde_json::Value::String(s) => Some(s.trim().to_string()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }
            }
            Params::Form(body) => url::form_urlencoded::parse(body)
                .find(|(k, _)| k == "chat_id")
                .map(|(_, v)| v.trim().to_string()),
            Params::Multipart(parts) => parts
                .iter()
                .find(|p| p.name == "chat_id" && p.file_name.is_none())
                .and_then(|p| std::str::from_utf8(&p.data).ok())
                .map(|s| s.trim().to_string()),
        }
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
