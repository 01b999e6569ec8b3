//! Integration-test rig: a fake Telegram Bot API, a recording webhook
//! backend, and helpers to run the real `pollhook` binary.

// Not every test uses every helper.
#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod fake_api;
pub mod notify;
pub mod proc;
pub mod serve;

pub use backend::{Backend, Received, Reply, Span};
pub use fake_api::{Call, FakeApi, Fault, Flavor};
pub use notify::NotifySocket;
pub use proc::{write_config, ProcLimits, Relay};
