//! What a `/metrics` scrape declares, and the `pollhook_…` metric names a
//! text (alert rules, a dashboard's queries) uses: the example files in
//! docs/ are checked against a running pollhook with these.

use std::collections::BTreeSet;

/// Every `pollhook_…` metric name `text` mentions.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    let mut before: Option<char> = None;
    while let Some(at) = rest.find("pollhook_") {
        // A name starts at a word boundary: not inside `xpollhook_…`.
        let prev = rest[..at].chars().next_back().or(before);
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        if !prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..len].to_string());
        }
        before = tail[..len].chars().next_back();
        rest = &tail[len..];
    }
    names
}

/// Whether the scrape declares `name`, directly or as a histogram's
/// `_bucket`, `_sum` or `_count` series.
pub fn exported(scrape: &str, name: &str) -> bool {
    let declared = |n: &str, kind: Option<&str>| {
        scrape.lines().any(|line| {
            let mut words = line.split_whitespace();
            words.next() == Some("#")
                && words.next() == Some("TYPE")
                && words.next() == Some(n)
                && kind.is_none_or(|k| words.next() == Some(k))
        })
    };
    declared(name, None)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| declared(base, Some("histogram")))
        })
}
