//! What the fake Bot API answers to the calls that make or fetch content,
//! shaped like Telegram's objects so that real frameworks (aiogram's
//! pydantic models, python-telegram-bot's `de_json`, grammY) parse them:
//! `send*` answers a `Message`, `getFile` a `File`, and
//! `GET /file/bot{token}/{file_path}` serves the file's bytes. Files come
//! from multipart uploads (kept byte for byte, unlike the call's recorded
//! parameters, which hold file data as lossy UTF-8) or from `add_file`.
//!
//! A child module of `fake_api` (declared there) so it can use the fake's
//! bot state and answer helpers without making them public.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use memchr::memmem;
use serde_json::{json, Map, Value};

use super::{error, json, Body, Bot, Call, FakeApi, Flavor, Inner};
use hyper::Response;

/// A bot's messages and files.
#[derive(Default)]
pub(super) struct Content {
    /// The last message_id handed out (Telegram numbers per chat; one
    /// counter per bot is enough to be increasing).
    last_message_id: i64,
    /// Uploads so far, for their file ids.
    uploads: u64,
    files: Vec<StoredFile>,
    /// Every file download asked for: (file_path, status answered).
    downloads: Vec<(String, u16)>,
}

struct StoredFile {
    file_id: String,
    file_unique_id: String,
    file_path: String,
    file_name: Option<String>,
    mime_type: Option<String>,
    bytes: Bytes,
}

impl Content {
    fn file(&self, file_id: &str) -> Option<&StoredFile> {
        self.files.iter().find(|f| f.file_id == file_id)
    }

    fn add(&mut self, file: StoredFile) {
        self.files.retain(|f| f.file_id != file.file_id);
        self.files.push(file);
    }
}

impl FakeApi {
    /// Registers a file the bot can `getFile` and download, as if someone
    /// had sent it to the bot earlier.
    pub fn add_file(&self, token: &str, file_id: &str, file_path: &str, bytes: impl Into<Bytes>) {
        let file = StoredFile {
            file_id: file_id.to_owned(),
            file_unique_id: unique_id(file_id),
            file_path: file_path.to_owned(),
            file_name: None,
            mime_type: None,
            bytes: bytes.into(),
        };
        self.inner.with_bot(token, |b| b.content.add(file));
    }

    /// The bytes of a file the bot has (uploaded or added).
    pub fn file_bytes(&self, token: &str, file_id: &str) -> Option<Bytes> {
        self.inner
            .read(token, |b| b.content.file(file_id).map(|f| f.bytes.clone()))
    }

    /// The bytes `call` uploaded as its parameter `field` (given directly,
    /// or as `attach://name` naming another part), exactly as they arrived.
    pub fn uploaded(&self, token: &str, call: &Call, field: &str) -> Option<Bytes> {
        let file_id = upload_id(&call.params, field)?;
        self.file_bytes(token, &file_id)
    }

    /// Every file download asked for with this token: (file_path, status).
    pub fn downloads(&self, token: &str) -> Vec<(String, u16)> {
        self.inner.read(token, |b| b.content.downloads.clone())
    }

    /// Every token any request named (Bot API calls, file downloads, and ""
    /// for requests that matched no route), besides those of `add_bot`.
    pub fn tokens_seen(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self.inner.lock().keys().cloned().collect();
        tokens.sort();
        tokens
    }
}

/// The answer to a method the fake has no special handling for: a `Message`
/// for `send*`, a `File` for `getFile`, `true` for the rest.
pub(super) fn answer(bot: &mut Bot, method: &str, params: &Value) -> Response<Body> {
    let result = match method.to_ascii_lowercase().as_str() {
        "getfile" => get_file(&bot.content, params),
        m if m.starts_with("send") && m != "sendchataction" && m != "sendmediagroup" => {
            let me = bot.info.clone().expect("known bot");
            message(&mut bot.content, me, &m[4..], params)
        }
        _ => Ok(Value::Bool(true)),
    };
    match result {
        Ok(result) => json(200, json!({"ok": true, "result": result}).to_string()),
        Err((code, description)) => error(code, &description),
    }
}

/// Keeps every file part of a multipart body byte for byte and adds its
/// `file_id` (and `file_size`) to the recorded parameter, so `send*` can
/// answer with it and a test can read back exactly what arrived.
pub(super) fn keep_uploads(
    inner: &Inner,
    token: &str,
    mut params: Value,
    content_type: &str,
    body: &Bytes,
) -> Value {
    let Some(boundary) = multipart_boundary(content_type) else {
        return params;
    };
    let parts = multipart_files(body, &boundary);
    if parts.is_empty() {
        return params;
    }
    inner.with_bot(token, |b| {
        for part in parts {
            b.content.uploads += 1;
            let file_id = format!("upload-{}", b.content.uploads);
            let extension = part
                .file_name
                .as_deref()
                .and_then(|n| n.rsplit_once('.'))
                .map(|(_, ext)| format!(".{ext}"))
                .unwrap_or_default();
            if let Some(Value::Object(recorded)) = params.get_mut(&part.name) {
                recorded.insert("file_id".into(), file_id.clone().into());
                recorded.insert("file_size".into(), part.data.len().into());
            }
            b.content.add(StoredFile {
                file_unique_id: unique_id(&file_id),
                file_path: format!("uploads/file_{}{extension}", b.content.uploads),
                file_id,
                file_name: part.file_name,
                mime_type: part.content_type,
                bytes: part.data,
            });
        }
    });
    params
}

/// Serves `GET {prefix}file/bot{token}/{file_path}` (the prefix being the
/// flavor's route before `bot{token}`); None when `path` is no file route.
pub(super) fn download(inner: &Inner, path: &str) -> Option<Response<Body>> {
    let prefix = match inner.flavor {
        Flavor::Telegram => "/file/bot",
        Flavor::MpChat => "/bot/file/bot",
        // WWChat's routes are not Telegram-shaped: no file route.
        Flavor::WwChat => return None,
    };
    // python-telegram-bot percent-encodes the path (the token's colon too).
    let path = percent_decode(path.strip_prefix(prefix)?);
    let (token, file_path) = path.split_once('/')?;
    let found = inner.with_bot(token, |b| {
        let found = match &b.info {
            Some(_) => b
                .content
                .files
                .iter()
                .find(|f| f.file_path == file_path)
                .map(|f| f.bytes.clone()),
            None => None,
        };
        let status = if found.is_some() { 200 } else { 404 };
        b.content.downloads.push((file_path.to_owned(), status));
        found
    });
    Some(match found {
        Some(bytes) => super::response(200, "application/octet-stream", bytes),
        None => error(404, "Not Found"),
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn get_file(content: &Content, params: &Value) -> Result<Value, (u16, String)> {
    let file_id = text_param(params, "file_id")
        .filter(|id| !id.is_empty())
        .ok_or((400, "Bad Request: file_id is empty".to_owned()))?;
    let file = content
        .file(&file_id)
        .ok_or((400, "Bad Request: invalid file_id".to_owned()))?;
    Ok(json!({
        "file_id": file.file_id,
        "file_unique_id": file.file_unique_id,
        "file_size": file.bytes.len(),
        "file_path": file.file_path,
    }))
}

/// The `Message` a `send{kind}` call creates.
fn message(
    content: &mut Content,
    (bot_id, username): (i64, String),
    kind: &str,
    params: &Value,
) -> Result<Value, (u16, String)> {
    let bad = |d: &str| (400, format!("Bad Request: {d}"));
    let chat_id = params
        .get("chat_id")
        .filter(|v| !v.is_null() && *v != "")
        .ok_or_else(|| bad("chat_id is empty"))?;
    let mut msg = Map::new();
    content.last_message_id += 1;
    msg.insert("message_id".into(), content.last_message_id.into());
    msg.insert(
        "from".into(),
        json!({"id": bot_id, "is_bot": true, "first_name": username, "username": username}),
    );
    msg.insert("chat".into(), chat(chat_id));
    msg.insert("date".into(), unix_now().into());
    if kind == "message" {
        let text = text_param(params, "text")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("message text is empty"))?;
        msg.insert("text".into(), text.into());
    }
    if let Some(caption) = text_param(params, "caption") {
        msg.insert("caption".into(), caption.into());
    }
    let Some(field) = media_field(kind) else {
        return Ok(Value::Object(msg));
    };
    let file = sent_file(content, params, field).map_err(|d| bad(&d))?;
    let base = json!({
        "file_id": file.file_id,
        "file_unique_id": file.file_unique_id,
        "file_size": file.bytes.len(),
    });
    let mut media = base.as_object().cloned().unwrap_or_default();
    let (width, height) = png_size(&file.bytes).unwrap_or((1, 1));
    let mut add = |fields: Value| media.extend(fields.as_object().cloned().unwrap_or_default());
    let value = match field {
        // Telegram answers a photo with its sizes; one size is the photo itself.
        "photo" => json!([{
            "file_id": file.file_id, "file_unique_id": file.file_unique_id,
            "file_size": file.bytes.len(), "width": width, "height": height,
        }]),
        "document" => {
            add(json!({"file_name": file.file_name, "mime_type": file.mime_type}));
            Value::Object(media)
        }
        "audio" | "voice" => {
            add(json!({"duration": 1, "mime_type": file.mime_type}));
            Value::Object(media)
        }
        "video" | "animation" => {
            add(json!({"width": width, "height": height, "duration": 1}));
            Value::Object(media)
        }
        "video_note" => {
            add(json!({"length": width, "duration": 1}));
            Value::Object(media)
        }
        _ => {
            add(json!({"type": "regular", "width": width, "height": height,
                       "is_animated": false, "is_video": false}));
            Value::Object(media)
        }
    };
    msg.insert(field.into(), value);
    Ok(Value::Object(msg))
}

/// The parameter (and Message field) holding the file a `send{kind}` sends.
fn media_field(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "photo" => "photo",
        "document" => "document",
        "audio" => "audio",
        "voice" => "voice",
        "video" => "video",
        "animation" => "animation",
        "videonote" => "video_note",
        "sticker" => "sticker",
        _ => return None,
    })
}

/// The file a call sends as `field`: an upload, or a file_id the bot has.
fn sent_file<'c>(
    content: &'c Content,
    params: &Value,
    field: &str,
) -> Result<&'c StoredFile, String> {
    let file_id = match upload_id(params, field) {
        Some(id) => id,
        None => text_param(params, field).ok_or(format!("there is no {field} in the request"))?,
    };
    content
        .file(&file_id)
        .ok_or_else(|| "wrong file identifier/HTTP URL specified".to_owned())
}

/// The file_id `keep_uploads` gave the part uploaded as `field`, following
/// an `attach://name` reference to the part `name`.
fn upload_id(params: &Value, field: &str) -> Option<String> {
    let part = match params.get(field)? {
        Value::String(s) => params.get(s.strip_prefix("attach://")?)?,
        other => other,
    };
    part.get("file_id")?.as_str().map(str::to_owned)
}

/// A `Chat` for a `chat_id`: positive ids are private chats, `-100…`
/// supergroups, other negative ids groups, `@name` a channel; other strings
/// (WWChat's UUIDs) stay strings.
fn chat(chat_id: &Value) -> Value {
    let text = match chat_id {
        Value::String(s) => s.trim().to_owned(),
        other => other.to_string(),
    };
    if let Some(username) = text.strip_prefix('@') {
        return json!({"id": -1_000_000_000_001_i64, "type": "channel", "title": username, "username": username});
    }
    match text.parse::<i64>() {
        Ok(id) if id > 0 => {
            json!({"id": id, "type": "private", "first_name": format!("User {id}")})
        }
        Ok(id) if text.starts_with("-100") => {
            json!({"id": id, "type": "supergroup", "title": format!("Group {id}")})
        }
        Ok(id) => json!({"id": id, "type": "group", "title": format!("Group {id}")}),
        Err(_) => json!({"id": text, "type": "private"}),
    }
}

/// A string parameter; numbers as their decimal text.
fn text_param(params: &Value, name: &str) -> Option<String> {
    match params.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn unique_id(file_id: &str) -> String {
    format!("AgAD-{file_id}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// (width, height) from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    Some((be(16)?, be(20)?))
}

struct FilePart {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Bytes,
}

fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut fields = content_type.split(';');
    let mime = fields.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    fields
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"').to_owned())
}

/// The file parts (those with a `filename`) of a multipart/form-data body,
/// their data sliced from `body` byte for byte (RFC 7578: a part ends at
/// CRLF `--boundary`). A malformed body yields what was readable.
fn multipart_files(body: &Bytes, boundary: &str) -> Vec<FilePart> {
    let opening = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    let finder = memmem::Finder::new(delimiter.as_bytes());
    let mut files = Vec::new();
    let Some(first) = memmem::find(body, opening.as_bytes()) else {
        return files;
    };
    let mut at = first + opening.len();
    // After each delimiter: "--" ends the body, CRLF starts a part.
    while body[at..].starts_with(b"\r\n") {
        let start = at + 2;
        let Some(len) = finder.find(&body[start..]) else {
            break;
        };
        let part = body.slice(start..start + len);
        at = start + len + delimiter.len();
        let Some(head_len) = memmem::find(&part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..head_len]);
        let mut disposition = None;
        let mut content_type = None;
        for line in head.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "content-disposition" => disposition = Some(value.trim().to_owned()),
                "content-type" => content_type = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        let Some(disposition) = disposition else {
            continue;
        };
        let attr = |wanted: &str| {
            disposition.split(';').skip(1).find_map(|p| {
                let (key, value) = p.trim().split_once('=')?;
                (key.trim().eq_ignore_ascii_case(wanted))
                    .then(|| value.trim().trim_matches('"').to_owned())
            })
        };
        let (Some(name), Some(file_name)) = (attr("name"), attr("filename")) else {
            continue;
        };
        files.push(FilePart {
            name,
            file_name: Some(file_name),
            content_type,
            data: part.slice(head_len + 4..),
        });
    }
    files
}
