//! PNG plots of a report (feature `plots`): utilization per run against the
//! centralized baseline, the CDF of high-priority waits, and the p99 wait
//! per priority. The font is embedded (`simulations/fonts/`), so the plots
//! render the same anywhere.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::report::{Report, TARGET_UTIL_GAP_PCT};

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
        let total = w.len() as f64;
        // One point per distinct value: where the CDF steps.
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
