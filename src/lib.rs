//! pollhook: long-polls Telegram-style Bot APIs, stores every update durably
//! in sled, and forwards each one as a signed webhook to private backends.
//!
//! Data flows one way, and so do the imports (docs/architecture.md):
//! [`platform`] (where updates come from) → [`poller`] → [`store`] (where
//! they are kept) → [`deliver`] (where they go). [`ops`] operates it,
//! [`relay::run`] wires it together for one [`config::Settings`], and
//! [`cli`] is the command line; the binary only hands over to it. Leaves:
//! [`policy`], [`http`], [`signing`], [`redact`], [`stats`], [`events`],
//! [`clock`].

pub mod budget;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod deliver;
pub mod events;
pub mod gateway;
pub mod history;
pub mod http;
pub mod longpoll;
pub mod nats;
pub mod ops;
pub mod platform;
pub mod policy;
pub mod poller;
pub mod redact;
pub mod relay;
pub mod replay;
pub mod signing;
pub mod stats;
pub mod store;
pub mod trace;
