//! Live events as lines for a person, the way `stripe listen` shows them:
//! `pollhook tail`, and the quick start's own output on a terminal.
//!
//! ```text
//! 14:03:07.101  bot           #244272513  chat 42      received message
//! 14:03:07.114  bot/app       #244272513  chat 42      → 200 in 12 ms
//! 14:03:09.530  bot/app       #244272514  chat 42      failed: HTTP 500 (attempt 1, next in 1.9s)
//! ```
//!
//! Colour (green delivered, red failed and dead-lettered, dim received)
//! only on a terminal, and not with `NO_COLOR` set.

use std::fmt::Write;
use std::io::IsTerminal;
use std::time::Duration;

use crate::events::{Event, Listener, Next, Status, What};

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

#[derive(Debug, Clone, Copy)]
pub struct Style {
    colour: bool,
    who: Who,
}

/// How an event names whose it is.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// `bot/forward`, padded to this width.
    Full(usize),
    /// The forward only (the quick start's one bot), padded to this width.
    Forward(usize),
    /// Nothing (the quick start with one forward: there is only one).
    Hidden,
}

impl Style {
    /// For `pollhook tail`: `bot/forward` on each line.
    pub fn for_stdout() -> Style {
        Style {
            colour: colour_on_stdout(),
            who: Who::Full(14),
        }
    }

    /// For the quick start, whose one bot is always `bot`: the forward's
    /// name (its URL) only when there are several.
    pub fn for_quick_start(forwards: &[String]) -> Style {
        let who = match forwards {
            [] | [_] => Who::Hidden,
            many => Who::Forward(many.iter().map(|f| f.chars().count()).max().unwrap_or(0)),
        };
        Style {
            colour: colour_on_stdout(),
            who,
        }
    }

    #[cfg(test)]
    pub fn plain() -> Style {
        Style {
            colour: false,
            who: Who::Full(14),
        }
    }

    fn paint(self, colour: &str, text: String) -> String {
        if self.colour {
            format!("{colour}{text}{RESET}")
        } else {
            text
        }
    }

    /// One event as a line (no newline).
    pub fn event(self, e: &Event) -> String {
        let mut line = clock(e.at);
        line.push_str("  ");
        match self.who {
            Who::Full(width) => {
                let mut who = e.bot.clone();
                if let Some(f) = &e.forward {
                    who.push('/');
                    who.push_str(f);
                }
                let _ = write!(line, "{who:<width$}  ");
            }
            Who::Forward(width) => {
                let who = e.forward.as_deref().unwrap_or("");
                let _ = write!(line, "{who:<width$}  ");
            }
            Who::Hidden => {}
        }
        let id = e.update_id.map_or("#?".to_string(), |id| format!("#{id}"));
        let chat = e
            .chat
            .as_ref()
            .map_or(String::new(), |c| format!("chat {c}"));
        let _ = write!(line, "{id:<11}  {chat:<12} {}", what(&e.what));
        let colour = match &e.what {
            What::Received { .. } => DIM,
            What::Delivered { .. } | What::Reply { ok: true, .. } => GREEN,
            What::Failed { .. } | What::DeadLettered { .. } | What::Reply { ok: false, .. } => RED,
        };
        self.paint(colour, line)
    }

    /// What a reader that fell behind is told.
    pub fn lagged(self, missed: u64) -> String {
        self.paint(
            YELLOW,
            format!("… {missed} events missed: this reader fell behind"),
        )
    }
}

/// What happened, in words.
fn what(w: &What) -> String {
    match w {
        What::Received { kind, forwards } if forwards.is_empty() => {
            format!("received {kind} (no forward wants it; dropped)")
        }
        What::Received { kind, .. } => format!("received {kind}"),
        What::Delivered {
            status,
            ms,
            attempt,
        } => {
            let status = match status {
                Status::Http(code) => code.to_string(),
                Status::Ack(_) => "ack".to_string(),
            };
            let mut s = format!("→ {status} in {ms} ms");
            if *attempt > 1 {
                let _ = write!(s, " (attempt {attempt})");
            }
            s
        }
        What::Failed {
            error,
            attempt,
            retry_in_ms,
        } => match retry_in_ms {
            // The first retry goes at once.
            Some(0) => format!("failed: {error} (attempt {attempt}, retrying now)"),
            Some(ms) => format!(
                "failed: {error} (attempt {attempt}, next in {})",
                span(Duration::from_millis(*ms))
            ),
            None => format!("failed: {error} (attempt {attempt}, the last)"),
        },
        What::DeadLettered { reason, attempts } => {
            format!("dead-lettered after {attempts} attempt(s): {reason}")
        }
        What::Reply { method, ok, error } => {
            let method = method.as_deref().unwrap_or("(unreadable)");
            if *ok {
                format!("reply {method} ok")
            } else {
                format!(
                    "reply {method} not made: {}",
                    error.as_deref().unwrap_or("unknown error")
                )
            }
        }
    }
}

/// A wait as a person reads it: `250 ms`, `1.9s`, `45s`, `2m05s`.
fn span(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1}s", d.as_secs_f64()),
        10_000..60_000 => format!("{}s", d.as_secs()),
        _ => format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60),
    }
}

/// Colour when stdout is a terminal and `NO_COLOR` is not set (as the
/// log's own colour decides for stderr).
fn colour_on_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// `HH:MM:SS.mmm` in local time.
fn clock(ms: u64) -> String {
    local_time(ms).1
}

/// `(YYYY-MM-DD, HH:MM:SS.mmm)` in local time (UTC if the local time is
/// unknown).
pub(super) fn local_time(ms: u64) -> (String, String) {
    let secs = (ms / 1000) as libc::time_t;
    // SAFETY: an all-zero `tm` is valid (its one pointer is null), and
    // localtime_r(3) / gmtime_r(3) only write into the struct they are given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe {
        !libc::localtime_r(&secs, &mut tm).is_null() || !libc::gmtime_r(&secs, &mut tm).is_null()
    };
    if !ok {
        return (String::from("????-??-??"), format!("{ms}"));
    }
    (
        format!(
            "{:04}-{:02}-{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday
        ),
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
            ms % 1000
        ),
    )
}

/// The quick start's output: prints each event until every sender is gone
/// (the relay stopped).
pub async fn print(mut listener: Listener, style: Style) {
    loop {
        match listener.recv().await {
            Next::Event(e) => println!("{}", style.event(&e)),
            Next::Lagged(n) => println!("{}", style.lagged(n)),
            Next::Closed => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(forward: Option<&str>, what: What) -> Event {
        Event {
            at: 1_700_000_000_123,
            bot: "bot".into(),
            forward: forward.map(Into::into),
            update_id: Some(244272513),
            chat: Some("42".into()),
            what,
        }
    }

    #[test]
    fn each_event_reads_as_what_happened() {
        let plain = Style::plain();
        let received = plain.event(&event(
            None,
            What::Received {
                kind: "message".into(),
                forwards: vec!["app".into()],
            },
        ));
        assert!(
            received.ends_with("bot             #244272513   chat 42      received message"),
            "{received}"
        );
        assert!(received.contains(".123  "), "{received}");
        let cases = [
            (
                What::Delivered {
                    status: Status::Http(200),
                    ms: 12,
                    attempt: 1,
                },
                "→ 200 in 12 ms",
            ),
            (
                What::Delivered {
                    status: Status::ACK,
                    ms: 3,
                    attempt: 2,
                },
                "→ ack in 3 ms (attempt 2)",
            ),
            (
                What::Failed {
                    error: "connection refused".into(),
                    attempt: 2,
                    retry_in_ms: Some(4000),
                },
                "failed: connection refused (attempt 2, next in 4.0s)",
            ),
            (
                What::Failed {
                    error: "HTTP 503".into(),
                    attempt: 1,
                    retry_in_ms: Some(0),
                },
                "failed: HTTP 503 (attempt 1, retrying now)",
            ),
            (
                What::Failed {
                    error: "HTTP 500".into(),
                    attempt: 3,
                    retry_in_ms: None,
                },
                "failed: HTTP 500 (attempt 3, the last)",
            ),
            (
                What::DeadLettered {
                    reason: "HTTP 500".into(),
                    attempts: 3,
                },
                "dead-lettered after 3 attempt(s): HTTP 500",
            ),
            (
                What::Reply {
                    method: Some("sendMessage".into()),
                    ok: true,
                    error: None,
                },
                "reply sendMessage ok",
            ),
        ];
        for (what, words) in cases {
            let line = plain.event(&event(Some("app"), what));
            assert!(line.contains("bot/app "), "{line}");
            assert!(line.ends_with(words), "{line} / {words}");
            assert!(!line.contains('\x1b'), "{line}");
        }
    }

    #[test]
    fn the_quick_start_names_a_forward_only_when_it_has_several() {
        let e = event(
            Some("http://127.0.0.1:3000/hook"),
            What::Delivered {
                status: Status::Http(204),
                ms: 5,
                attempt: 1,
            },
        );
        let one = Style::for_quick_start(&["http://127.0.0.1:3000/hook".into()]).event(&e);
        assert!(!one.contains("bot") && !one.contains("http"), "{one}");
        assert!(one.contains(".123  #244272513  "), "{one}");
        let two = Style::for_quick_start(&[
            "http://127.0.0.1:3000/hook".into(),
            "http://127.0.0.1:4000/x".into(),
        ])
        .event(&e);
        assert!(
            two.contains("  http://127.0.0.1:3000/hook  #244272513"),
            "{two}"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let e = event(
            Some("app"),
            What::DeadLettered {
                reason: "gone".into(),
                attempts: 1,
            },
        );
        let red = Style {
            colour: true,
            ..Style::plain()
        }
        .event(&e);
        assert!(red.starts_with(RED) && red.ends_with(RESET), "{red:?}");
    }

    #[test]
    fn waits_read_naturally() {
        assert_eq!(span(Duration::from_millis(250)), "250 ms");
        assert_eq!(span(Duration::from_millis(1940)), "1.9s");
        assert_eq!(span(Duration::from_secs(45)), "45s");
        assert_eq!(span(Duration::from_secs(125)), "2m05s");
    }
}
