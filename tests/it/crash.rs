//! Persist, then confirm: SIGKILL the real binary at random moments during a
//! stream of updates, restart it each time, and count.

use std::collections::HashSet;
use std::time::Duration;

use pollhook::store::Store;
use rand::Rng;

use crate::common::*;

const UPDATES: i64 = 10_000;
const KILLS: usize = 12;

/// Every update the fake API counts as confirmed must be delivered or still
/// in the store: confirmation never runs ahead of durable storage.
fn assert_confirmed_are_safe(setup: &Setup, round: usize) -> usize {
    let confirmed = setup.api.confirmed(TOKEN).unwrap_or(0);
    let delivered: HashSet<i64> = distinct_ids(&setup.backend.accepted());
    let store = Store::open(&setup.state_dir(), 1 << 20).expect("the killed relay's store opens");
    let fwd = store.forward_id("main", "app").unwrap();
    let stored: HashSet<i64> = store
        .pending(fwd, None, usize::MAX)
        .unwrap()
        .iter()
        .map(|j| j.update_id)
        .collect();
    let missing: Vec<i64> = (1..=confirmed)
        .filter(|id| !delivered.contains(id) && !stored.contains(id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "after kill {round}: the API had confirmed up to {confirmed}, but these were neither delivered nor stored: {missing:?}"
    );
    stored.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_loses_nothing() {
    let setup = Setup::new().await;
    let config = setup.config("", "max_in_flight = 16");
    let env = [("RUST_LOG", "info")];
    let mut relay = crate::rig::Relay::spawn(&config, &env);

    // A stream: 100 updates over 100 chats every 40 ms, about 4 s in all.
    let api = setup.api.clone();
    let producer = tokio::spawn(async move {
        let mut id = 1;
        while id <= UPDATES {
            for _ in 0..100 {
                if id > UPDATES {
                    break;
                }
                api.push_message(TOKEN, id, id % 100, &format!("update {id}"));
                id += 1;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });

    let mut max_stored = 0;
    for round in 1..=KILLS {
        let pause = rand::rng().random_range(100..450);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        relay.sigkill();
        max_stored = max_stored.max(assert_confirmed_are_safe(&setup, round));
        relay = crate::rig::Relay::spawn(&config, &env);
    }
    producer.await.unwrap();

    let all = setup.backend.wait_accepted(UPDATES as usize, LONG).await;
    // wait_accepted counts requests; wait until every distinct id arrived.
    let deadline = tokio::time::Instant::now() + LONG;
    let mut delivered = distinct_ids(&all);
    while delivered.len() < UPDATES as usize && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        delivered = distinct_ids(&setup.backend.accepted());
    }
    let lost: Vec<i64> = (1..=UPDATES)
        .filter(|id| !delivered.contains(id))
        .take(20)
        .collect();
    let accepted = setup.backend.accepted().len();
    eprintln!(
        "crash test: {UPDATES} updates, {KILLS} SIGKILLs, {} requests accepted, {} duplicates, {} lost, at most {max_stored} queued at a kill",
        accepted,
        accepted - delivered.len(),
        UPDATES as usize - delivered.len()
    );
    assert!(lost.is_empty(), "lost after {KILLS} kills: {lost:?}");
    assert_eq!(setup.api.confirmed(TOKEN), Some(UPDATES));
    assert_no_token(&relay.logs());
}
