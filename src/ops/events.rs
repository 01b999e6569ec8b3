//! `GET /events[?bot=B&forward=F]`: the live event bus ([`crate::events`])
//! as NDJSON, one JSON object per line, for `pollhook tail` (or `curl -N`).
//!
//! A stream is a long response on one of the admin API's few connections,
//! so it is kept within bounds: at most half the connection cap is streams
//! (`status`, scrapes and `dlq` always find a connection); a keep-alive
//! line goes out whenever nothing else did for a while, so the server's
//! idle timeout (`admin.idle_timeout`, which a quiet stream would hit) cuts
//! only readers that went away; a reader slower than the events gets a
//! `lagged` line from the bounded bus instead of memory growing; a stop
//! ends every stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{Bus, Control, Filter, Listener, Next};
use crate::ops::serve::Limits;

/// The longest a stream stays silent; shorter under a short idle timeout.
const KEEPALIVE: Duration = Duration::from_secs(10);

pub struct Streams {
    bus: Bus,
    slots: Arc<Semaphore>,
    max: usize,
    keepalive: Duration,
    stop: CancellationToken,
}

impl Streams {
    pub fn new(bus: Bus, limits: &Limits, stop: CancellationToken) -> Streams {
        let max = limits.max_connections / 2;
        Streams {
            bus,
            slots: Arc::new(Semaphore::new(max)),
            max,
            keepalive: keepalive_for(limits.idle_timeout),
            stop,
        }
    }

    /// A stream of the events `filter` wants, or 503 when too many are open.
    pub fn open(&self, filter: Filter) -> Response {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            let why = if self.max == 0 {
                "the admin API's connection cap (an eighth of the file-handle limit) leaves no room for event streams; raise LimitNOFILE".to_string()
            } else {
                format!("{} event streams are open, the most the admin API allows (half its connection cap, so status and metrics stay reachable); close one", self.max)
            };
            return (StatusCode::SERVICE_UNAVAILABLE, why + "\n").into_response();
        };
        let stream = Stream {
            listener: self.bus.subscribe(),
            filter,
            every: self.keepalive,
            quiet_until: Instant::now() + self.keepalive,
            stop: self.stop.clone(),
            _slot: slot,
        };
        let body = Body::from_stream(futures_util::stream::unfold(stream, |mut s| async move {
            let line = s.next_line().await?;
            Some((Ok::<_, Infallible>(line), s))
        }));
        (
            [
                (header::CONTENT_TYPE, "application/x-ndjson"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response()
    }
}

/// Half the idle timeout, at most [`KEEPALIVE`]: a quiet stream is never
/// cut by the server's own idle timeout.
fn keepalive_for(idle_timeout: Duration) -> Duration {
    (idle_timeout / 2).clamp(Duration::from_millis(1), KEEPALIVE)
}

/// One open stream; its slot is given back when the response is dropped
/// (the reader went away, or the stream ended).
struct Stream {
    listener: Listener,
    filter: Filter,
    every: Duration,
    quiet_until: Instant,
    stop: CancellationToken,
    _slot: OwnedSemaphorePermit,
}

impl Stream {
    /// The next line to send; None ends the stream.
    async fn next_line(&mut self) -> Option<Bytes> {
        let line = loop {
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep_until(self.quiet_until) => break json_line(&Control::Keepalive),
                next = self.listener.recv() => match next {
                    Next::Event(e) if self.filter.wants(&e) => break json_line(&*e),
                    Next::Event(_) => continue,
                    Next::Lagged(missed) => break json_line(&Control::Lagged { missed }),
                    Next::Closed => return None,
                },
            }
        };
        self.quiet_until = Instant::now() + self.every;
        Some(line)
    }
}

fn json_line<T: serde::Serialize>(value: &T) -> Bytes {
    // Serializing our own plain structs cannot fail.
    let mut out = serde_json::to_vec(value).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Status, What, CAPACITY};

    fn delivered(bot: &str) -> Event {
        Event {
            at: 1,
            bot: bot.into(),
            forward: Some("app".into()),
            update_id: Some(1),
            chat: None,
            what: What::Delivered {
                status: Status::Http(200),
                ms: 1,
                attempt: 1,
            },
        }
    }

    fn stream(bus: &Bus, filter: Filter) -> Stream {
        Stream {
            listener: bus.subscribe(),
            filter,
            every: Duration::from_secs(10),
            quiet_until: Instant::now() + Duration::from_secs(10),
            stop: CancellationToken::new(),
            _slot: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
        }
    }

    #[tokio::test]
    async fn a_slow_reader_is_told_what_it_missed_and_the_rest_is_filtered() {
        let bus = Bus::new();
        let mut s = stream(
            &bus,
            Filter {
                bot: Some("main".into()),
                forward: None,
            },
        );
        for i in 0..CAPACITY + 7 {
            bus.emit(|| delivered(if i % 2 == 0 { "main" } else { "other" }));
        }
        let line = s.next_line().await.unwrap();
        assert_eq!(&line[..], b"{\"event\":\"lagged\",\"missed\":7}\n");
        let line = s.next_line().await.unwrap();
        assert!(line.starts_with(b"{\"at\":1,\"bot\":\"main\""), "{line:?}");
        let line = s.next_line().await.unwrap();
        assert!(line.starts_with(b"{\"at\":1,\"bot\":\"main\""), "{line:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_sends_keepalives_and_a_stop_ends_it() {
        let bus = Bus::new();
        let mut s = stream(&bus, Filter::default());
        let started = Instant::now();
        let line = s.next_line().await.unwrap();
        assert_eq!(&line[..], b"{\"event\":\"keepalive\"}\n");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        s.stop.cancel();
        assert!(s.next_line().await.is_none());
    }

    #[test]
    fn keepalives_come_well_within_the_idle_timeout() {
        assert_eq!(keepalive_for(Duration::from_secs(60)), KEEPALIVE);
        assert_eq!(
            keepalive_for(Duration::from_secs(3)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            keepalive_for(Duration::from_nanos(1)),
            Duration::from_millis(1)
        );
    }
}
