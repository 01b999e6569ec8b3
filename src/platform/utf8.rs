//! A text view of bytes that may not be valid UTF-8, with every byte in
//! its place.
//!
//! `serde_json` reads only `str` (or bytes that are valid UTF-8), but a
//! platform may send an update with a stray invalid byte inside a string,
//! and pollhook forwards each update's exact bytes. So the JSON is read from
//! this view, where each invalid byte became one `?` (inside a string that
//! keeps the JSON valid; outside one the JSON was broken anyway), and
//! because the view has the same length, any span found in it is the same
//! span of the original bytes.

use std::borrow::Cow;

/// `bytes` as text of the same length: borrowed when they are valid UTF-8,
/// else a copy with each invalid byte replaced by `?`.
pub fn readable(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        out.extend(std::iter::repeat_n('?', chunk.invalid().len()));
    }
    Cow::Owned(out)
}

/// Where `part`, a slice of `whole`, lies in it.
pub fn span_in(whole: &str, part: &str) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    debug_assert!(
        start + part.len() <= whole.len(),
        "part is not inside whole"
    );
    start..start + part.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_text_is_borrowed_and_invalid_bytes_keep_their_places() {
        assert!(matches!(
            readable("héllo".as_bytes()),
            Cow::Borrowed("héllo")
        ));
        // A lone 0xFF, a truncated two-byte sequence, then a valid é.
        let bytes = b"{\"t\":\"a\xFFb\xC3\"}\xC3\xA9";
        let text = readable(bytes);
        assert_eq!(text, "{\"t\":\"a?b?\"}é");
        assert_eq!(text.len(), bytes.len());
    }

    #[test]
    fn a_span_of_the_view_is_the_same_span_of_the_bytes() {
        let bytes = b"[{\"a\":\"\xFF\"},{\"b\":1}]";
        let text = readable(bytes);
        let start = text.find("{\"b\"").unwrap();
        let second = &text[start..start + 7];
        let span = span_in(&text, second);
        assert_eq!(&bytes[span], b"{\"b\":1}");
    }
}
