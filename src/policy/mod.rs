//! The rules a forward is configured with, as plain values with no I/O:
//! which updates it wants ([`routing`]), when to try again ([`retry`]),
//! what is too old to deliver ([`stale`]) and which Bot API methods a
//! webhook reply may call ([`methods`]). Configuration builds them; the
//! poller and the dispatchers apply them.

pub mod methods;
pub mod retry;
pub mod routing;
pub mod stale;
