//! pollhook: long-polls Telegram-style Bot APIs, stores every update durably
//! in sled, and forwards each one as a signed webhook to private backends.
//!
//! Data flows one way: [`poller`] → [`store`] → [`delivery`]. [`relay::run`]
//! wires them together for one [`config::Settings`]; the binary only parses
//! the command line and calls it.

pub mod botapi;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod flavor;
pub mod logging;
pub mod poller;
pub mod probe;
pub mod relay;
pub mod shutdown;
pub mod signing;
pub mod store;
pub mod update;
