//! Reading HTTP response bodies with a size cap, so a broken or hostile
//! server cannot make pollhook buffer without end.

use bytes::{Bytes, BytesMut};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    Read(String),
}

pub async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Bytes, BodyError> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge(cap));
    }
    let mut buf = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    return Err(BodyError::TooLarge(cap));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                let e = e.without_url();
                let timeout = e.is_timeout();
                let text = crate::botapi::error_chain(&e);
                return Err(BodyError::Read(if timeout {
                    format!("timed out: {text}")
                } else {
                    text
                }));
            }
        }
    }
}
