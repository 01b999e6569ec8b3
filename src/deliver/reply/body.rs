//! Taking in a webhook reply's body, within a memory budget per forward.
//!
//! A JSON or form reply carries parameters only (the Bot API's largest, a
//! 4096-character text with a keyboard, fit in a few KiB), so it may be at
//! most `MAX_PARAMS` long. Only a multipart reply may carry files, up to the
//! Bot API's 50 MB upload limit. The size is decided from the Content-Type
//! and Content-Length before anything is read, and reading stops at the cap:
//! a body over it is never held.
//!
//! Every body in memory holds a permit from its forward's budget until its
//! call is done: `SMALL_REPLIES` small ones (up to `MAX_PARAMS` each) and
//! `LARGE_REPLIES` large ones (multipart over `MAX_PARAMS` or of unknown
//! length, up to `MAX_FILES` each). So reply bodies cost a forward at most
//! 32 x 1 MiB + 4 x 50 MiB = 232 MiB, however many replies come at once.
//! A reply that finds no permit free is not read until one is: it waits
//! as an unread response, which costs a connection, not its size.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::header::CONTENT_TYPE;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::http::backend::{self, Response};
use crate::http::BodyError;

/// The largest JSON or form reply, and the largest multipart one whose
/// length is known up front to count as small.
pub const MAX_PARAMS: usize = 1024 * 1024;
/// The largest multipart reply: the Bot API takes uploads up to 50 MB.
pub const MAX_FILES: usize = 50 * 1024 * 1024;
/// Small and large reply bodies held at once per forward.
pub const SMALL_REPLIES: usize = 32;
pub const LARGE_REPLIES: usize = 4;

/// A forward's permits for reply bodies in memory.
#[derive(Clone)]
pub struct ReplyBudget {
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
}

impl Default for ReplyBudget {
    fn default() -> Self {
        ReplyBudget {
            small: Arc::new(Semaphore::new(SMALL_REPLIES)),
            large: Arc::new(Semaphore::new(LARGE_REPLIES)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Size {
    Small,
    Large,
}

impl Size {
    fn cap(self) -> usize {
        match self {
            Size::Small => MAX_PARAMS,
            Size::Large => MAX_FILES,
        }
    }

    fn too_large(self, length: Option<u64>) -> String {
        let length = length.map(|n| format!(" ({n} bytes)")).unwrap_or_default();
        match self {
            Size::Small => format!(
                "the reply is larger than 1 MiB{length}; a JSON or form reply carries parameters only (files go in a multipart/form-data reply, up to 50 MiB)"
            ),
            Size::Large => format!(
                "the multipart reply is larger than 50 MiB{length}, the Bot API's upload limit"
            ),
        }
    }

    fn permits(self, budget: &ReplyBudget) -> &Arc<Semaphore> {
        match self {
            Size::Small => &budget.small,
            Size::Large => &budget.large,
        }
    }
}

/// A 2xx answer's body, as far as it matters as a webhook reply.
#[derive(Debug)]
pub enum ReplyBody {
    /// Nothing to run: no body, or replies are off.
    None,
    /// In memory, with its permit.
    Read(ReadReply),
    /// Not read yet: every permit of its size is taken.
    Pending(Pending),
    /// Cannot be run (too large, unreadable); why.
    Failed(String),
}

#[derive(Debug)]
pub struct ReadReply {
    pub content_type: Option<String>,
    pub body: Bytes,
    /// Held until the reply's call is done: the body lives that long.
    pub permit: OwnedSemaphorePermit,
}

/// A reply waiting for a permit before its body is read.
#[derive(Debug)]
pub struct Pending {
    content_type: Option<String>,
    response: Response,
    size: Size,
    permits: Arc<Semaphore>,
    /// How long reading may take once it starts (the forward's timeout).
    timeout: Duration,
}

impl Pending {
    /// Waits for a permit, then reads the body within the forward's timeout.
    pub async fn read(self) -> Result<ReadReply, String> {
        let permit = self
            .permits
            .acquire_owned()
            .await
            .expect("reply permits are never closed");
        let deadline = Instant::now() + self.timeout;
        let body = read(self.response, self.size, deadline).await?;
        Ok(ReadReply {
            content_type: self.content_type,
            body,
            permit,
        })
    }
}

/// Looks at a 2xx answer and reads its body now if a permit is free;
/// `deadline` ends the delivery attempt, `timeout` is its length.
pub async fn take(
    response: Response,
    budget: &ReplyBudget,
    deadline: Instant,
    timeout: Duration,
) -> ReplyBody {
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let length = backend::content_length(&response);
    if length == Some(0) {
        return ReplyBody::None;
    }
    let multipart = content_type
        .as_deref()
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("multipart/form-data"));
    let size = match length {
        Some(n) if multipart && n > MAX_PARAMS as u64 => Size::Large,
        None if multipart => Size::Large,
        _ => Size::Small,
    };
    if length.is_some_and(|n| n > size.cap() as u64) {
        return ReplyBody::Failed(size.too_large(length));
    }
    let permits = size.permits(budget).clone();
    match permits.clone().try_acquire_owned() {
        Ok(permit) => match read(response, size, deadline).await {
            Ok(body) => ReplyBody::Read(ReadReply {
                content_type,
                body,
                permit,
            }),
            Err(why) => ReplyBody::Failed(why),
        },
        Err(_) => ReplyBody::Pending(Pending {
            content_type,
            response,
            size,
            permits,
            timeout,
        }),
    }
}

/// Reads at most `size.cap()` bytes into one buffer sized up front, so a
/// body is never copied while it grows.
async fn read(response: Response, size: Size, deadline: Instant) -> Result<Bytes, String> {
    let cap = size.cap();
    // Unknown length: room for the cap. The pages are only touched as they
    // are written, so what is not used costs address space, not memory.
    let reserve = backend::content_length(&response).map_or(cap, |n| n as usize);
    let buf = BytesMut::with_capacity(reserve.min(cap));
    let reading = backend::read_capped_into(response, cap, buf);
    match tokio::time::timeout_at(deadline, reading).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(BodyError::TooLarge(_))) => Err(size.too_large(None)),
        Ok(Err(BodyError::Read(e) | BodyError::Timeout(e))) => {
            Err(format!("the reply body could not be read: {e}"))
        }
        Err(_) => Err("the reply body did not arrive within the forward's timeout".into()),
    }
}
