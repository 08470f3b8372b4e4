//! The picture of a training run: `OUT/training.svg`, three stacked panels over the step axis —
//! training loss (validation loss as points where it was measured), learning rate and gradient
//! norm (before clipping; skipped overflow steps have none) — drawn from `metrics.jsonl` with
//! plotters' SVG backend and written atomically at every checkpoint and at the end of training.
//!
//! Each series is one `<polyline>` in its panel's colour (loss blue `#0000FF`, learning rate green
//! `#00FF00`, gradient norm red `#FF0000`), one point per metrics line that has the value, in step
//! order.

use std::ops::Range;
use std::path::Path;

use glm_core::weights::write_atomic;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::trainer::MetricsLine;

/// Points `(step, value)` of one series.
type Series = [(u64, f64)];

/// File name of the plot inside the run folder.
pub const PLOT_FILE: &str = "training.svg";

/// Renders `metrics` (in step order) to an SVG document.
///
/// # Errors
/// [`Error::Plot`] when there is nothing to draw (no lines) or the renderer fails.
pub fn render_svg(metrics: &[MetricsLine]) -> Result<String> {
    let plot_err = |e: &dyn std::fmt::Display| Error::Plot(e.to_string());
    let (first, last) = match (metrics.first(), metrics.last()) {
        (Some(f), Some(l)) => (f.step, l.step.max(f.step + 1)),
        _ => return Err(Error::Plot("no metrics lines to plot".into())),
    };
    let steps = first..last;
    let loss: Vec<(u64, f64)> = finite(metrics.iter().map(|m| (m.step, Some(m.loss))));
    let val: Vec<(u64, f64)> = finite(metrics.iter().map(|m| (m.step, m.val_loss)));
    let lr: Vec<(u64, f64)> = finite(metrics.iter().map(|m| (m.step, Some(m.lr))));
    let grad: Vec<(u64, f64)> = finite(metrics.iter().map(|m| (m.step, m.grad_norm)));

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 900)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let panels = root.split_evenly((3, 1));
        let specs: [(&str, &Series, RGBColor); 3] = [
            ("loss", &loss, BLUE),
            ("learning rate", &lr, GREEN),
            ("gradient norm", &grad, RED),
        ];
        for (i, (panel, (name, series, color))) in panels.iter().zip(specs).enumerate() {
            let extra: &[(u64, f64)] = if i == 0 { &val } else { &[] };
            let range = value_range(series.iter().chain(extra).map(|p| p.1));
            let mut chart = ChartBuilder::on(panel)
                .caption(name, ("sans-serif", 18))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(60)
                .build_cartesian_2d(steps.clone(), range)
                .map_err(|e| plot_err(&e))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .draw()
                .map_err(|e| plot_err(&e))?;
            chart
                .draw_series(LineSeries::new(series.iter().copied(), color))
                .map_err(|e| plot_err(&e))?;
            if !extra.is_empty() {
                chart
                    .draw_series(extra.iter().map(|&p| Circle::new(p, 3, BLACK.filled())))
                    .map_err(|e| plot_err(&e))?;
            }
        }
        root.present().map_err(|e| plot_err(&e))?;
    }
    Ok(svg)
}

/// Renders `metrics` and writes the SVG to `path` atomically (temporary file + rename).
///
/// # Errors
/// As [`render_svg`], and the write error (naming `path`) when it cannot be written.
pub fn write_plot(metrics: &[MetricsLine], path: &Path) -> Result<()> {
    let svg = render_svg(metrics)?;
    write_atomic(path, svg.as_bytes())?;
    Ok(())
}

fn finite(points: impl Iterator<Item = (u64, Option<f64>)>) -> Vec<(u64, f64)> {
    points
        .filter_map(|(s, v)| v.filter(|v| v.is_finite()).map(|v| (s, v)))
        .collect()
}

/// The value axis: the data's range with 5 % room, never empty.
fn value_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
    (lo - pad)..(hi + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: u64, loss: f64, grad: Option<f64>, val: Option<f64>) -> MetricsLine {
        MetricsLine {
            step,
            loss,
            lr: 1e-3 * step as f64,
            grad_norm: grad,
            loss_scale: 1.0,
            skipped: grad.is_none(),
            skipped_total: 0,
            tokens_per_s: 100.0,
            targets: 8,
            val_loss: val,
            val_ppl: val.map(f64::exp),
            wall_s: None,
        }
    }

    /// Point counts of the `<polyline>` elements stroked in `color`, in document order.
    fn polylines(svg: &str, color: &str) -> Vec<usize> {
        svg.split("<polyline")
            .skip(1)
            .filter_map(|el| {
                let el = el.split("/>").next()?;
                if !el.contains(&format!("stroke=\"{color}\"")) {
                    return None;
                }
                let points = el.split("points=\"").nth(1)?.split('"').next()?;
                Some(points.split_whitespace().count())
            })
            .collect()
    }

    #[test]
    fn each_panel_draws_one_point_per_logged_value() {
        let metrics = [
            line(1, 5.0, Some(2.0), None),
            line(2, 4.0, None, Some(4.5)),
            line(3, 3.5, Some(1.0), None),
            line(4, 3.0, Some(0.5), Some(3.2)),
        ];
        let svg = render_svg(&metrics).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        // loss: 4 points, learning rate: 4, gradient norm: 3 (step 2 skipped).
        assert_eq!(polylines(&svg, "#0000FF"), vec![4]);
        assert_eq!(polylines(&svg, "#00FF00"), vec![4]);
        assert_eq!(polylines(&svg, "#FF0000"), vec![3]);
        // Validation losses as points (circles) on the loss panel.
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(matches!(render_svg(&[]), Err(Error::Plot(_))));
    }
}
