//! The three-server JetStream cluster of the rig against what the
//! replicated queue and the leases of issue 16 will rely on: an R3 stream
//! survives a SIGKILLed server, a key-value key refuses a second `create`
//! and a stale revision and expires after `max_age` (the lease), and a
//! publish with every server down fails in bounded time and works again
//! once they are back. Talks to the servers directly with async-nats.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, publish::PublishAck, stream};

use crate::rig::*;

const STREAM: &str = "ORDERS";
/// How long one publish attempt waits for its ack while the cluster
/// recovers.
const ATTEMPT: Duration = Duration::from_millis(500);
const SUBJECT: &str = "orders.1";

/// A file-backed stream replicated on three servers.
async fn create_r3_stream(js: &jetstream::Context) {
    js.create_stream(stream::Config {
        name: STREAM.to_string(),
        subjects: vec![SUBJECT.to_string()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create the R3 stream {STREAM}: {e}"));
}

/// Publishes message `id` (`{"update_id": id}`, `Nats-Msg-Id: id`, so a
/// retry of it is stored once) and waits for JetStream's ack.
async fn publish(js: &jetstream::Context, id: i64) -> Result<PublishAck, String> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    js.publish_with_headers(SUBJECT, headers, format!(r#"{{"update_id":{id}}}"#).into())
        .await
        .map_err(|e| format!("publish {id}: {e}"))?
        .await
        .map_err(|e| format!("ack of {id}: {e}"))
}

async fn publish_all(js: &jetstream::Context, ids: std::ops::Range<i64>) {
    for id in ids {
        publish(js, id).await.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The update ids the stream holds, in stream order, read through its
/// current leader.
async fn stored_ids(js: &jetstream::Context, n: u64) -> Vec<i64> {
    read_stream(js, STREAM, n, LONG)
        .await
        .iter()
        .map(StreamMsg::update_id)
        .collect()
}

#[tokio::test]
#[ignore = "needs nats-server"]
async fn an_r3_stream_acks_with_a_server_killed_and_the_restarted_server_has_every_message() {
    let mut cluster = NatsCluster::start(3).await;
    let js = cluster.jetstream().await;
    create_r3_stream(&js).await;
    publish_all(&js, 0..100).await;

    // The stream's leader: the hardest one to lose (an election follows).
    let victim = cluster
        .stream_leader(&js, STREAM)
        .await
        .expect("the R3 stream has a leader");
    let killed = Instant::now();
    cluster.kill(victim).await;
    // The first publish waits out the election: tried every half second
    // (JetStream drops what reaches no leader, and the context would wait
    // its 5 s for each), with the same Nats-Msg-Id, so stored once however
    // many attempts timed out.
    eventually(
        "a publish to be acked with the stream's leader killed",
        LONG,
        async || {
            tokio::time::timeout(ATTEMPT, publish(&js, 100))
                .await
                .unwrap_or_else(|_| Err(format!("no ack in {ATTEMPT:?}")))
        },
    )
    .await;
    let failover = killed.elapsed();
    // From then on every publish is acked at the first attempt.
    let two_of_three = Instant::now();
    publish_all(&js, 101..200).await;
    eprintln!(
        "killed {} (the leader of {STREAM}): first ack after {failover:?}; 99 more acked by two servers in {:?}",
        cluster.name(victim),
        two_of_three.elapsed()
    );

    let restarted = Instant::now();
    cluster.restart(victim).await;
    eprintln!(
        "{} back in the cluster in {:?}",
        cluster.name(victim),
        restarted.elapsed()
    );
    // What the stream answers now is the restarted server's own copy.
    cluster.move_stream_leader(&js, STREAM, victim).await;
    assert_eq!(
        cluster.stream_leader(&js, STREAM).await,
        Some(victim),
        "the restarted server leads {STREAM}"
    );
    let ids = stored_ids(&js, 200).await;
    assert_eq!(
        ids,
        (0..200).collect::<Vec<_>>(),
        "the restarted server's copy: every message once, in order"
    );
}

#[tokio::test]
#[ignore = "needs nats-server"]
async fn a_paused_server_catches_up_once_resumed_and_stops_while_paused() {
    let mut cluster = NatsCluster::start(3).await;
    let js = cluster.jetstream().await;
    create_r3_stream(&js).await;
    publish_all(&js, 0..50).await;
    let leader = cluster
        .stream_leader(&js, STREAM)
        .await
        .expect("the R3 stream has a leader");
    // A follower of the stream, and not the server the client is on (a
    // client on a paused server waits for its ping to time out).
    let on = cluster.serving(&js.client());
    let follower = (0..cluster.len())
        .find(|&i| i != leader && Some(i) != on)
        .expect("three servers have one that neither leads nor serves the client");

    cluster.pause(follower);
    // The leader and the other follower are a quorum: acked at once.
    publish_all(&js, 50..100).await;
    cluster.resume(follower);
    let resumed = Instant::now();
    cluster.wait_current(follower).await;
    eprintln!(
        "{} current again {:?} after SIGCONT",
        cluster.name(follower),
        resumed.elapsed()
    );
    cluster.move_stream_leader(&js, STREAM, follower).await;
    assert_eq!(
        stored_ids(&js, 100).await,
        (0..100).collect::<Vec<_>>(),
        "the resumed server's copy"
    );

    // A paused server still stops (SIGTERM waits for a SIGCONT) and comes back.
    cluster.pause(follower);
    let stopping = Instant::now();
    cluster.stop(follower).await;
    eprintln!("a paused server stopped in {:?}", stopping.elapsed());
    cluster.restart(follower).await;
    publish_all(&js, 100..110).await;
}

/// The lease bucket's shape (issue 16): one value per key, gone after
/// `max_age` without a write.
const MAX_AGE: Duration = Duration::from_secs(2);
const LEASE: &str = "bot-1";

#[tokio::test]
#[ignore = "needs nats-server"]
async fn a_kv_key_refuses_create_and_stale_revisions_and_expires_after_max_age() {
    let cluster = NatsCluster::start(3).await;
    let js = cluster.jetstream().await;
    let leases = create_key_value(
        &js,
        kv::Config {
            bucket: "leases".to_string(),
            history: 1,
            max_age: MAX_AGE,
            num_replicas: 3,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await;

    let mut revision = leases
        .create(LEASE, "node-a".into())
        .await
        .unwrap_or_else(|e| panic!("create {LEASE} in an empty bucket: {e}"));
    let mut late = Vec::new();
    for round in 1..=3 {
        let refused = leases
            .create(LEASE, "node-b".into())
            .await
            .expect_err("a create while the key exists");
        assert_eq!(
            refused.kind(),
            kv::CreateErrorKind::AlreadyExists,
            "{refused}"
        );

        // Renew: the last write before the key is left alone. Timed from
        // before the request, so the key's age on the server is never more
        // than what is measured.
        let renewed_at = Instant::now();
        let renewed = leases
            .update(LEASE, "node-a".into(), revision)
            .await
            .unwrap_or_else(|e| panic!("renew {LEASE} at revision {revision}: {e}"));
        let stale = leases
            .update(LEASE, "node-b".into(), revision)
            .await
            .expect_err("an update at a stale revision");
        assert_eq!(
            stale.kind(),
            kv::UpdateErrorKind::WrongLastRevision,
            "{stale}"
        );

        // Another node trying to take the lease, every 20 ms.
        let (gone_after, taken) = eventually(
            &format!("{LEASE} to expire (round {round})"),
            MAX_AGE + LONG,
            async || match leases.create(LEASE, "node-b".into()).await {
                Ok(taken) => Ok((renewed_at.elapsed(), taken)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Err(format!("still there after {:?}", renewed_at.elapsed()))
                }
                Err(e) => panic!("create {LEASE} while it should exist: {e}"),
            },
        )
        .await;
        assert!(
            gone_after >= MAX_AGE,
            "{LEASE} (renewed at revision {renewed}) was taken {gone_after:?} after its renewal, before max_age {MAX_AGE:?}"
        );
        let lateness = gone_after - MAX_AGE;
        eprintln!("round {round}: {LEASE} expired {lateness:?} after max_age ({gone_after:?} after its last write)");
        late.push(lateness);
        revision = taken;
    }
    eprintln!("lease-expiry latency past max_age {MAX_AGE:?}: {late:?}");
}

/// How long a publish may take to fail with every server down: the
/// JetStream context's ack timeout (5 s by default) and some slack.
const PUBLISH_FAILS_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
#[ignore = "needs nats-server"]
async fn with_every_server_down_a_publish_fails_in_bounded_time_and_start_all_brings_them_back() {
    let mut cluster = NatsCluster::start(3).await;
    let js = cluster.jetstream().await;
    create_r3_stream(&js).await;
    publish_all(&js, 0..10).await;

    cluster.stop_all().await;
    let down = Instant::now();
    let outcome = tokio::time::timeout(PUBLISH_FAILS_WITHIN, publish(&js, 10))
        .await
        .unwrap_or_else(|_| {
            panic!("a publish with every server down neither failed nor was acked in {PUBLISH_FAILS_WITHIN:?}")
        });
    let failed_after = down.elapsed();
    match outcome {
        Ok(ack) => panic!("a publish was acked with every server down: {ack:?}"),
        Err(e) => {
            eprintln!("with every server down, the publish failed after {failed_after:?}: {e}")
        }
    }

    let restarting = Instant::now();
    cluster.start_all().await;
    let back = restarting.elapsed();
    // The same message again, as a relay would retry it: the client may
    // have kept the failed publish and sent it on reconnecting, and its
    // Nats-Msg-Id keeps it to one copy.
    let ack = eventually("a publish to be acked after start_all", LONG, async || {
        publish(&js, 10).await
    })
    .await;
    eprintln!(
        "start_all took {back:?}; first ack {:?} after it (duplicate: {}, i.e. the failed publish {} stored on reconnecting)",
        restarting.elapsed() - back,
        ack.duplicate,
        if ack.duplicate { "was" } else { "was not" }
    );
    publish_all(&js, 11..20).await;
    assert_eq!(
        stored_ids(&js, 20).await,
        (0..20).collect::<Vec<_>>(),
        "what was stored before the outage survived it, and nothing twice"
    );
}
