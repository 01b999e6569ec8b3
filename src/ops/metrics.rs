//! `/metrics` in the Prometheus text format, written by hand: a few dozen
//! series, rendered from the same counters `/status` shows.

use std::fmt::Write;

use crate::ops::status::{BotHandle, ForwardHandle, Snapshot};
use crate::stats;

/// Escapes a label value per the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn render(
    snap: &Snapshot,
    bots: &[BotHandle],
    forwards: &[ForwardHandle],
    gateway: Option<&crate::stats::GatewayStats>,
) -> String {
    let mut out = String::new();
    let bot_l = |b: &str| format!("bot=\"{}\"", esc(b));
    let fwd_l = |b: &str, f: &str| format!("bot=\"{}\",forward=\"{}\"", esc(b), esc(f));

    header(
        &mut out,
        "pollhook_updates_received_total",
        "counter",
        "Updates received from getUpdates.",
    );
    for b in &snap.bots {
        let _ = writeln!(
            out,
            "pollhook_updates_received_total{{{}}} {}",
            bot_l(&b.bot),
            b.updates_received
        );
    }
    header(
        &mut out,
        "pollhook_updates_unrouted_total",
        "counter",
        "Updates no forward wanted (dropped).",
    );
    for b in &snap.bots {
        let _ = writeln!(
            out,
            "pollhook_updates_unrouted_total{{{}}} {}",
            bot_l(&b.bot),
            b.updates_unrouted
        );
    }
    header(
        &mut out,
        "pollhook_polls_total",
        "counter",
        "getUpdates calls by result.",
    );
    for b in &snap.bots {
        let _ = writeln!(
            out,
            "pollhook_polls_total{{{},result=\"ok\"}} {}",
            bot_l(&b.bot),
            b.polls_ok
        );
        let _ = writeln!(
            out,
            "pollhook_polls_total{{{},result=\"error\"}} {}",
            bot_l(&b.bot),
            b.polls_failed
        );
    }
    header(
        &mut out,
        "pollhook_bot_up",
        "gauge",
        "1 if the bot's last getUpdates succeeded.",
    );
    // A bot another node of a cluster leads is not this node's to poll:
    // no series, so no alert fires for it here.
    for b in snap.bots.iter().filter(|b| !b.state.starts_with("standby")) {
        let _ = writeln!(
            out,
            "pollhook_bot_up{{{}}} {}",
            bot_l(&b.bot),
            u8::from(b.state == "ok")
        );
    }
    header(
        &mut out,
        "pollhook_last_successful_poll_timestamp_seconds",
        "gauge",
        "When getUpdates last succeeded (0: never).",
    );
    let standby = |name: &str| {
        snap.bots
            .iter()
            .any(|b| b.bot == name && b.state.starts_with("standby"))
    };
    for b in bots.iter().filter(|b| !standby(&b.name)) {
        let at = stats::get(&b.stats.last_ok_ms) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "pollhook_last_successful_poll_timestamp_seconds{{{}}} {at}",
            bot_l(&b.name)
        );
    }
    header(
        &mut out,
        "pollhook_poll_duration_seconds",
        "histogram",
        "getUpdates call duration (long polls included).",
    );
    for b in bots {
        b.stats
            .poll_latency
            .render("pollhook_poll_duration_seconds", &bot_l(&b.name), &mut out);
    }

    let counter = |out: &mut String,
                   name: &str,
                   help: &str,
                   get: &dyn Fn(&crate::stats::ForwardCounters) -> u64| {
        header(out, name, "counter", help);
        for f in &snap.forwards {
            let _ = writeln!(
                out,
                "{name}{{{}}} {}",
                fwd_l(&f.bot, &f.forward),
                get(&f.counters)
            );
        }
    };
    counter(
        &mut out,
        "pollhook_updates_delivered_total",
        "Updates a forward's backend accepted (2xx).",
        &|c| c.delivered,
    );
    counter(
        &mut out,
        "pollhook_delivery_failures_total",
        "Failed delivery attempts.",
        &|c| c.failed_attempts,
    );
    counter(
        &mut out,
        "pollhook_updates_dead_lettered_total",
        "Updates moved to dead letters.",
        &|c| c.dead_lettered,
    );
    counter(
        &mut out,
        "pollhook_updates_stale_dropped_total",
        "Stale interactive updates dropped.",
        &|c| c.stale_dropped,
    );
    header(
        &mut out,
        "pollhook_webhook_replies_total",
        "counter",
        "Bot API calls from webhook replies, by result.",
    );
    for f in &snap.forwards {
        let l = fwd_l(&f.bot, &f.forward);
        let c = &f.counters;
        let _ = writeln!(
            out,
            "pollhook_webhook_replies_total{{{l},result=\"ok\"}} {}",
            c.replies_ok
        );
        let _ = writeln!(
            out,
            "pollhook_webhook_replies_total{{{l},result=\"failed\"}} {}",
            c.replies_failed
        );
        let _ = writeln!(
            out,
            "pollhook_webhook_replies_total{{{l},result=\"ignored\"}} {}",
            c.replies_ignored
        );
        let _ = writeln!(
            out,
            "pollhook_webhook_replies_total{{{l},result=\"refused\"}} {}",
            c.replies_refused
        );
    }
    let gauge = |out: &mut String,
                 name: &str,
                 help: &str,
                 get: &dyn Fn(&crate::ops::status::ForwardStatus) -> f64| {
        header(out, name, "gauge", help);
        for f in &snap.forwards {
            let _ = writeln!(out, "{name}{{{}}} {}", fwd_l(&f.bot, &f.forward), get(f));
        }
    };
    gauge(
        &mut out,
        "pollhook_queue_depth",
        "Updates waiting for this forward.",
        &|f| f.queue_depth as f64,
    );
    gauge(
        &mut out,
        "pollhook_queue_oldest_age_seconds",
        "Age of the oldest waiting update (0: none).",
        &|f| f.oldest_pending_age_seconds.unwrap_or(0.0),
    );
    gauge(
        &mut out,
        "pollhook_in_flight",
        "Requests in flight to this forward.",
        &|f| f.counters.in_flight as f64,
    );
    gauge(
        &mut out,
        "pollhook_dead_letters",
        "Dead letters held for this forward.",
        &|f| f.dead_letters as f64,
    );
    header(
        &mut out,
        "pollhook_delivery_latency_seconds",
        "histogram",
        "From receipt of an update to its 2xx.",
    );
    for f in forwards {
        f.stats.latency.render(
            "pollhook_delivery_latency_seconds",
            &fwd_l(&f.bot, &f.name),
            &mut out,
        );
    }
    header(
        &mut out,
        "pollhook_store_size_bytes",
        "gauge",
        "Size of the state database on disk.",
    );
    let _ = writeln!(out, "pollhook_store_size_bytes {}", snap.store_bytes);
    if let Some(c) = &snap.cluster {
        header(
            &mut out,
            "pollhook_cluster_leading",
            "gauge",
            "1 for each bot this node of a cluster leads now, 0 for the others.",
        );
        for b in &snap.bots {
            let _ = writeln!(
                out,
                "pollhook_cluster_leading{{{}}} {}",
                bot_l(&b.bot),
                u8::from(c.leading.contains(&b.bot))
            );
        }
    }
    if let Some(n) = &snap.nats {
        header(
            &mut out,
            "pollhook_nats_connected",
            "gauge",
            "1 while the NATS connection is up, 0 while it is connecting or reconnecting.",
        );
        let _ = writeln!(out, "pollhook_nats_connected {}", u8::from(n.connected));
    }
    budget(&mut out, bots);
    if let Some(g) = gateway {
        gateway_calls(&mut out, g);
    }
    out
}

/// The bots' rate budgets: waits, and the 429s the platform answered anyway.
fn budget(out: &mut String, bots: &[BotHandle]) {
    let bot_l = |b: &str| format!("bot=\"{}\"", esc(b));
    header(
        out,
        "pollhook_platform_rate_limited_total",
        "counter",
        "429 answers the platform gave to gateway calls and webhook replies (shaping drives this to zero).",
    );
    for b in bots {
        let _ = writeln!(
            out,
            "pollhook_platform_rate_limited_total{{{}}} {}",
            bot_l(&b.name),
            stats::get(&b.budget.rate_limited)
        );
    }
    header(
        out,
        "pollhook_gateway_wait_seconds",
        "histogram",
        "Time gateway calls and webhook replies waited for the bot's rate budget.",
    );
    for b in bots {
        b.budget
            .waited
            .render("pollhook_gateway_wait_seconds", &bot_l(&b.name), out);
    }
}

fn gateway_calls(out: &mut String, g: &crate::stats::GatewayStats) {
    header(
        out,
        "pollhook_gateway_calls_total",
        "counter",
        "Bot API calls through the gateway by bot, client, method and result (ok, error: the platform refused, refused: the gateway refused, overflow: the gateway's own 429, failed: the platform was not reached).",
    );
    for (bot, client, method, result, n) in g.calls() {
        let _ = writeln!(
            out,
            "pollhook_gateway_calls_total{{bot=\"{}\",client=\"{}\",method=\"{}\",result=\"{result}\"}} {n}",
            esc(&bot),
            esc(&client),
            esc(&method)
        );
    }
    header(
        out,
        "pollhook_gateway_unknown_key_total",
        "counter",
        "Gateway calls with a key no client has (answered 401).",
    );
    let _ = writeln!(
        out,
        "pollhook_gateway_unknown_key_total {}",
        stats::get(&g.unknown_key)
    );
}

/// History's size and drops per bot, and what replays queued.
pub fn history(out: &mut String, replays: &crate::replay::Replays) {
    use std::sync::atomic::Ordering;
    let bot_l = |b: &str| format!("bot=\"{}\"", esc(b));
    type Read = fn(&crate::history::BotLog) -> u64;
    let per_bot: [(&str, &str, &str, Read); 2] = [
        (
            "pollhook_history_bytes",
            "gauge",
            "Disk taken by the bot's history (at most history_max_mb).",
            |l| l.bytes.load(Ordering::Relaxed),
        ),
        (
            "pollhook_history_dropped_total",
            "counter",
            "History records not written (the writer was behind, or the disk failed); deliveries are not affected.",
            |l| l.dropped.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, read) in per_bot {
        header(out, name, kind, help);
        for log in replays.history().bots() {
            let _ = writeln!(out, "{name}{{{}}} {}", bot_l(&log.name), read(log));
        }
    }
    header(
        out,
        "pollhook_replayed_total",
        "counter",
        "Updates queued again by replays and resends from history.",
    );
    for ((bot, fwd), n) in replays.replayed() {
        let _ = writeln!(
            out,
            "pollhook_replayed_total{{bot=\"{}\",forward=\"{}\"}} {n}",
            esc(&bot),
            esc(&fwd)
        );
    }
}
