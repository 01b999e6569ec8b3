//! What the cluster keeps in JetStream, at the level async-nats 0.46 gets
//! wrong for nats-server 2.9 or repeats: key-value buckets made by hand,
//! and reading every message of a subject in order.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::StreamExt;

/// Whether a bucket's messages may be deleted one by one (a lease given
/// back without leaving a delete marker, see `lease`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletes {
    Denied,
    Allowed,
}

/// Opens a key-value bucket of history 1, creating it (its keys living
/// for `max_age`, zero for ever) if it is missing. By hand: async-nats'
/// `create_key_value` first reads account information in a shape
/// nats-server 2.9 does not send, and fails.
pub async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
    deletes: Deletes,
) -> Result<kv::Store, String> {
    if let Ok(kv) = js.get_key_value(name).await {
        return Ok(kv);
    }
    let made = js
        .create_stream(stream::Config {
            name: format!("KV_{name}"),
            description: Some(description.into()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: deletes == Deletes::Denied,
            // Every read from the stream's leader: a direct get may go to
            // any replica, and one that hangs never answers.
            allow_direct: false,
            num_replicas: replicas.max(1),
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    // Another node may have made it a moment ago.
    let made = made.err();
    js.get_key_value(name).await.map_err(|e| match made {
        Some(c) => format!("cannot create bucket {name}: {c}"),
        None => format!("cannot open bucket {name}: {e}"),
    })
}

/// Calls `each` with every message on `filter` in stream order, as the
/// stream holds them now (later ones are not waited for).
pub async fn read_all(
    s: &stream::Stream,
    filter: String,
    mut each: impl FnMut(&jetstream::Message, u64),
) -> Result<(), String> {
    let consumer = s
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut left = consumer.cached_info().num_pending;
    if left == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while left > 0 {
        let msg = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            _ => return Err("the stream stopped answering".into()),
        };
        let info = msg.info().map_err(|e| e.to_string())?;
        left = info.pending;
        let seq = info.stream_sequence;
        each(&msg, seq);
    }
    Ok(())
}
