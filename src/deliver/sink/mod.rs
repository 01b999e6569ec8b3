//! Where a forward's updates go.

pub mod http;
