//! `[cluster]`: this node's name, the replicas of what the nodes share, and
//! how long a silent leader keeps its bots.

use std::time::Duration;

use super::ctx::Ctx;
use super::schema::RawCluster;
use super::{ClusterSettings, ConfigError};

pub const DEFAULT_REPLICAS: usize = 3;
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

pub(super) fn validate_cluster(
    ctx: &Ctx,
    raw: RawCluster,
    has_nats: bool,
) -> Result<ClusterSettings, ConfigError> {
    if !has_nats {
        return Err(ctx.err(
            "cluster",
            "a cluster shares its queue through NATS JetStream: add a [nats] section with the servers",
        ));
    }
    let node = match raw.node {
        Some(n) => n,
        None => host_name().ok_or_else(|| {
            ctx.err(
                "cluster.node",
                "missing, and this host's name cannot be read; name the node",
            )
        })?,
    };
    let valid = !node.is_empty()
        && node.len() <= 64
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(ctx.err(
            "cluster.node",
            format!("{node:?}: use 1-64 letters, digits, '-' or '_' (unique per node)"),
        ));
    }
    let replicas = raw.replicas.unwrap_or(DEFAULT_REPLICAS);
    if !(1..=5).contains(&replicas) {
        return Err(ctx.err(
            "cluster.replicas",
            format!("{replicas}: JetStream keeps 1 to 5 replicas"),
        ));
    }
    let lease = ctx.duration("cluster.lease", raw.lease.as_deref(), DEFAULT_LEASE)?;
    if lease < Duration::from_secs(1) {
        return Err(ctx.err("cluster.lease", "must be at least 1s"));
    }
    Ok(ClusterSettings {
        node,
        replicas,
        lease,
    })
}

/// The default node name: the host's (with dots, a domain, cut off).
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let short: String = name.trim().split('.').next()?.to_string();
    (!short.is_empty()).then_some(short)
}
