//! Sets of Bot API method names written as patterns: `sendMessage`,
//! `send*`, `delete*Message*`, and exclusions such as `!sendGift`.
//!
//! Matching ignores ASCII case because the Bot API does: Telegram runs
//! `SENDGIFT` as `sendGift`. A case-sensitive set would let a reply dodge an
//! exclusion just by changing case.
//!
//! A leaf: it knows nothing of replies or configuration, so anything that
//! grants a subset of methods (webhook replies, a client's scope) can use it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

/// Which methods are admitted: those matching some pattern and no
/// exclusion.
///
/// Shared, not copied: every forward and every bot's budget holds one and
/// the configuration is cloned into each task, so with 10,000 bots owned
/// copies of the default lists were ~4 KB a bot (a heap profile,
/// BENCHMARKS.md); equal lists now share one parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodSet(Arc<Sets>);

#[derive(Debug, PartialEq, Eq)]
struct Sets {
    /// As written, for display.
    written: Vec<String>,
    admit: Vec<String>,
    exclude: Vec<String>,
}

/// Each list parsed so far, by its patterns as written: a configuration
/// names few distinct lists however many bots it has.
fn parsed() -> &'static Mutex<HashMap<Vec<String>, Arc<Sets>>> {
    static PARSED: OnceLock<Mutex<HashMap<Vec<String>, Arc<Sets>>>> = OnceLock::new();
    PARSED.get_or_init(Default::default)
}

impl MethodSet {
    /// Parses patterns: letters, digits and `*` (any run of characters),
    /// optionally led by `!` for an exclusion. At least one pattern must
    /// admit something.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<MethodSet, String> {
        let key: Vec<String> = patterns.iter().map(|p| p.as_ref().to_string()).collect();
        let mut known = parsed().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sets) = known.get(&key) {
            return Ok(MethodSet(sets.clone()));
        }
        let sets = Arc::new(Sets::parse(patterns)?);
        known.insert(key, sets.clone());
        Ok(MethodSet(sets))
    }

    pub fn allows(&self, method: &str) -> bool {
        let method = method.to_ascii_lowercase();
        self.0.admit.iter().any(|p| glob(p, &method))
            && !self.0.exclude.iter().any(|p| glob(p, &method))
    }
}

impl Sets {
    fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Sets, String> {
        let mut set = Sets {
            written: Vec::new(),
            admit: Vec::new(),
            exclude: Vec::new(),
        };
        for p in patterns {
            let p = p.as_ref();
            let (list, body) = match p.strip_prefix('!') {
                Some(rest) => (&mut set.exclude, rest),
                None => (&mut set.admit, p),
            };
            if body.is_empty() || !body.chars().all(|c| c.is_ascii_alphanumeric() || c == '*') {
                return Err(format!(
                    "{p:?} is not a method pattern: use letters, digits and * (e.g. \"send*\"), with a leading ! to exclude"
                ));
            }
            list.push(body.to_ascii_lowercase());
            set.written.push(p.to_string());
        }
        if set.admit.is_empty() {
            return Err("no pattern admits any method; list at least one (e.g. \"send*\")".into());
        }
        Ok(set)
    }
}

impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.written.join(", "))
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (none included). Both are compared byte for byte.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // Greedy match with backtracking to the last star: linear in practice
    // and never worse than len(p) * len(n).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What `reply_methods` admits unless configured: the methods that answer
/// (send, edit or delete a message, answer a query, show a chat action),
/// and not `sendGift`, which spends the bot's Stars.
pub const DEFAULT_REPLY_METHODS: &[&str] = &[
    "send*",
    "!sendGift",
    "editMessage*",
    "answer*",
    "delete*Message*",
    "copyMessage*",
    "forwardMessage*",
    "stopPoll",
    "stopMessageLiveLocation",
    "setMessageReaction",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, n) in [
            ("sendmessage", "sendmessage"),
            ("send*", "send"),
            ("send*", "sendphoto"),
            ("delete*message*", "deletemessage"),
            ("delete*message*", "deletebusinessmessages"),
            ("*", "anything"),
            ("a*b*c", "aXbYbZc"),
        ] {
            assert!(glob(p, n), "{p} ~ {n}");
        }
        for (p, n) in [
            ("sendmessage", "sendmessages"),
            ("send*", "resend"),
            ("delete*message*", "deletewebhook"),
            ("a*b*c", "aXbYc1"),
            ("", "x"),
        ] {
            assert!(!glob(p, n), "{p} !~ {n}");
        }
    }

    #[test]
    fn equal_lists_share_one_parse_and_clones_share_it_too() {
        // 10,000 bots with the default reply methods hold one list, not
        // 10,000 (BENCHMARKS.md, "10,000 idle bots").
        let a = MethodSet::parse(DEFAULT_REPLY_METHODS).unwrap();
        let owned: Vec<String> = DEFAULT_REPLY_METHODS
            .iter()
            .map(|p| p.to_string())
            .collect();
        let b = MethodSet::parse(&owned).unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0), "equal lists parsed twice");
        assert!(Arc::ptr_eq(&a.0, &a.clone().0), "a clone copied the list");
        let other = MethodSet::parse(&["send*", "!sendGift"]).unwrap();
        assert!(!Arc::ptr_eq(&a.0, &other.0));
        assert_eq!(a, b);
        assert_ne!(a, other);
        // An error is not remembered as a set.
        assert!(MethodSet::parse(&["!sendGift"]).is_err());
        assert!(MethodSet::parse(&["!sendGift"]).is_err());
    }

    #[test]
    fn sets_admit_exclude_and_ignore_case() {
        let set = MethodSet::parse(&["send*", "!sendGift", "answerCallbackQuery"]).unwrap();
        assert!(set.allows("sendMessage"));
        assert!(set.allows("SENDMESSAGE"));
        assert!(set.allows("answercallbackquery"));
        assert!(!set.allows("sendGift"));
        assert!(
            !set.allows("SendGIFT"),
            "an exclusion cannot be dodged by case"
        );
        assert!(!set.allows("setMyName"));
        assert_eq!(set.to_string(), "send*, !sendGift, answerCallbackQuery");
    }

    #[test]
    fn bad_patterns_are_refused_with_the_rule() {
        for bad in [
            &[""][..],
            &["send-*"],
            &["!"],
            &["send Message"],
            &["!send*"],
            &[],
        ] {
            let e = MethodSet::parse(bad).unwrap_err();
            assert!(e.contains("pattern"), "{bad:?}: {e}");
        }
    }
}
