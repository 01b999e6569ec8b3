//! The command line.

pub mod dlq;
pub mod probe;
