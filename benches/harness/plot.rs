//! The comparison's plot: ack latency p50, p99 and p99.9 of every workload
//! that measures one (a–j), a bar per broker, on a log scale, as SVG. Text
//! is written as SVG `<text>` (plotters without its font features), so no
//! system fonts are needed to draw it.

use std::path::Path;

use anyhow::{bail, Result};
use plotters::prelude::*;

use crate::table::{self, Entry};

/// The quantiles drawn, one panel each.
const QUANTILES: [(f64, &str); 3] = [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")];
/// One panel's size in pixels.
const PANEL: (u32, u32) = (1000, 300);
/// The share of a workload's slot its bars fill.
const GROUP_WIDTH: f64 = 0.8;

/// A broker's latencies (ms) per workload, one per quantile; None where the
/// workload did not run.
type Bars = Vec<[Option<f64>; 3]>;

/// Writes the plot of every broker that ran to `path`.
pub fn write_svg(path: &Path, entries: &[Entry]) -> Result<()> {
    let mut workloads: Vec<&str> = Vec::new();
    let mut brokers: Vec<(String, Bars)> = Vec::new();
    for e in entries {
        let Ok(s) = &e.outcome else { continue };
        let latencies = s.ack_latencies();
        // The same workloads in every suite.
        workloads = latencies.iter().map(|(id, _)| *id).collect();
        let bars = latencies
            .iter()
            .map(|(_, h)| {
                QUANTILES.map(|(q, _)| {
                    h.filter(|h| !h.is_empty())
                        .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
                })
            })
            .collect();
        brokers.push((table::label(e), bars));
    }
    let values = || {
        brokers
            .iter()
            .flat_map(|(_, b)| b.iter().flatten().flatten())
    };
    let (Some(min), Some(max)) = (
        values().copied().reduce(f64::min),
        values().copied().reduce(f64::max),
    ) else {
        bail!("no latencies to plot");
    };
    let (lo, hi) = ((min / 2.0).max(0.001), max * 2.0);

    let root =
        SVGBackend::new(path, (PANEL.0, PANEL.1 * QUANTILES.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((QUANTILES.len(), 1));
    let n = workloads.len();
    let slot = GROUP_WIDTH / brokers.len() as f64;
    // Workload w's bars fill [w - GROUP_WIDTH / 2, w + GROUP_WIDTH / 2].
    let workload_at = |x: &f64| {
        let w = x.round();
        match workloads.get(w as usize) {
            Some(id) if (x - w).abs() < 1e-6 && w >= 0.0 => (*id).to_owned(),
            _ => String::new(),
        }
    };
    let tick = |y: &f64| format!("{}", (y * 1000.0).round() / 1000.0);
    for (q, (panel, (_, name))) in panels.iter().zip(QUANTILES).enumerate() {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("ack latency {name} per workload, ms (log scale)"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(25)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .x_label_formatter(&workload_at)
            .y_label_formatter(&tick)
            .draw()?;
        for (b, (broker, bars)) in brokers.iter().enumerate() {
            let color = Palette99::pick(b).to_rgba();
            let left = |w: usize| w as f64 - GROUP_WIDTH / 2.0 + slot * b as f64;
            chart
                .draw_series(bars.iter().enumerate().filter_map(|(w, v)| {
                    v[q].map(|v| {
                        Rectangle::new([(left(w), lo), (left(w) + slot, v)], color.filled())
                    })
                }))?
                .label(broker)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        if q == 0 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
