//! Persist, then confirm: SIGKILL the real binary at random moments during a
//! stream of updates, restart it each time, and count.

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;

use crate::rig::*;

/// Every update the fake API counts as confirmed must be delivered or still
/// in the store: confirmation never runs ahead of durable storage.
///
/// On MPChat a batch counts as consumed the moment it is answered. `window`
/// holds the batches that may be lost that way: for each kill, the last batch
/// answered before it (possibly being stored at that instant) and every batch
/// answered afterwards to the dead process's still-open long poll, until the
/// restarted relay's first poll supersedes it.
async fn check_after_kill(setup: &Setup, round: usize, window: &HashSet<i64>) -> usize {
    let confirmed = setup.api.confirmed(TOKEN).unwrap_or(0);
    let delivered: HashSet<i64> = distinct_ids(&setup.backend.accepted());
    let stored = stored_update_ids(&setup.state_dir()).await;
    let missing: Vec<i64> = (1..=confirmed)
        .filter(|id| !delivered.contains(id) && !stored.contains(id) && !window.contains(id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "after kill {round}: the API had confirmed up to {confirmed}, but these were neither delivered nor stored: {missing:?}"
    );
    stored.len()
}

/// The ids of batches answered from index `from` on (MPChat only).
fn answered_since(setup: &Setup, from: usize) -> HashSet<i64> {
    match setup.flavor {
        Flavor::MpChat => setup.api.batches(TOKEN)[from..]
            .iter()
            .flatten()
            .copied()
            .collect(),
        _ => HashSet::new(),
    }
}

pub enum Messages {
    /// "update N" in a state directory pollhook makes itself.
    Short,
    /// 12 KB Cyrillic texts, random letters (the queue stores groups
    /// compressed: repeated letters would shrink to nothing), in a state
    /// directory made with sled's 512 KiB segments as older pollhooks did:
    /// leaves go to sled's blob files.
    LongInOldSegments,
}

pub struct CrashRun {
    /// Distinct updates the backend accepted.
    pub delivered: usize,
    pub lost: usize,
    /// The most blob files the state directory held at a kill.
    pub blob_files: usize,
}

fn blob_files(setup: &Setup) -> usize {
    std::fs::read_dir(setup.state_dir().join("db").join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// ` ` and `n` random Cyrillic letters (2 bytes each), the same for one id.
fn random_letters(id: i64, n: usize) -> String {
    let mut x = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let letters = (0..n).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        char::from_u32(0x430 + (x % 32) as u32).unwrap_or('д')
    });
    std::iter::once(' ').chain(letters).collect()
}

/// Streams `updates` updates over 100 chats while killing the relay `kills`
/// times, and counts.
pub async fn crash_run(flavor: Flavor, updates: i64, kills: usize, messages: Messages) -> CrashRun {
    let setup = Setup::with(flavor).await;
    let config = setup.config("", "max_in_flight = 16");
    let long = match messages {
        Messages::Short => false,
        Messages::LongInOldSegments => {
            sled::Config::new()
                .path(setup.state_dir().join("db"))
                .segment_size(512 * 1024)
                .open()
                .and_then(|db| db.flush())
                .expect("an old-style state directory");
            wait_for_sled_to_let_go(&setup.state_dir()).await;
            true
        }
    };
    let env = [("RUST_LOG", "info")];
    let mut relay = Relay::spawn(&config, &env);

    // A stream: 100 updates every 40 ms.
    let api = setup.api.clone();
    let producer = tokio::spawn(async move {
        let mut id = 1;
        while id <= updates {
            for _ in 0..100 {
                if id > updates {
                    break;
                }
                let padding = if long {
                    random_letters(id, 6_000)
                } else {
                    String::new()
                };
                api.push_message(TOKEN, id, id % 100, &format!("update {id}{padding}"));
                id += 1;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });

    let mut may_lose: HashSet<i64> = HashSet::new();
    let mut max_stored = 0;
    let mut max_blobs = 0;
    for round in 1..=kills {
        let pause = rand::rng().random_range(100..450);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let from = setup.api.batches(TOKEN).len().saturating_sub(1);
        let polls = setup.api.get_updates_calls(TOKEN).len();
        relay.sigkill();
        max_blobs = max_blobs.max(blob_files(&setup));
        may_lose.extend(answered_since(&setup, from));
        max_stored = max_stored.max(check_after_kill(&setup, round, &may_lose).await);
        relay = Relay::spawn(&config, &env);
        // Once the new relay polls, the dead one's long poll is superseded
        // (answered 409, consuming nothing).
        wait_until("the restarted relay's first poll", LONG, || {
            setup.api.get_updates_calls(TOKEN).len() > polls + 1
        })
        .await;
        may_lose.extend(answered_since(&setup, from));
    }
    producer.await.unwrap();

    let expected: HashSet<i64> = (1..=updates).collect();
    let must_arrive: HashSet<i64> = expected.difference(&may_lose).copied().collect();
    setup.backend.wait_accepted(must_arrive.len(), LONG).await;
    wait_until("every update to be delivered", LONG, || {
        distinct_ids(&setup.backend.accepted()).is_superset(&must_arrive)
    })
    .await;
    // Give the MPChat window's updates, if they survived, a moment too.
    wait_until("the API queue to drain", LONG, || {
        setup.api.pending(TOKEN) == 0
    })
    .await;
    let delivered = distinct_ids(&setup.backend.accepted());
    let accepted = setup.backend.accepted().len();
    let lost = expected.difference(&delivered).count();
    eprintln!(
        "crash test ({}): {updates} updates, {kills} SIGKILLs, {accepted} requests accepted, {} duplicates, {lost} lost (window allowed {}), at most {max_stored} queued and {max_blobs} blob files at a kill",
        flavor_name(flavor),
        accepted - delivered.len(),
        may_lose.difference(&delivered).count(),
    );
    assert_no_token(&relay.logs());
    CrashRun {
        delivered: delivered.len(),
        lost,
        blob_files: max_blobs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_of_10000_loses_nothing() {
    let run = crash_run(Flavor::Telegram, 10_000, 12, Messages::Short).await;
    assert_eq!((run.delivered, run.lost), (10_000, 0));
}

/// A state directory from before the 8 MiB segments keeps sled's 512 KiB
/// ones, so long updates live in blob files, which the store syncs after
/// every flush and at every open. SIGKILL cannot show a missing fsync (the
/// page cache survives it), but it shows that recovery with blobs in play,
/// and the syncing of what a killed run left, lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_long_updates_in_an_old_state_directory_loses_nothing() {
    let run = crash_run(Flavor::Telegram, 2_000, 6, Messages::LongInOldSegments).await;
    assert!(
        run.blob_files > 0,
        "no blob files at any kill: the run did not exercise them"
    );
    assert_eq!((run.delivered, run.lost), (2_000, 0));
}
