//! NATS: the process's one connection, the subjects JetStream forwards
//! publish to, and the probe that checks streams capture them.

pub mod connection;
pub mod probe;
pub mod subject;
