//! Summaries of repeated measurements, shared by the paired scenarios.

/// The `q` quantile, interpolated between the two nearest values.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = (v.len() - 1) as f64 * q;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (at - lo as f64)
}

/// CPU seconds scaled to 100,000 updates.
pub fn per_100k(cpu: f64, updates: i64) -> f64 {
    cpu * 100_000.0 / updates as f64
}

/// The load average's three figures, as `uptime` shows them: how busy the
/// shared machine was around a run.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ")
}
