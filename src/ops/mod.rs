//! What operates the relay: the admin API ([`admin`], served by [`serve`]),
//! what it reports ([`status`], [`metrics`], [`deadletters`], the live
//! [`events`] stream), systemd ([`notify`]), logs ([`logging`]) and signals
//! ([`shutdown`]).

pub mod admin;
pub mod client;
pub mod cluster_dlq;
pub mod deadletters;
pub mod events;
pub mod history;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod serve;
pub mod shutdown;
pub mod status;
