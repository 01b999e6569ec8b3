//! Wall-clock milliseconds: what retry schedules and receive times are
//! stored in, so they keep their meaning across a restart.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
