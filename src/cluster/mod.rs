//! Several nodes on NATS JetStream: who leads which bot, and the queue a
//! leader polls into and delivers from. `lease` holds one bot's lease in a
//! key-value bucket, its revision the fencing token; `fence` is the time
//! the holder may act until; `elect` runs a node's elections and starts and
//! stops the work of the bots it leads; `queue` is the replicated queue
//! behind the `Queue` seam, `pending` the jobs its leader holds; `stored`
//! makes buckets and reads subjects the way nats-server 2.9 needs.

pub mod elect;
pub mod fence;
pub mod lease;
pub mod node;
pub mod pending;
pub mod queue;
pub mod stored;
