//! `pollhook status`: a running relay's snapshot, from its admin API, as
//! tables for a person or as the JSON it answers.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::ops::client::AdminClient;
use crate::ops::status::{summary, Snapshot};

pub async fn run(config: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let view = crate::config::load_admin_view(config)?;
    let Some(addr) = view.listen else {
        anyhow::bail!(
            "the configuration has no admin.listen, so a running pollhook cannot be asked"
        );
    };
    let client = AdminClient::new(addr, view.token, Duration::from_secs(10));
    let snap: Snapshot = client.get("/status", &[]).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
    } else {
        print!("{}", render_table(&snap));
    }
    Ok(ExitCode::SUCCESS)
}

/// `pollhook status`: the snapshot as tables for a person.
fn render_table(s: &Snapshot) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<32} {:<18} {:>12} {:>10}  LAST POLL",
        "BOT", "IDENTITY", "STATE", "OFFSET", "RECEIVED"
    );
    for b in &s.bots {
        let _ = writeln!(
            out,
            "{:<14} {:<32} {:<18} {:>12} {:>10}  {}",
            b.bot,
            b.identity.as_deref().unwrap_or("-"),
            b.state,
            b.offset.map_or("-".into(), |o| o.to_string()),
            b.updates_received,
            match (&b.last_poll_at, &b.last_poll_result) {
                (Some(t), Some(r)) => format!("{t} {r}"),
                _ => "-".into(),
            }
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<14} {:<24} {:>8} {:>10} {:>9} {:>6} {:>10}  LAST ERROR",
        "BOT", "FORWARD", "QUEUE", "OLDEST", "IN FLIGHT", "DEAD", "DELIVERED"
    );
    for f in &s.forwards {
        let _ = writeln!(
            out,
            "{:<14} {:<24} {:>8} {:>10} {:>9} {:>6} {:>10}  {}",
            f.bot,
            f.forward,
            f.queue_depth,
            f.oldest_pending_age_seconds
                .map_or("-".into(), |a| format!("{a:.0}s")),
            f.counters.in_flight,
            f.dead_letters,
            f.counters.delivered,
            f.last_error.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "store: {:.1} MiB on disk; {}",
        s.store_bytes as f64 / 1048576.0,
        summary(s)
    );
    if let Some(c) = &s.cluster {
        let _ = writeln!(
            out,
            "cluster: this node {:?}, live nodes: {}",
            c.node,
            c.nodes.join(", ")
        );
        for b in &s.bots {
            let leader = c.leaders.get(&b.bot).map_or("(none yet)", String::as_str);
            let _ = writeln!(out, "  {:<14} led by {leader}", b.bot);
        }
    }
    if let Some(n) = &s.nats {
        let state = if n.connected {
            "connected"
        } else {
            "NOT connected (JetStream forwards wait; updates stay in the local queue)"
        };
        let _ = writeln!(out, "nats: {state}");
    }
    out
}
