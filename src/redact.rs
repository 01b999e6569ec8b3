//! Scrubbing a bot token out of text that came from, or went to, a platform.
//!
//! The token is part of every method URL, so it shows up wherever a URL
//! does: a proxy's 502 page, an error description echoing the request, a
//! transport error. URLs there are often percent-encoded (`%3A` for the
//! colon, in either case, or every character), sometimes twice (`%253A`),
//! and a JSON body may escape characters as `\u003a`. Each character of the
//! token is therefore matched in any of those spellings, so a fully encoded
//! token is caught as well as a plain one.
//!
//! The part after the colon is the secret; the part before it is the bot's
//! public id (shown by getMe). A page that prints the secret on its own
//! must not leak it either, so the secret is also matched alone, but only
//! when it is long enough not to occur in ordinary text by chance (a real
//! one is about 35 characters; a short test token must not eat words).

/// What a redacted token is replaced with.
pub const MASK: &str = "<token>";

/// A secret part shorter than this is only redacted as part of the token.
const MIN_SECRET_LEN: usize = 16;

/// Removes one token, in every spelling above, from text.
#[derive(Clone)]
pub struct Redactor {
    /// Longest first: the whole token, then the secret part on its own.
    needles: Vec<Vec<u8>>,
}

impl Redactor {
    pub fn new(token: &str) -> Redactor {
        let mut needles = Vec::new();
        if !token.is_empty() {
            needles.push(token.as_bytes().to_vec());
        }
        if let Some((_, secret)) = token.split_once(':') {
            if secret.len() >= MIN_SECRET_LEN {
                needles.push(secret.as_bytes().to_vec());
            }
        }
        Redactor { needles }
    }

    pub fn redact(&self, text: &str) -> String {
        if self.needles.is_empty() {
            return text.to_string();
        }
        let hay = text.as_bytes();
        let mut out = Vec::with_capacity(hay.len());
        let mut i = 0;
        while i < hay.len() {
            match self.needles.iter().find_map(|n| match_at(hay, i, n)) {
                Some(len) => {
                    out.extend_from_slice(MASK.as_bytes());
                    i += len;
                }
                None => {
                    out.push(hay[i]);
                    i += 1;
                }
            }
        }
        // A match starts and ends on character boundaries (the needle is
        // UTF-8 itself and every escape is ASCII), so this never fails; if
        // it ever did, lossy text is still better than none.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// The length of `needle`, spelled in any mix of the encodings, at
/// `hay[at..]`; None if it is not there.
fn match_at(hay: &[u8], at: usize, needle: &[u8]) -> Option<usize> {
    let mut pos = at;
    for &b in needle {
        pos += spelled_at(hay, pos, b)?;
    }
    Some(pos - at)
}

/// How many bytes at `hay[at..]` spell the byte `b`: itself, `%XX`, `%25XX`
/// or `\u00XX` (hex digits in either case).
fn spelled_at(hay: &[u8], at: usize, b: u8) -> Option<usize> {
    let rest = hay.get(at..)?;
    if rest.first() == Some(&b) {
        return Some(1);
    }
    let hex_is = |digits: &[u8]| {
        digits.len() == 2
            && std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                == Some(b)
    };
    if let Some(tail) = rest.strip_prefix(b"%") {
        if tail.get(..2).is_some_and(hex_is) {
            return Some(3);
        }
        if tail.starts_with(b"25") && tail.get(2..4).is_some_and(hex_is) {
            return Some(5);
        }
    }
    if b.is_ascii() {
        if let Some(tail) = rest.strip_prefix(b"\\u00") {
            if tail.get(..2).is_some_and(hex_is) {
                return Some(6);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "123456789:AAE-secretTOKENpart_xyz0123456789abc";

    fn r(text: &str) -> String {
        Redactor::new(TOKEN).redact(text)
    }

    /// Every character of `s` as `%XX`, with upper or lower case hex.
    fn all_encoded(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    #[test]
    fn the_exact_token() {
        assert_eq!(
            r(&format!("GET /bot{TOKEN}/getMe failed")),
            "GET /bot<token>/getMe failed"
        );
    }

    #[test]
    fn the_colon_percent_encoded_in_either_case() {
        let secret = TOKEN.split_once(':').unwrap().1;
        for colon in ["%3A", "%3a", "%253A", "%253a"] {
            assert_eq!(
                r(&format!("upstream /bot123456789{colon}{secret}/getUpdates")),
                "upstream /bot<token>/getUpdates",
                "{colon}"
            );
        }
    }

    #[test]
    fn the_token_fully_percent_encoded() {
        for upper in [true, false] {
            let text = format!("at {} end", all_encoded(TOKEN, upper));
            assert_eq!(r(&text), "at <token> end", "upper hex: {upper}");
        }
        // A mix of plain and encoded characters, the colon as a JSON escape.
        let mixed = "x 123%34%356789\\u003aAAE-secretTOKENpart_xyz0123456789%61bc y";
        assert_eq!(r(mixed), "x <token> y");
    }

    #[test]
    fn the_secret_part_on_its_own() {
        assert_eq!(
            r("key=AAE-secretTOKENpart_xyz0123456789abc; retry"),
            "key=<token>; retry"
        );
        let encoded = all_encoded("AAE-secretTOKENpart_xyz0123456789abc", false);
        assert_eq!(r(&format!("k={encoded}")), "k=<token>");
    }

    #[test]
    fn the_bot_id_alone_and_near_misses_stay() {
        // The id is public (getMe shows it); a truncated or altered secret
        // is not the secret.
        let text = "bot 123456789, AAE-secretTOKENpart_xyz0123456789ab, %3G, \\u00";
        assert_eq!(r(text), text);
    }

    #[test]
    fn a_short_secret_does_not_eat_ordinary_words() {
        let tiny = Redactor::new("123:SECRET");
        assert_eq!(
            tiny.redact("a SECRET word; /bot123:SECRET/x; /bot123%3ASECRET/y"),
            "a SECRET word; /bot<token>/x; /bot<token>/y"
        );
    }

    #[test]
    fn an_empty_token_changes_nothing_and_non_ascii_text_survives() {
        assert_eq!(Redactor::new("").redact("héllo %3A"), "héllo %3A");
        assert_eq!(r(&format!("é{TOKEN}ü")), "é<token>ü");
    }
}
