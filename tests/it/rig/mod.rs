//! Integration-test rig: a fake Telegram Bot API, a recording webhook
//! backend, a real nats-server with JetStream (alone, or a cluster of
//! them), the real `pollhook` binary as a child process (alone, or as the
//! three nodes of a cluster), a systemd notification socket, and the
//! helpers tests share. A test module imports
//! it whole: `use crate::rig::*;`.

// Not every test uses every helper.
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod backend;
pub mod check;
pub mod fake_api;
pub mod fake_limits;
pub mod gateway;
pub mod history;
pub mod min_schedule;
pub mod nats;
pub mod nats_cluster;
pub mod nodes;
pub mod notify;
pub mod otlp;
pub mod proc;
pub mod scrape;
pub mod serve;
pub mod setup;
pub mod state_dir;
pub mod tally;
pub mod tls;
pub mod tools;
pub mod wait;

pub use admin::{get, status_json, wait_bot_state, wait_code, wait_status};
pub use backend::{Backend, Received, Reply, Span};
pub use check::{assert_no_token, chat_id, distinct_ids, log_line, per_chat, retry_in, update_id};
pub use fake_api::{Call, FakeApi, Fault, Flavor};
pub use fake_limits::FakeLimits;
pub use gateway::{
    assert_no_secrets, assert_overflow, assert_refusal, client_table, gateway_table, has_metric,
    limits_table, metric_sum, post_json, send, Answer, Gateway,
};
pub use history::{
    admin_with_token, dir_bytes, files_under, forward_table, history_config, history_dir, ids_of,
    line_of, ndjson, next_second_after, now_ms, now_secs, pollhook_code, rfc3339, segments,
    wait_history, Admin, Got, Stream, ADMIN_TOKEN,
};
pub use min_schedule::{fastest_schedule, min_schedule, ChatCalls};
pub use nats::{create_key_value, per_subject, read_stream, NatsAuth, NatsServer, StreamMsg};
pub use nats_cluster::NatsCluster;
pub use nodes::{ClusterBot, Nodes};
pub use notify::NotifySocket;
pub use otlp::{Collector, GotSpan};
pub use proc::{
    pollhook, pollhook_async, relay_lines, tail, vm_kib, write_config, ProcLimits, Relay,
};
pub use scrape::{exported, metric_names};
pub use serve::free_port;
pub use setup::{admin_table, edit_config, flavor_name, Setup, SECRET, SECRET_TOKEN, TOKEN};
pub use state_dir::{stored_update_ids, stored_update_ids_of, wait_for_sled_to_let_go};
pub use tally::{Counts, Hit, Tally};
pub use tls::{ca_file_line, Seen, TestCa, TlsOptions};
pub use wait::{eventually, wait_until, LONG};
