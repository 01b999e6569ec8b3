//! A getUpdates answer's updates, each as its exact bytes: slices of the
//! answer, not copies, invalid UTF-8 and all.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::utf8::{readable, span_in};
use crate::longpoll::Answer;

/// A getUpdates answer that is what it should be (2xx, valid UTF-8, `ok`,
/// an array of updates) read in one pass of the JSON, envelope and array
/// together; None for anything else, which the API client's `interpret`
/// and [`split`] then read (and explain) as any answer.
pub fn at_once(answer: &Answer) -> Option<Vec<Bytes>> {
    #[derive(Deserialize)]
    struct Updates<'a> {
        ok: bool,
        #[serde(borrow)]
        result: Vec<&'a RawValue>,
    }
    if !(200..300).contains(&answer.status) {
        return None;
    }
    let text = std::str::from_utf8(&answer.body).ok()?;
    let updates: Updates = serde_json::from_str(text).ok()?;
    updates.ok.then(|| {
        updates
            .result
            .into_iter()
            .map(|u| answer.body.slice(span_in(text, u.get())))
            .collect()
    })
}

/// Each update of a getUpdates `result`; else why it is not an array of
/// updates, in words that do not quote it (serde's would: the platform's
/// text, which may hold the token).
pub fn split(result: &Bytes) -> Result<Vec<Bytes>, String> {
    let text = readable(result);
    let updates: Vec<&RawValue> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "result is not an array of updates: {}",
            super::update::what_it_is(&text, &e)
        )
    })?;
    Ok(updates
        .into_iter()
        .map(|u| result.slice(span_in(&text, u.get())))
        .collect())
}
