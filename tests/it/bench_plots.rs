//! The benchmark's plots (`benches/pollhook-bench/plots.rs`), rendered from
//! synthetic data. The bench binary has no test harness (`harness = false`)
//! and `cargo test` does not build benches, so the module is included here,
//! where CI runs it.

use std::path::Path;
use std::time::Duration;

#[path = "../../benches/pollhook-bench/plots.rs"]
mod plots;

/// The file's text, checked to be a whole SVG document holding `title`.
fn svg(path: &Path, title: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.starts_with("<svg"),
        "not an SVG: {}",
        &text[..text.len().min(200)]
    );
    assert!(text.trim_end().ends_with("</svg>"), "the SVG is not closed");
    assert!(text.contains(title), "no {title:?} in the SVG");
    text
}

/// The points of each polyline stroked in `color` (`#RRGGBB`): a series'
/// line, and its legend's swatch (two points). The axes and the grid are
/// polylines too, but black or grey.
fn lines(text: &str, color: &str) -> Vec<usize> {
    let stroke = format!("stroke=\"{color}\"");
    text.lines()
        .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
        .map(|l| {
            let points = l.split("points=\"").nth(1).unwrap_or("");
            points
                .split_whitespace()
                .filter(|p| p.contains(','))
                .count()
        })
        .collect()
}

/// Asserts that a line of `color` has at least `points` points.
fn has_line(text: &str, color: &str, points: usize, what: &str) {
    let found = lines(text, color);
    assert!(
        found.iter().any(|n| *n >= points),
        "no line for {what} ({color}) of at least {points} points: {found:?}"
    );
}

#[test]
fn latency_plot_draws_both_distributions() {
    let dir = tempfile::tempdir().unwrap();
    let path = plots::file(&dir.path().join("bench"), "latency.svg").unwrap();
    let us = |v: &[u64]| {
        v.iter()
            .map(|u| Duration::from_micros(*u))
            .collect::<Vec<_>>()
    };
    // Unsorted on purpose; one outlier far in the tail.
    let baseline = us(&[400, 350, 360, 790, 380, 20_000]);
    let pollhook = us(&[850, 900, 1290, 800, 870]);
    plots::latency(&path, &baseline, &pollhook).unwrap();
    let text = svg(&path, "Latency added, API → backend (6 and 5 samples)");
    // Two points per sample, the outlier's too.
    has_line(&text, "#787878", 12, "the baseline");
    has_line(&text, "#1F77B4", 10, "pollhook");
    assert!(text.contains("pollhook: p50 0.87 ms"), "pollhook's legend");
    assert!(
        text.contains("baseline (no storage): p50 0.40 ms"),
        "the baseline's legend"
    );
    assert!(text.contains("max 20.00 ms"), "the outlier is named");
    // The log axis is labelled 1-2-5 from 0.28 ms to 22 ms.
    let labels: Vec<&str> = text.lines().map(str::trim).collect();
    for label in ["0.5", "1", "2", "5", "10", "20"] {
        assert!(labels.contains(&label), "no axis label {label}");
    }
    assert!(plots::latency(&path, &[], &pollhook).is_err(), "no samples");
}

#[test]
fn throughput_plot_draws_bars_rounds_and_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let path = plots::file(dir.path(), "throughput.svg").unwrap();
    plots::throughput(
        &path,
        20_000,
        &[40_000.0, 42_000.0, 41_000.0],
        &[30_000.0, 31_000.0, 29_000.0],
    )
    .unwrap();
    let text = svg(
        &path,
        "Throughput, 20000 updates: pollhook 0.73× the baseline",
    );
    // In the title, and again above pollhook's bar.
    assert_eq!(text.matches("0.73×").count(), 2, "the ratio 30000/41000");
    assert!(
        text.contains("41000/s") && text.contains("30000/s"),
        "each bar's median"
    );
    for color in ["#787878", "#1F77B4"] {
        assert!(
            text.contains(&format!("fill=\"{color}\"")),
            "no bar filled {color}"
        );
    }
    assert!(text.contains("median of 3 rounds"), "what the bars are");
    assert!(text.matches("<circle").count() >= 6, "one dot per round");
}

#[test]
fn backlog_plot_draws_three_lines_and_the_phases() {
    let dir = tempfile::tempdir().unwrap();
    let path = plots::file(dir.path(), "backlog.svg").unwrap();
    // Ingest 1,000 updates in 1 s, restart at 1.5 s, drain in 2 s.
    let samples: Vec<_> = (0..=40)
        .map(|i| {
            let at = i as f64 * 0.1;
            plots::BacklogSample {
                at,
                stored: (at * 1000.0).min(1000.0) as u64,
                delivered: ((at - 1.6) * 500.0).clamp(0.0, 1000.0) as u64,
            }
        })
        .collect();
    let marks = plots::BacklogMarks {
        stopped: 1.2,
        polling: 1.5,
        backend_up: 1.6,
    };
    plots::backlog(&path, 1000, &samples, marks).unwrap();
    let text = svg(&path, "Backlog of 1000 updates");
    for (color, what) in [
        ("#1F77B4", "stored"),
        ("#2CA02C", "delivered"),
        ("#D62728", "waiting"),
    ] {
        has_line(&text, color, samples.len(), what);
    }
    for label in [
        "stored (confirmed to the API)",
        "delivered to the backend",
        "waiting (stored − delivered)",
        "relay stopped",
        "restarted: polling",
        "backend up",
    ] {
        assert!(text.contains(label), "no {label:?}");
    }
}
