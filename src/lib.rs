//! pollhook: long-polls Telegram-style Bot APIs, stores every update durably
//! in sled, and forwards each one as a signed webhook to private backends.
//!
//! Data flows one way: [`poller`] → [`store`] → [`delivery`]. [`relay::run`]
//! wires them together for one [`config::Settings`]; the binary only parses
//! the command line and calls it.

pub mod admin;
pub mod body;
pub mod botapi;
pub mod clock;
pub mod config;
pub mod deadletters;
pub mod delivery;
pub mod dlq;
pub mod exposure;
pub mod flavor;
pub mod logging;
pub mod methods;
pub mod metrics;
pub mod notify;
pub mod offset;
pub mod poller;
pub mod probe;
pub mod redact;
pub mod relay;
pub mod routing;
pub mod serve;
pub mod shutdown;
pub mod signing;
pub mod state_dir;
pub mod stats;
pub mod status;
pub mod store;
pub mod update;
pub mod utf8;
