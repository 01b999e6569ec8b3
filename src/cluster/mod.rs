//! Several nodes on NATS JetStream (issue 16, in progress): who leads which
//! bot. `lease` holds one bot's lease in a key-value bucket, its revision
//! the fencing token; `elect` runs a node's elections and starts and stops
//! the work of the bots it leads. Not wired into `run` yet: the replicated
//! queue that a leader polls into and delivers from comes next.

pub mod elect;
pub mod lease;
