//! Answers remembered by `Idempotency-Key`: a client that timed out and
//! retries gets the first call's answer instead of a second message.
//!
//! Kept in sled for 24 hours (a tree by key, and one by time for expiry),
//! so a restart between the call and the retry changes nothing. A repeat
//! that arrives while the first call still runs waits for its answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tracing::warn;

use crate::clock::now_ms;

/// How long an answer is kept: the platforms keep updates as long.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Answers larger than this are not kept (sent messages are ~1 KB; large
/// answers come from reads, which need no protection from repeats).
pub const MAX_ANSWER: usize = 64 * 1024;
/// Keys longer than this are refused (Stripe allows 255).
pub const MAX_KEY: usize = 255;
/// Kept answers at most; the oldest go first beyond it, which bounds the
/// disk at about MAX_KEPT × (answer + key).
const MAX_KEPT: usize = 200_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

pub struct Answers {
    by_key: sled::Tree,
    by_time: sled::Tree,
    running: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a call with a key runs: a repeat waits on it.
pub struct Running {
    answers: Arc<Answers>,
    key: Vec<u8>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.answers.lock_running();
        // The last one out removes the entry (2 = the map's and ours).
        if running
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) <= 2)
        {
            running.remove(&self.key);
        }
    }
}

impl Answers {
    pub fn open(by_key: sled::Tree, by_time: sled::Tree) -> Answers {
        Answers {
            by_key,
            by_time,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn lock_running(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn key(bot: &str, client: &str, idempotency_key: &str) -> Vec<u8> {
        [
            bot.as_bytes(),
            b"\0",
            client.as_bytes(),
            b"\0",
            idempotency_key.as_bytes(),
        ]
        .concat()
    }

    /// Waits for any call with the same key to finish; then returns its
    /// remembered answer, or the turn to make the call.
    pub async fn begin(self: &Arc<Self>, key: Vec<u8>) -> Result<Answer, Running> {
        let turn = self.lock_running().entry(key.clone()).or_default().clone();
        let turn = turn.lock_owned().await;
        let running = Running {
            answers: self.clone(),
            key,
            _turn: turn,
        };
        match self.get(&running.key) {
            Some(a) => Ok(a),
            None => Err(running),
        }
    }

    fn get(&self, key: &[u8]) -> Option<Answer> {
        let v = match self.by_key.get(key) {
            Ok(v) => v?,
            Err(e) => {
                warn!("gateway: cannot read a remembered answer: {e}; the call is made");
                return None;
            }
        };
        let (at, answer) = decode(&v)?;
        (now_ms().saturating_sub(at) < KEEP.as_millis() as u64).then_some(answer)
    }

    /// Remembers the answer to the call `running` made.
    pub fn keep(&self, running: &Running, answer: &Answer) {
        if answer.body.len() > MAX_ANSWER {
            return;
        }
        let at = now_ms();
        let mut time_key = at.to_be_bytes().to_vec();
        time_key.extend_from_slice(&running.key);
        let stored = self
            .by_key
            .insert(&running.key[..], encode(at, answer))
            .and_then(|_| self.by_time.insert(time_key, &[][..]));
        if let Err(e) = stored {
            warn!("gateway: cannot remember an answer for its Idempotency-Key: {e}; a repeat would call again");
        }
    }

    /// Forgets answers older than [`KEEP`], and the oldest beyond the cap.
    pub fn expire(&self) -> Result<usize, sled::Error> {
        let cutoff = now_ms().saturating_sub(KEEP.as_millis() as u64);
        let excess = self.by_time.len().saturating_sub(MAX_KEPT);
        let mut gone = 0;
        for item in self.by_time.iter() {
            let (k, _) = item?;
            let at = u64::from_be_bytes(k[..8].try_into().unwrap_or_default());
            if at >= cutoff && gone >= excess {
                break;
            }
            let key = &k[8..];
            // A newer answer under the same key keeps its own entry.
            if let Some(v) = self.by_key.get(key)? {
                if decode(&v).is_none_or(|(t, _)| t == at) {
                    self.by_key.remove(key)?;
                }
            }
            self.by_time.remove(&k)?;
            gone += 1;
        }
        Ok(gone)
    }
}

/// at (8) | status (2) | content-type length (2) | content type | body
fn encode(at: u64, a: &Answer) -> Vec<u8> {
    let ct = a.content_type.as_deref().unwrap_or("").as_bytes();
    let ct = &ct[..ct.len().min(u16::MAX as usize)];
    let mut v = Vec::with_capacity(12 + ct.len() + a.body.len());
    v.extend_from_slice(&at.to_be_bytes());
    v.extend_from_slice(&a.status.to_be_bytes());
    v.extend_from_slice(&(ct.len() as u16).to_be_bytes());
    v.extend_from_slice(ct);
    v.extend_from_slice(&a.body);
    v
}

fn decode(v: &[u8]) -> Option<(u64, Answer)> {
    let at = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let status = u16::from_be_bytes(v.get(8..10)?.try_into().ok()?);
    let n = u16::from_be_bytes(v.get(10..12)?.try_into().ok()?) as usize;
    let ct = std::str::from_utf8(v.get(12..12 + n)?).ok()?;
    Some((
        at,
        Answer {
            status,
            content_type: (!ct.is_empty()).then(|| ct.to_string()),
            body: Bytes::copy_from_slice(v.get(12 + n..)?),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers() -> Arc<Answers> {
        let db = sled::Config::new().temporary(true).open().unwrap();
        Arc::new(Answers::open(
            db.open_tree("a").unwrap(),
            db.open_tree("t").unwrap(),
        ))
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_answer_and_waits_while_it_runs() {
        let a = answers();
        let key = Answers::key("main", "app", "k1");
        let first = a.begin(key.clone()).await.expect_err("nothing kept yet");
        let a2 = a.clone();
        let k2 = key.clone();
        let repeat = tokio::spawn(async move { a2.begin(k2).await.ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!repeat.is_finished(), "the repeat waits for the first call");
        let answer = Answer {
            status: 200,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(br#"{"ok":true,"result":{"message_id":7}}"#),
        };
        a.keep(&first, &answer);
        drop(first);
        assert_eq!(repeat.await.unwrap(), Some(answer));
        assert!(a.lock_running().is_empty(), "nothing left running");
        // Another key (or client) is another call.
        assert!(a.begin(Answers::key("main", "other", "k1")).await.is_err());
    }

    #[test]
    fn answers_survive_encoding_and_expire() {
        let a = Answer {
            status: 400,
            content_type: None,
            body: Bytes::from_static(b"x"),
        };
        assert_eq!(decode(&encode(5, &a)), Some((5, a)));
        assert_eq!(decode(b"short"), None);
        let store = answers();
        let old = now_ms() - KEEP.as_millis() as u64 - 1;
        let key = Answers::key("b", "c", "old");
        let mut tk = old.to_be_bytes().to_vec();
        tk.extend_from_slice(&key);
        store
            .by_key
            .insert(
                &key[..],
                encode(
                    old,
                    &Answer {
                        status: 200,
                        content_type: None,
                        body: Bytes::new(),
                    },
                ),
            )
            .unwrap();
        store.by_time.insert(tk, &[][..]).unwrap();
        assert_eq!(store.get(&key), None, "too old to count");
        assert_eq!(store.expire().unwrap(), 1);
        assert!(store.by_key.is_empty() && store.by_time.is_empty());
    }
}
