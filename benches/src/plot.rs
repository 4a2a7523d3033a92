//! Latency CDF plots (SVG, plotters).

use std::path::Path;

use anyhow::{bail, Context as _};
use plotters::prelude::*;

use crate::stats::RunResult;

/// At most this many points per curve: a million-sample run still makes a small file, and
/// the curve looks the same.
const MAX_POINTS: usize = 2000;

/// Draws one latency CDF per result that has samples ([`RunResult::samples_usec`]) into an
/// SVG file at `path`: x is the latency in microseconds on a log scale (so the tail stays
/// visible next to the median), y the fraction of samples at or below it. Every sample is
/// drawn (none dropped, unlike the perftest figures). Fails when no result has samples.
pub fn latency_cdf_svg(path: &Path, results: &[RunResult]) -> anyhow::Result<()> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = results
        .iter()
        .map(|r| (curve_label(r), cdf_points(&r.samples_usec, MAX_POINTS)))
        .filter(|(_, points)| !points.is_empty())
        .collect();
    if curves.is_empty() {
        bail!("no latency samples to plot");
    }
    let (lo, hi) = x_range(curves.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| x)));

    let root = SVGBackend::new(path, (1024, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency CDF", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("latency [usec]")
        .y_desc("fraction of samples <= x")
        .draw()?;
    for (i, (label, points)) in curves.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let clamped = points.into_iter().map(|(x, y)| (x.clamp(lo, hi), y));
        chart
            .draw_series(LineSeries::new(clamped, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn curve_label(r: &RunResult) -> String {
    let flows = if r.flows > 1 {
        format!(", {} flows", r.flows)
    } else {
        String::new()
    };
    format!("{} {} {}B{flows}", r.mode, r.test, r.size)
}

/// The empirical CDF of `samples` (non-finite ones ignored) as `(latency, fraction <= it)`
/// points, sorted by latency: every sample when there are at most `max_points`, else
/// `max_points` evenly spaced order statistics, always including the smallest and largest.
pub fn cdf_points(samples: &[f64], max_points: usize) -> Vec<(f64, f64)> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 || max_points == 0 {
        return Vec::new();
    }
    let point = |i: usize| (sorted[i], (i + 1) as f64 / n as f64);
    if n <= max_points {
        return (0..n).map(point).collect();
    }
    let steps = max_points.max(2) - 1;
    (0..=steps).map(|k| point(k * (n - 1) / steps)).collect()
}

/// The x range of a log axis holding every value: positive, non-empty. Values at or below 0
/// (a sample under one clock tick) are drawn at the left edge.
fn x_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for x in values {
        if x > 0.0 {
            lo = lo.min(x);
        }
        hi = hi.max(x);
    }
    if !lo.is_finite() {
        lo = 1e-3;
    }
    let hi = hi.max(lo);
    // A margin on both sides, so a run with a single distinct value still has an axis.
    (lo / 1.25, hi * 1.25)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_points_keep_every_sample_when_few() {
        let points = cdf_points(&[3.0, 1.0, f64::NAN, 2.0], 10);
        assert_eq!(points, vec![(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]);
    }

    #[test]
    fn cdf_points_thin_out_many_samples_but_keep_both_ends() {
        let samples: Vec<f64> = (0..10_000).rev().map(f64::from).collect();
        let points = cdf_points(&samples, 101);
        assert_eq!(points.len(), 101);
        assert_eq!(points[0], (0.0, 1.0 / 10_000.0));
        assert_eq!(points[100], (9_999.0, 1.0));
        assert!(points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
    }

    #[test]
    fn x_range_is_positive_and_not_empty() {
        assert_eq!(x_range([0.0, 0.0].into_iter()), (1e-3 / 1.25, 1e-3 * 1.25));
        let (lo, hi) = x_range([2.0, 2.0].into_iter());
        assert!(lo > 0.0 && lo < 2.0 && hi > 2.0);
    }
}
