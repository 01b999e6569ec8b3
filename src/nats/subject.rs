//! A JetStream forward's subject: a template such as
//! `tg.{bot}.{kind}.{chat}` filled in per update, the wildcard pattern a
//! stream must capture for it, and NATS's subject matching for the probe.
//!
//! A leaf: configuration parses templates, the sink renders them, the
//! probe matches them against streams.

use std::fmt;

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Bot,
    Kind,
    Chat,
    UpdateId,
}

const FIELDS: [(&str, Field); 4] = [
    ("bot", Field::Bot),
    ("kind", Field::Kind),
    ("chat", Field::Chat),
    ("update_id", Field::UpdateId),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value(Field),
}

/// A parsed subject template. Tokens are separated by `.`; a token mixes
/// text and placeholders (`chat-{chat}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    text: String,
    tokens: Vec<Vec<Piece>>,
}

/// The values of one update. `chat` is its chat id, else its sender's user
/// id, else None.
pub struct Values<'a> {
    pub bot: &'a str,
    pub kind: &'a str,
    pub chat: Option<&'a str>,
    pub update_id: Option<i64>,
}

impl SubjectTemplate {
    /// Parses a template; the error says what is wrong in words fit for a
    /// configuration message.
    pub fn parse(text: &str) -> Result<SubjectTemplate, String> {
        if text.is_empty() {
            return Err("is empty".into());
        }
        if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{text:?} holds {c:?}; a NATS subject has no spaces or control characters"
            ));
        }
        let mut tokens = Vec::new();
        for token in text.split('.') {
            if token.is_empty() {
                return Err(format!(
                    "{text:?} has an empty token (\"..\", or a leading or trailing dot)"
                ));
            }
            if token.contains('*') || token.contains('>') {
                return Err(format!(
                    "{text:?} holds a wildcard (* or >); updates are published to one subject each, so write placeholders instead: {}",
                    known()
                ));
            }
            tokens.push(pieces(text, token)?);
        }
        Ok(SubjectTemplate {
            text: text.to_string(),
            tokens,
        })
    }

    /// The subject one update is published to.
    pub fn render(&self, v: &Values) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for (i, token) in self.tokens.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            for piece in token {
                match piece {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Value(Field::Bot) => push_safe(&mut out, v.bot),
                    Piece::Value(Field::Kind) => push_safe(&mut out, v.kind),
                    Piece::Value(Field::Chat) => push_safe(&mut out, v.chat.unwrap_or("_")),
                    Piece::Value(Field::UpdateId) => match v.update_id {
                        Some(id) => out.push_str(&id.to_string()),
                        None => out.push('_'),
                    },
                }
            }
        }
        out
    }

    /// The subjects a bot's updates may go to, as a wildcard pattern: each
    /// token with a placeholder other than `{bot}` becomes `*`.
    pub fn pattern(&self, bot: &str) -> String {
        let mut out = Vec::with_capacity(self.tokens.len());
        for token in &self.tokens {
            let varies = token
                .iter()
                .any(|p| matches!(p, Piece::Value(f) if *f != Field::Bot));
            if varies {
                out.push("*".to_string());
            } else {
                let mut t = String::new();
                for p in token {
                    match p {
                        Piece::Text(s) => t.push_str(s),
                        _ => push_safe(&mut t, bot),
                    }
                }
                out.push(t);
            }
        }
        out.join(".")
    }
}

impl fmt::Display for SubjectTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn known() -> String {
    FIELDS
        .iter()
        .map(|(n, _)| format!("{{{n}}}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn pieces(text: &str, token: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = token;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                out.push(Piece::Text(rest.to_string()));
                break;
            }
            Some(at) if rest.as_bytes()[at] == b'}' => {
                return Err(format!("{text:?} has a '}}' without its '{{'"));
            }
            Some(at) => {
                if at > 0 {
                    out.push(Piece::Text(rest[..at].to_string()));
                }
                let after = &rest[at + 1..];
                let Some(end) = after.find('}') else {
                    return Err(format!("{text:?} has a '{{' without its '}}'"));
                };
                let name = &after[..end];
                let field = FIELDS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, f)| *f)
                    .ok_or_else(|| {
                        format!("{text:?}: {{{name}}} is not a placeholder; use {}", known())
                    })?;
                out.push(Piece::Value(field));
                rest = &after[end + 1..];
            }
        }
    }
    Ok(out)
}

/// The longest value put in a subject or header. Chat ids are a few dozen
/// characters at most; a hostile one must not make a subject longer than
/// the server's control line (4 KiB), which closes the connection.
pub const MAX_VALUE: usize = 128;

/// Appends a value as subject-safe text: what comes from the platform
/// (chat ids are text on some) must not add tokens or wildcards, so
/// anything but letters, digits, `_` and `-` becomes `_`; nor be long.
fn push_safe(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
        return;
    }
    out.extend(value.chars().take(MAX_VALUE).map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    }));
}

/// Whether every subject `pattern` matches is also matched by `filter`
/// (a stream's subject): a stream with that filter captures the pattern.
pub fn captures(filter: &str, pattern: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let p: Vec<&str> = pattern.split('.').collect();
    for (i, ft) in f.iter().enumerate() {
        if *ft == ">" {
            return p.len() > i;
        }
        let Some(pt) = p.get(i) else { return false };
        if *pt == ">" {
            return false;
        }
        if *ft != "*" && (*pt == "*" || ft != pt) {
            return false;
        }
    }
    f.len() == p.len()
}

/// Whether some subject is matched by both `a` and `b`.
pub fn overlaps(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    for i in 0.. {
        match (a.get(i), b.get(i)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (Some(x), Some(y)) => {
                if *x != "*" && *y != "*" && x != y {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(chat: Option<&'a str>) -> Values<'a> {
        Values {
            bot: "support",
            kind: "message",
            chat,
            update_id: Some(42),
        }
    }

    #[test]
    fn renders_each_placeholder() {
        let t = SubjectTemplate::parse("tg.{bot}.{kind}.{chat}.u{update_id}").unwrap();
        assert_eq!(
            t.render(&values(Some("-100123"))),
            "tg.support.message.-100123.u42"
        );
        assert_eq!(t.render(&values(None)), "tg.support.message._.u42");
    }

    #[test]
    fn platform_text_cannot_add_tokens_or_wildcards() {
        let t = SubjectTemplate::parse("tg.{chat}").unwrap();
        assert_eq!(t.render(&values(Some("a.b>*c d"))), "tg.a_b__c_d");
        assert_eq!(t.render(&values(Some(""))), "tg._");
        let long = "9".repeat(10_000);
        assert_eq!(t.render(&values(Some(&long))).len(), 3 + MAX_VALUE);
    }

    #[test]
    fn refuses_what_is_not_a_publish_subject() {
        for bad in [
            "",
            "tg..x",
            ".tg",
            "tg.",
            "tg.*",
            "tg.>",
            "tg x",
            "tg.{nope}",
            "tg.{chat",
            "tg.chat}",
        ] {
            assert!(SubjectTemplate::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let e = SubjectTemplate::parse("tg.{user}").unwrap_err();
        assert!(e.contains("{chat}") && e.contains("{update_id}"), "{e}");
    }

    #[test]
    fn the_pattern_keeps_the_bot_and_widens_the_rest() {
        let t = SubjectTemplate::parse("tg.{bot}.{kind}.c-{chat}").unwrap();
        assert_eq!(t.pattern("support"), "tg.support.*.*");
        let t = SubjectTemplate::parse("updates").unwrap();
        assert_eq!(t.pattern("x"), "updates");
    }

    #[test]
    fn capture_follows_nats_matching() {
        assert!(captures("tg.>", "tg.support.*.*"));
        assert!(captures("tg.*.*.*", "tg.support.*.*"));
        assert!(captures("tg.support.*.*", "tg.support.*.*"));
        assert!(!captures("tg.support.message.*", "tg.support.*.*"));
        assert!(!captures("tg.*", "tg.support.*.*"));
        assert!(!captures("tg.support.*.*.*", "tg.support.*.*"));
        assert!(!captures("other.>", "tg.support.*.*"));
        assert!(!captures("tg.>", "tg"));
        assert!(captures(">", "tg"));
    }

    #[test]
    fn overlap_is_any_common_subject() {
        assert!(overlaps("tg.support.message.*", "tg.support.*.*"));
        assert!(overlaps("tg.>", "tg.a.b"));
        assert!(!overlaps("tg.a.*", "tg.b.*"));
        assert!(!overlaps("tg.a", "tg.a.b"));
    }
}
