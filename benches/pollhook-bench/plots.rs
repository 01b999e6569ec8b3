//! The benchmark's pictures: SVG plots of the `latency`, `throughput` and
//! `backlog` scenarios (committed in `docs/bench/`, shown in BENCHMARKS.md).
//!
//! plotters' SVG backend writes text as `<text>` elements, so drawing needs
//! no system fonts (no `ttf` feature): it works on any CI machine, and the
//! viewer's browser renders the letters.
//!
//! This module knows nothing of the bench's servers or relays: it takes
//! plain numbers, so the integration suite (`tests/it/bench_plots.rs`)
//! includes it and renders each plot from synthetic data (the bench binary
//! has no test harness of its own).

use std::path::{Path, PathBuf};
use std::time::Duration;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const SIZE: (u32, u32) = (900, 520);
const BASELINE: RGBColor = RGBColor(120, 120, 120);
const POLLHOOK: RGBColor = RGBColor(31, 119, 180);
const DELIVERED: RGBColor = RGBColor(44, 160, 44);
const WAITING: RGBColor = RGBColor(214, 39, 40);

/// Where a scenario writes its plot: `dir/name`, the directory made.
pub fn file(dir: &Path, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the plots directory {}: {e}", dir.display()))?;
    Ok(dir.join(name))
}

fn caption_font() -> TextStyle<'static> {
    ("sans-serif", 22).into_font().into()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The sample at quantile `p` of sorted samples.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// 0.1, 0.2, 0.5, 1, 2, 5, 10, … within `lo..=hi`: a log axis's labels
/// (plotters' own skip the decade below 1 ms, where the curves start).
fn one_two_five(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powi(lo.log10().floor() as i32);
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if (lo..=hi).contains(&v) {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

/// `latency.svg`: the cumulative distribution of the added latency (an
/// update appearing at the API → the backend receiving it), pollhook and
/// the baseline on one chart. A curve further left is faster; its height
/// at x is the share of updates delivered within x ms.
pub fn latency(path: &Path, baseline: &[Duration], pollhook: &[Duration]) -> Result<()> {
    let mut series = [
        ("baseline (no storage)", baseline.to_vec(), BASELINE),
        ("pollhook", pollhook.to_vec(), POLLHOOK),
    ];
    for (name, samples, _) in &mut series {
        if samples.is_empty() {
            return Err(format!("no {name} latency samples to plot").into());
        }
        samples.sort();
    }
    // A log scale: the body (under a millisecond) and the tail (tens of
    // milliseconds on a busy machine) both stay readable, every sample shown.
    let lo = series
        .iter()
        .map(|(_, s, _)| ms(s[0]))
        .fold(f64::INFINITY, f64::min)
        .max(0.001)
        * 0.8;
    let hi = series
        .iter()
        .map(|(_, s, _)| ms(s[s.len() - 1]))
        .fold(0.0, f64::max)
        .max(lo * 2.0)
        * 1.1;
    let counted = if baseline.len() == pollhook.len() {
        format!("{} samples each", pollhook.len())
    } else {
        format!("{} and {} samples", baseline.len(), pollhook.len())
    };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Latency added, API → backend ({counted})"),
            caption_font(),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(one_two_five(lo, hi)),
            0.0..100.0,
        )?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .x_label_formatter(&|v| {
            if *v < 0.1 {
                format!("{v:.2}")
            } else if *v < 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        })
        .y_desc("updates delivered within")
        .y_label_formatter(&|v| format!("{v:.0}%"))
        .draw()?;
    for (name, samples, color) in &series {
        let n = samples.len() as f64;
        // A step function: the share reaches (i+1)/n at the i-th sample.
        let mut points = vec![(lo, 0.0)];
        let mut last = 0.0;
        for (i, d) in samples.iter().enumerate() {
            let x = ms(*d);
            points.push((x, last));
            last = (i + 1) as f64 / n * 100.0;
            points.push((x, last));
        }
        points.push((hi, last));
        let label = format!(
            "{name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(quantile(samples, 0.5)),
            ms(quantile(samples, 0.99)),
            ms(*samples.last().expect("not empty"))
        );
        let color = *color;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// `throughput.svg`: updates/s end to end, the baseline's and pollhook's
/// medians as bars, each round as a dot, the ratio written above.
pub fn throughput(path: &Path, updates: i64, baseline: &[f64], pollhook: &[f64]) -> Result<()> {
    let median = |v: &[f64]| -> Result<f64> {
        let mut v = v.to_vec();
        if v.is_empty() {
            return Err("no throughput rounds to plot".into());
        }
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    };
    let (base, ours) = (median(baseline)?, median(pollhook)?);
    let ratio = ours / base;
    let highest = |v: &[f64]| v.iter().fold(0.0, |a: f64, b| a.max(*b));
    let top = highest(baseline).max(highest(pollhook)) * 1.25;
    let top = if top > 0.0 { top } else { 1.0 };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Throughput, {updates} updates: pollhook {ratio:.2}× the baseline"),
            caption_font(),
        )
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d((0u32..1u32).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("updates/s, API → backend")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc(format!(
            "bars: median of {} rounds each (alternating); dots: each round",
            pollhook.len().max(baseline.len())
        ))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(0) => "baseline (no storage)".to_string(),
            SegmentValue::CenterOf(1) => "pollhook".to_string(),
            _ => String::new(),
        })
        .draw()?;
    let centered = |size: u32| {
        TextStyle::from(("sans-serif", size).into_font()).pos(Pos::new(HPos::Center, VPos::Center))
    };
    let bars = [
        (0u32, base, baseline, BASELINE),
        (1, ours, pollhook, POLLHOOK),
    ];
    for (at, median, rounds, color) in bars {
        chart.draw_series(
            Histogram::vertical(&chart)
                .style(color.mix(0.75).filled())
                .margin(60)
                .data([(at, median)]),
        )?;
        chart.draw_series(
            rounds
                .iter()
                .map(|r| Circle::new((SegmentValue::CenterOf(at), *r), 4, BLACK.filled())),
        )?;
        // Inside the bar, at half its height: clear of the dots, which
        // sit around its top.
        chart.draw_series(std::iter::once(Text::new(
            format!("{median:.0}/s"),
            (SegmentValue::CenterOf(at), median / 2.0),
            centered(22).color(&WHITE),
        )))?;
    }
    chart.draw_series(std::iter::once(Text::new(
        format!("{ratio:.2}×"),
        (SegmentValue::CenterOf(1), highest(pollhook) + top * 0.08),
        centered(30).color(&POLLHOOK),
    )))?;
    root.present()?;
    Ok(())
}

/// One sample of the backlog scenario, `at` seconds after the relay
/// started: updates confirmed to the API (so stored by the relay) and
/// updates delivered to the backend.
#[derive(Clone, Copy, Debug)]
pub struct BacklogSample {
    pub at: f64,
    pub stored: u64,
    pub delivered: u64,
}

/// When, in seconds after the relay started, the backlog scenario's
/// phases changed: the relay stopped (all ingested), it polled again after
/// its restart, the backend came back up.
#[derive(Clone, Copy, Debug)]
pub struct BacklogMarks {
    pub stopped: f64,
    pub polling: f64,
    pub backend_up: f64,
}

/// `backlog.svg`: updates stored, delivered and waiting (stored −
/// delivered) over time, through the ingest with the backend down, the
/// restart, and the drain once the backend is back.
pub fn backlog(
    path: &Path,
    updates: i64,
    samples: &[BacklogSample],
    marks: BacklogMarks,
) -> Result<()> {
    let end = samples
        .iter()
        .map(|s| s.at)
        .fold(marks.backend_up, f64::max)
        .max(0.1);
    let top = samples
        .iter()
        .map(|s| s.stored.max(s.delivered))
        .fold(updates.max(1) as u64, u64::max) as f64
        // Room above the lines for the legend and the phases' labels.
        * 1.3;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Backlog of {updates} updates: ingest (backend down), restart, drain"),
            caption_font(),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..end * 1.02, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the relay started")
        .y_desc("updates")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    // The phase changes, as vertical lines labelled at different heights
    // (the restart and the backend's return are often close together).
    let phases = [
        (marks.stopped, "relay stopped", 0.96),
        (marks.polling, "restarted: polling", 0.91),
        (marks.backend_up, "backend up", 0.86),
    ];
    for (at, label, height) in phases {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(at, 0.0), (at, top)],
            BLACK.mix(0.35).stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            label,
            (at + end * 0.005, top * height),
            ("sans-serif", 15).into_font(),
        )))?;
    }
    // Stored is drawn wide and first: while nothing is delivered, waiting
    // equals stored and runs along its middle.
    type Value = fn(&BacklogSample) -> f64;
    let lines: [(&str, RGBColor, u32, Value); 3] = [
        ("stored (confirmed to the API)", POLLHOOK, 6, |s| {
            s.stored as f64
        }),
        ("delivered to the backend", DELIVERED, 2, |s| {
            s.delivered as f64
        }),
        ("waiting (stored − delivered)", WAITING, 2, |s| {
            s.stored.saturating_sub(s.delivered) as f64
        }),
    ];
    for (name, color, width, value) in lines {
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.at, value(s))),
                color.stroke_width(width),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
