//! What a dispatcher tells history about each attempt: the record an
//! operator later reads in `pollhook show`.

use std::time::Duration;

use crate::clock::now_ms;
use crate::history::{Fate, Outcome};
use crate::store::Job;

/// The record of one attempt's (or the update's final) outcome.
pub fn outcome<'a>(
    job: &Job,
    forward: &'a str,
    result: Fate,
    status: Option<u16>,
    attempt: u32,
    took: Duration,
    error: &'a str,
) -> Outcome<&'a str> {
    Outcome {
        at_ms: now_ms(),
        update_id: job.update_id,
        result,
        status,
        attempt,
        ms: took.as_millis().min(u32::MAX as u128) as u32,
        replay: job.replayed_ms != 0,
        forward,
        error,
    }
}

/// The HTTP status a failed attempt's error names (`HTTP 502 Bad
/// Gateway`, as the HTTP sink words it), if it names one.
pub fn status_in(error: &str) -> Option<u16> {
    let code = error.strip_prefix("HTTP ")?.get(..3)?;
    code.parse().ok().filter(|c| (100..600).contains(c))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_status_is_read_from_the_sinks_wording_only() {
        assert_eq!(super::status_in("HTTP 502 Bad Gateway"), Some(502));
        assert_eq!(super::status_in("HTTP 5"), None);
        assert_eq!(super::status_in("no answer within 10s"), None);
        assert_eq!(super::status_in("connection refused (HTTP 502)"), None);
    }
}
