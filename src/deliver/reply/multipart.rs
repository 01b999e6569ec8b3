//! Splits a `multipart/form-data` body that is already in memory into its
//! parts without copying: each part's data is a slice of the body's buffer.
//!
//! A multipart webhook reply may carry files of up to 50 MB. A streaming
//! parser (multer) buffers the stream and then copies each field again, so
//! a 50 MB upload would sit in memory two or three times; here it sits once,
//! and the same bytes go on to the Bot API call.

use bytes::Bytes;
use memchr::memmem;

use crate::platform::call::Part;

/// A Bot API call has a few dozen parameters at most (sendMediaGroup: ten
/// files and their captions); a body of millions of empty parts would cost
/// ~100 bytes of bookkeeping each.
const MAX_PARTS: usize = 256;

/// The parts of `body`, whose `Content-Type` is `content_type`.
pub fn parse(content_type: &str, body: &Bytes) -> Result<Vec<Part>, String> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| format!("multipart without a boundary: {e}"))?;
    let delimiter = format!("--{boundary}");
    let next_part = format!("\r\n{delimiter}");
    let next_part = memmem::Finder::new(next_part.as_bytes());
    // The first delimiter opens the body or a line; anything before it is
    // a preamble to skip.
    let mut at = if body.starts_with(delimiter.as_bytes()) {
        delimiter.len()
    } else {
        next_part
            .find(body)
            .ok_or("broken multipart body: no boundary found")?
            + next_part.needle().len()
    };
    let mut parts = Vec::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then the line break ending the delimiter line.
        let padding = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        if !rest[padding..].starts_with(b"\r\n") {
            return Err("broken multipart body: a boundary line does not end".into());
        }
        at += padding + 2;
        let rest = &body[at..];
        let (head_len, data_from) = if rest.starts_with(b"\r\n") {
            (0, 2)
        } else {
            let end = memmem::find(rest, b"\r\n\r\n")
                .ok_or("broken multipart body: a part's headers do not end")?;
            (end, end + 4)
        };
        let head = String::from_utf8_lossy(&rest[..head_len]);
        let data_start = at + data_from;
        let data_len = next_part
            .find(&body[data_start..])
            .ok_or("broken multipart body: the closing boundary is missing")?;
        if parts.len() == MAX_PARTS {
            return Err(format!(
                "more than {MAX_PARTS} parts; no Bot API call takes that many"
            ));
        }
        parts.push(part(&head, body.slice(data_start..data_start + data_len))?);
        at = data_start + data_len + next_part.needle().len();
    }
}

fn part(head: &str, data: Bytes) -> Result<Part, String> {
    let mut name = None;
    let mut file_name = None;
    let mut content_type = None;
    for line in head.split("\r\n") {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key.trim().eq_ignore_ascii_case("content-disposition") {
            for (k, v) in disposition_params(value) {
                if k.eq_ignore_ascii_case("name") {
                    name = Some(v);
                } else if k.eq_ignore_ascii_case("filename") {
                    file_name = Some(v);
                }
            }
        } else if key.trim().eq_ignore_ascii_case("content-type") && !value.is_empty() {
            content_type = Some(value.to_string());
        }
    }
    let name = name.ok_or("broken multipart body: a part has no name")?;
    Ok(Part {
        name,
        file_name,
        content_type,
        data,
    })
}

/// The `key=value` parameters after `form-data;`, values unquoted.
fn disposition_params(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    // Skip the disposition type.
    for c in chars.by_ref() {
        if c == ';' {
            break;
        }
    }
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ';').is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ';')).collect();
        if key.is_empty() {
            return out;
        }
        let mut val = String::new();
        if chars.next_if_eq(&'=').is_some() {
            if chars.next_if_eq(&'"').is_some() {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => val.extend(chars.next()),
                        c => val.push(c),
                    }
                }
                // Anything up to the next ';' after a quoted value is noise.
                while chars.next_if(|c| *c != ';').is_some() {}
            } else {
                val = std::iter::from_fn(|| chars.next_if(|c| *c != ';')).collect();
            }
        }
        out.push((key.trim().to_string(), val.trim_end().to_string()));
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_body_of_too_many_parts_is_refused() {
        let mut text = String::new();
        for i in 0..300 {
            text.push_str(&format!(
                "--b\r\nContent-Disposition: form-data; name=\"p{i}\"\r\n\r\nx\r\n"
            ));
        }
        text.push_str("--b--\r\n");
        let body = Bytes::from(text);
        let e = parse("multipart/form-data; boundary=b", &body).unwrap_err();
        assert!(e.contains("more than 256 parts"), "{e}");
        let mut few = String::new();
        for i in 0..10 {
            few.push_str(&format!(
                "--b\r\nContent-Disposition: form-data; name=\"p{i}\"\r\n\r\nx\r\n"
            ));
        }
        few.push_str("--b--\r\n");
        assert_eq!(
            parse("multipart/form-data; boundary=b", &Bytes::from(few))
                .unwrap()
                .len(),
            10
        );
    }
    use super::*;

    #[test]
    fn parts_are_slices_of_the_body() {
        let body = Bytes::from_static(b"preamble\r\n--XX\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\nsendPhoto\r\n--XX  \r\ncontent-disposition: form-data; name=\"photo\"; filename=\"a \\\"b\\\";c.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--\r\n--XX\r\nContent-Disposition: form-data; name=empty\r\n\r\n\r\n--XX--\r\nepilogue");
        let parts = parse("multipart/form-data; boundary=XX", &body).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].name, "method");
        assert_eq!(&parts[0].data[..], b"sendPhoto");
        assert_eq!(parts[1].name, "photo");
        assert_eq!(parts[1].file_name.as_deref(), Some("a \"b\";c.png"));
        assert_eq!(parts[1].content_type.as_deref(), Some("image/png"));
        assert_eq!(&parts[1].data[..], b"\x89PNG\r\n--");
        assert_eq!(parts[2].name, "empty");
        assert!(parts[2].data.is_empty());
        // No copy: the data points into the body's buffer.
        let range = body.as_ptr_range();
        assert!(range.contains(&parts[1].data.as_ptr()));
    }

    #[test]
    fn broken_bodies_are_errors_not_panics() {
        let ct = "multipart/form-data; boundary=XX";
        for body in [
            &b""[..],
            b"--XX",
            b"--XX\r\n",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end",
            b"--XX\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XX--",
            b"--XXjunk\r\n",
            b"no boundary at all",
        ] {
            assert!(
                parse(ct, &Bytes::copy_from_slice(body)).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse("multipart/form-data", &Bytes::from_static(b"--XX--")).is_err());
        // A body that is only the closing delimiter has no parts.
        assert!(parse(ct, &Bytes::from_static(b"--XX--\r\n"))
            .unwrap()
            .is_empty());
    }
}
