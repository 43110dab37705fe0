//! PNG plots of a report (feature `plots`): utilization per run against the
//! centralized baseline, the CDF of high-priority waits, and the p99 wait
//! per priority; and plots that compare scenarios ([`write_compare`]). The font is embedded (`simulations/fonts/`), so the plots
//! render the same anywhere.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::metrics::percentile;
use super::report::{Report, RunReport, TARGET_UTIL_GAP_PCT};

const FONT: &[u8] = include_bytes!("../../../simulations/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (960, 540);

/// A plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("plot {file}: {message}")]
pub struct PlotError {
    pub file: String,
    pub message: String,
}

/// One colour per run: the baseline black, the strategies from a palette.
fn colour(i: usize) -> RGBColor {
    const P: [RGBColor; 7] = [
        RGBColor(0, 0, 0),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    P[i % P.len()]
}

/// Write every plot into `dir` (created if needed); returns the files.
pub fn write_all(r: &Report, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let err = |file: &Path, e: &dyn std::fmt::Display| PlotError {
        file: file.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, &e))?;
    // Registering again replaces the same font; harmless.
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| err(dir, &"bad font"))?;
    let prefix = format!("sched-{}", r.scenario);
    let files = [
        dir.join(format!("{prefix}-utilization.png")),
        dir.join(format!("{prefix}-high-wait-cdf.png")),
        dir.join(format!("{prefix}-wait-p99.png")),
    ];
    utilization(r, &files[0]).map_err(|e| err(&files[0], &e))?;
    high_cdf(r, &files[1]).map_err(|e| err(&files[1], &e))?;
    p99(r, &files[2]).map_err(|e| err(&files[2], &e))?;
    Ok(files.to_vec())
}

type Res = Result<(), Box<dyn std::error::Error>>;

/// The label of a category axis where category `i` spans `[i, i + 1)`:
/// its name at the middle, nothing elsewhere.
fn category(v: f64, names: &[&str]) -> String {
    let i = (v - 0.5).round();
    if (v - 0.5 - i).abs() < 0.05 && i >= 0.0 {
        names.get(i as usize).copied().unwrap_or("").to_owned()
    } else {
        String::new()
    }
}

fn utilization(r: &Report, path: &Path) -> Res {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let names: Vec<&str> = r.runs.iter().map(|x| x.name.as_str()).collect();
    let n = names.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: {} utilization ({} nodes, offered {:.0}%)",
                r.scenario,
                r.dominant.name(),
                r.nodes,
                r.offered_load.get(r.dominant) * 100.0
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n as f64, 0.0..100.0)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("time-averaged utilization, %")
        .x_labels(2 * n + 1)
        .x_label_formatter(&|v: &f64| category(*v, &names))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, run) in r.runs.iter().enumerate() {
        let c = colour(i);
        let v = run.utilization_dominant * 100.0;
        let x0 = i as f64 + 0.15;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x0, 0.0), (x0 + 0.7, v)],
            c.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{v:.1}%"),
            (x0 + 0.12, v + 3.0),
            ("sans-serif", 14).into_font(),
        )))?;
    }
    if let Some(c) = r.run("central") {
        let target = c.utilization_dominant * 100.0 * (1.0 - TARGET_UTIL_GAP_PCT / 100.0);
        chart
            .draw_series(LineSeries::new(
                [(0.0, target), (n as f64, target)],
                RED.stroke_width(2),
            ))?
            .label(format!(
                "target: central − {TARGET_UTIL_GAP_PCT}% ({target:.1}%)"
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn high_cdf(r: &Report, path: &Path) -> Res {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let max = r
        .runs
        .iter()
        .filter_map(|x| x.high_waits.last())
        .max()
        .copied()
        .unwrap_or(1)
        .max(10);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: wait of high and critical jobs, CDF (1 ms added, for the log axis)",
                r.scenario
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..(max as f64 + 1.0) * 1.5).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("wait + 1 ms (submission to grant), ms")
        .y_desc("fraction of granted jobs")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, run) in r.runs.iter().enumerate() {
        let w = &run.high_waits;
        if w.is_empty() {
            continue;
        }
        let pts = cdf_points(w, w.len() as f64);
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(run.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

fn p99(r: &Report, path: &Path) -> Res {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let prios = ["low", "normal", "high", "critical"];
    let runs = r.runs.len().max(1);
    let max = r
        .runs
        .iter()
        .flat_map(|x| x.waits[..4].iter().filter_map(|w| w.p99_ms))
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: p99 wait per priority (1 ms added, for the log axis)",
                r.scenario
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..4.0, (0.5..(max + 1.0) * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(9)
        .x_label_formatter(&|v: &f64| category(*v, &prios))
        .y_desc("p99 wait + 1 ms, ms")
        .label_style(("sans-serif", 14))
        .draw()?;
    let width = 0.8 / runs as f64;
    for (i, run) in r.runs.iter().enumerate() {
        let c = colour(i);
        let bars: Vec<Rectangle<(f64, f64)>> = (0..4)
            .filter_map(|p| {
                let v = run.waits[p].p99_ms? as f64 + 1.0;
                let x0 = p as f64 + 0.1 + i as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.5), (x0 + width * 0.9, v)],
                    c.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(run.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The run of `r` a comparison plots: the strategy named `strategy`, or
/// else the first decentralized run, or else the baseline.
pub fn compared_run<'a>(r: &'a Report, strategy: Option<&str>) -> Option<&'a RunReport> {
    match strategy {
        Some(s) => r.run(s),
        None => r
            .runs
            .iter()
            .find(|x| x.name != "central")
            .or(r.runs.first()),
    }
}

/// Plots that compare scenarios run on the same workload (`lanswarm-des
/// compare`), one run of each (see [`compared_run`]), into `dir`, files
/// named `{prefix}-…`:
///
/// - `utilization`: capacity held on the dominant dimension over time;
/// - `waits`: with `[[requesters]]` in every scenario, the median and p90
///   wait and the unserved jobs per requester class; else the CDF of the
///   wait per job class (`[[workload.classes]]`);
/// - `shares` (with `[[requesters]]` only): each requester's share of the
///   granted resource-time against its configured share.
pub fn write_compare(
    reports: &[Report],
    strategy: Option<&str>,
    dir: &Path,
    prefix: &str,
) -> Result<Vec<PathBuf>, PlotError> {
    let err = |file: &Path, e: &dyn std::fmt::Display| PlotError {
        file: file.display().to_string(),
        message: e.to_string(),
    };
    let mut runs = Vec::with_capacity(reports.len());
    for r in reports {
        let run = compared_run(r, strategy)
            .ok_or_else(|| err(dir, &format!("{}: no run to compare", r.scenario)))?;
        runs.push((r, run));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(dir, &e))?;
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| err(dir, &"bad font"))?;
    let fair = runs.iter().all(|(_, run)| run.fairness.is_some());
    let mut files = vec![dir.join(format!("{prefix}-utilization.png"))];
    utilization_over_time(&runs, &files[0]).map_err(|e| err(&files[0], &e))?;
    let waits = dir.join(format!("{prefix}-waits.png"));
    if fair {
        requester_waits(&runs, &waits).map_err(|e| err(&waits, &e))?;
    } else {
        class_wait_cdf(&runs, &waits).map_err(|e| err(&waits, &e))?;
    }
    files.push(waits);
    if fair {
        let shares = dir.join(format!("{prefix}-shares.png"));
        requester_shares(&runs, &shares).map_err(|e| err(&shares, &e))?;
        files.push(shares);
    }
    Ok(files)
}

/// A scenario's label in a comparison: its name and the run's.
fn label(r: &Report, run: &RunReport) -> String {
    format!("{} ({})", r.scenario, run.name)
}

fn utilization_over_time(runs: &[(&Report, &RunReport)], path: &Path) -> Res {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let end = runs.iter().map(|(r, _)| r.duration_s).fold(1.0, f64::max);
    let warmup = runs.iter().map(|(r, _)| r.warmup_s).fold(0.0, f64::max);
    let dom = runs.first().map_or("cpu", |(r, _)| r.dominant.name());
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{dom} held over time, of all the swarm's capacity"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..105.0)?;
    chart
        .configure_mesh()
        .x_desc("simulated time, s")
        .y_desc(format!("{dom} held, % (mean over each step)"))
        .x_label_formatter(&|v: &f64| format!("{v:.0}"))
        .y_label_formatter(&|v: &f64| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    if warmup > 0.0 {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (warmup, 105.0)],
            RGBColor(0, 0, 0).mix(0.08).filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            "warm-up, not measured",
            (warmup * 0.05, 8.0),
            ("sans-serif", 14).into_font(),
        )))?;
    }
    for (i, (r, run)) in runs.iter().enumerate() {
        let c = colour(i + 1);
        // A step: each value from its step's start to the next's.
        let s = &run.utilization_series;
        let mut pts = Vec::with_capacity(2 * s.len());
        for (k, &(t, v)) in s.iter().enumerate() {
            let next = s.get(k + 1).map_or(r.duration_s, |x| x.0);
            pts.push((t, v * 100.0));
            pts.push((next, v * 100.0));
        }
        // The mean over the measured window, thin, across that window.
        let mean = run.utilization_dominant * 100.0;
        chart.draw_series(DashedLineSeries::new(
            [(r.warmup_s, mean), (r.duration_s, mean)],
            6,
            4,
            c.stroke_width(1),
        ))?;
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(format!(
                "{}: {:.1}% mean over the measured window (dashed)",
                label(r, run),
                run.utilization_dominant * 100.0
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// CDF points of sorted `w` over `total` jobs: one step per distinct value,
/// 1 ms added for the log axis.
fn cdf_points(w: &[u64], total: f64) -> Vec<(f64, f64)> {
    let mut pts = Vec::new();
    let mut k = 0;
    while k < w.len() {
        let v = w[k];
        let mut e = k;
        while e < w.len() && w[e] == v {
            e += 1;
        }
        let x = v as f64 + 1.0;
        pts.push((x, k as f64 / total));
        pts.push((x, e as f64 / total));
        k = e;
    }
    pts
}

/// A value of a log axis in ms: `10 ms`, `1 s`, `100 s`.
fn wait_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", round_sig(ms / 1000.0))
    } else {
        format!("{} ms", round_sig(ms))
    }
}

/// `v` with at most two significant digits, without trailing zeros.
fn round_sig(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.1}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// One panel per job class: the CDF of its jobs' waits, one line per
/// scenario.
fn class_wait_cdf(runs: &[(&Report, &RunReport)], path: &Path) -> Res {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "wait per job class: CDF over the jobs that arrived in the measured window",
        ("sans-serif", 20),
    )?;
    let classes: Vec<String> = runs
        .first()
        .map(|(_, run)| run.class_waits.iter().map(|c| c.priority.clone()).collect())
        .unwrap_or_default();
    let max = runs
        .iter()
        .flat_map(|(_, run)| run.class_wait_samples.iter().filter_map(|w| w.last()))
        .max()
        .copied()
        .unwrap_or(1)
        .max(10) as f64;
    let x_end = (max + 1.0) * 1.5;
    let panels = root.split_evenly((1, classes.len().max(1)));
    for (k, (panel, class)) in panels.iter().zip(&classes).enumerate() {
        // Each scenario's CDF of this class, over all its jobs, so jobs
        // never served keep the line below 1.
        let mut lines = Vec::new();
        for (i, (r, run)) in runs.iter().enumerate() {
            let (Some(w), Some(cw)) = (run.class_wait_samples.get(k), run.class_waits.get(k))
            else {
                continue;
            };
            let total = (cw.granted as u64 + cw.unserved).max(1) as f64;
            let mut name = r.scenario.clone();
            if cw.unserved > 0 {
                name.push_str(&format!(" ({} never served)", cw.unserved));
            }
            lines.push((colour(i + 1), name, cdf_points(w, total), total));
        }
        let jobs = lines.first().map_or(0.0, |l| l.3);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{class} jobs ({jobs:.0})"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(50)
            .build_cartesian_2d((1.0..x_end).log_scale(), 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("wait + 1 ms, submission to grant (log axis)")
            .y_desc(if k == 0 { "fraction of the jobs" } else { "" })
            .x_label_formatter(&|v: &f64| wait_label(*v))
            .y_label_formatter(&|v: &f64| format!("{v:.1}"))
            .label_style(("sans-serif", 14))
            .draw()?;
        // The legend goes lower right unless a line is low there.
        let probe = x_end.powf(0.5);
        let low_right = lines.iter().any(|(_, _, pts, _)| {
            pts.iter()
                .filter(|p| p.0 <= probe)
                .map(|p| p.1)
                .fold(0.0, f64::max)
                < 0.35
        });
        for (c, name, pts, _) in lines {
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(if low_right {
                SeriesLabelPosition::UpperLeft
            } else {
                SeriesLabelPosition::LowerRight
            })
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn requester_waits(runs: &[(&Report, &RunReport)], path: &Path) -> Res {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(620);
    let classes: Vec<String> = runs
        .first()
        .and_then(|(_, run)| run.fairness.as_ref())
        .map(|f| f.classes.iter().map(|c| c.class.clone()).collect())
        .unwrap_or_default();
    let names: Vec<&str> = classes.iter().map(String::as_str).collect();
    let n = names.len().max(1) as f64;
    let width = 0.8 / runs.len().max(1) as f64;
    // Wait of the granted jobs: p50 solid, p90 light above it.
    let max_s = runs
        .iter()
        .filter_map(|(_, run)| run.fairness.as_ref())
        .flat_map(|f| f.classes.iter())
        .filter_map(|c| percentile(&c.waits, 90.0))
        .max()
        .unwrap_or(1) as f64
        / 1000.0;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "wait of the granted jobs, per requester class",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..max_s * 1.3)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * names.len() + 1)
        .x_label_formatter(&|v: &f64| category(*v, &names))
        .y_desc("wait, s: p50 (solid), p90 (light)")
        .y_label_formatter(&|v: &f64| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (r, run)) in runs.iter().enumerate() {
        let c = colour(i + 1);
        let Some(f) = &run.fairness else { continue };
        let mut bars = Vec::new();
        let mut labels = Vec::new();
        for (k, cl) in f.classes.iter().enumerate() {
            let (Some(p50), Some(p90)) = (percentile(&cl.waits, 50.0), percentile(&cl.waits, 90.0))
            else {
                continue;
            };
            let (p50, p90) = (p50 as f64 / 1000.0, p90 as f64 / 1000.0);
            let x0 = k as f64 + 0.1 + i as f64 * width;
            let x1 = x0 + width * 0.9;
            bars.push(Rectangle::new([(x0, p50), (x1, p90)], c.mix(0.35).filled()));
            bars.push(Rectangle::new([(x0, 0.0), (x1, p50)], c.filled()));
            labels.push(Text::new(
                format!("{p50:.0} / {p90:.0} s"),
                (x0 + width * 0.1, p90 + max_s * 0.06),
                ("sans-serif", 13).into_font(),
            ));
        }
        chart
            .draw_series(bars)?
            .label(r.scenario.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
        chart.draw_series(labels)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    // Jobs never served, % of the class's jobs.
    let mut chart = ChartBuilder::on(&right)
        .caption("never served, % of jobs", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..n, 0.0..100.0)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * names.len() + 1)
        .x_label_formatter(&|v: &f64| category(*v, &names))
        .y_label_formatter(&|v: &f64| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (_, run)) in runs.iter().enumerate() {
        let c = colour(i + 1);
        let Some(f) = &run.fairness else { continue };
        for (k, cl) in f.classes.iter().enumerate() {
            let total = (cl.granted as u64 + cl.unserved).max(1) as f64;
            let v = cl.unserved as f64 / total * 100.0;
            let x0 = k as f64 + 0.1 + i as f64 * width;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.9, v)],
                c.filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{v:.0}%"),
                (x0 + width * 0.15, v + 5.0),
                ("sans-serif", 13).into_font(),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}

fn requester_shares(runs: &[(&Report, &RunReport)], path: &Path) -> Res {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let Some(first) = runs.first().and_then(|(_, run)| run.fairness.as_ref()) else {
        return Ok(());
    };
    // "heavy 1", "heavy 2", "light 1", ...
    let mut names = Vec::with_capacity(first.requesters.len());
    for (k, q) in first.requesters.iter().enumerate() {
        let nth = first.requesters[..k]
            .iter()
            .filter(|p| p.class == q.class)
            .count();
        names.push(format!("{} {}", q.class, nth + 1));
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let n = names.len().max(1) as f64;
    let max = runs
        .iter()
        .filter_map(|(_, run)| run.fairness.as_ref())
        .flat_map(|f| f.requesters.iter())
        .map(|q| q.achieved_share.max(q.configured_share))
        .fold(0.01, f64::max)
        * 100.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "each requester's share of the granted {}-time",
                first.dimension.name()
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..max * 1.25)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * names.len() + 1)
        .x_label_formatter(&|v: &f64| category(*v, &names))
        .y_desc("share of the granted resource-time, %")
        .y_label_formatter(&|v: &f64| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    let width = 0.8 / runs.len().max(1) as f64;
    for (i, (r, run)) in runs.iter().enumerate() {
        let c = colour(i + 1);
        let Some(f) = &run.fairness else { continue };
        let bars = f.requesters.iter().enumerate().map(|(k, q)| {
            let x0 = k as f64 + 0.1 + i as f64 * width;
            Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.9, q.achieved_share * 100.0)],
                c.filled(),
            )
        });
        chart
            .draw_series(bars)?
            .label(format!(
                "{}: share error max {:.3}, mean {:.3}",
                r.scenario, f.max_share_error, f.mean_share_error
            ))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
    }
    let marks = first.requesters.iter().enumerate().map(|(k, q)| {
        let y = q.configured_share * 100.0;
        PathElement::new(
            vec![(k as f64 + 0.05, y), (k as f64 + 0.95, y)],
            BLACK.stroke_width(3),
        )
    });
    chart
        .draw_series(marks)?
        .label("configured share")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
