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
