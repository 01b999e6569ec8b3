//! Where updates come from: the Bot API of a Telegram-style platform.
//! [`api`] is the one outgoing path to it (polling, webhook replies, and a
//! gateway later), [`flavor`] holds the platforms' differences, [`update`]
//! reads the little pollhook needs from an update, `batch` cuts an
//! answer into updates, [`offset`] the one number that confirms a batch.

pub mod api;
mod batch;
pub mod call;
pub mod flavor;
pub mod offset;
pub mod update;
pub mod utf8;
