//! What tests assert about what the relay forwarded and logged.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::{Received, TOKEN};

/// The update_id of a forwarded update.
pub fn update_id(r: &Received) -> i64 {
    r.json()["update_id"]
        .as_i64()
        .expect("forwarded body has an update_id")
}

/// The chat id of a forwarded message update.
pub fn chat_id(r: &Received) -> String {
    r.json()["message"]["chat"]["id"].to_string()
}

pub fn distinct_ids(rs: &[Received]) -> HashSet<i64> {
    rs.iter().map(update_id).collect()
}

/// Update ids per chat, in arrival order.
pub fn per_chat(rs: &[Received]) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in rs {
        out.entry(chat_id(r)).or_default().push(update_id(r));
    }
    out
}

/// Fails the test if the token shows up anywhere in `logs`: its secret
/// part as is (which also covers the whole token, with its colon plain or
/// percent-encoded), or with every character percent-encoded (hex digits in
/// either case).
pub fn assert_no_token(logs: &str) {
    let secret_part = TOKEN.split_once(':').unwrap().1;
    let encoded: String = secret_part.bytes().map(|b| format!("%{b:02x}")).collect();
    let lower = logs.to_ascii_lowercase();
    let leaks = |l: &str| l.contains(secret_part) || l.to_ascii_lowercase().contains(&encoded);
    assert!(
        !logs.contains(secret_part) && !lower.contains(&encoded),
        "the bot token leaked into the logs:\n{}",
        {
            logs.lines()
                .filter(|l| leaks(l))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        }
    );
}

/// The first line of `logs` that contains `needle`.
pub fn log_line<'a>(logs: &'a str, needle: &str) -> &'a str {
    logs.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no log line has {needle:?}:\n{logs}"))
}

/// The wait a log line announces in its `retry_in=…s` field.
pub fn retry_in(line: &str) -> Duration {
    let secs = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("retry_in="))
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no retry_in=…s in the log line: {line}"));
    Duration::from_secs_f64(secs)
}
