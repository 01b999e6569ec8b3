//! pollhook's integration tests: the real binary against a fake Bot API and
//! a recording backend, all on 127.0.0.1.

mod alerts;
mod api_errors;
mod bench_plots;
mod cluster;
mod cluster_lease;
mod crash;
mod dead_letters;
mod delivery;
mod faults;
mod gateway;
mod gateway_frameworks;
mod grafana;
mod history;
mod hostile_admin;
mod hostile_platform;
mod hostile_replies;
mod interop;
mod jetstream;
mod lifecycle;
mod live;
mod nats_cluster;
mod operations;
mod platforms;
mod replay;
mod replies;
mod rig;
mod rig_sanity;
mod tls;
mod tracing;
