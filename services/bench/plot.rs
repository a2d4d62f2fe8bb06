//! The sweep's curve as an SVG: latency (p50, p99, p99.9, on a log scale)
//! against the rate asked, the target as a dashed line, the knee marked.
//! Drawn by plotters' SVG backend: text stays text, no font files needed.

use super::open::{Step, SweepReport};
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (720, 420);

/// The chart's coordinates: rate (linear) against milliseconds (log).
type Chart = Cartesian2d<plotters::coord::types::RangedCoordf64, LogCoord<f64>>;

/// A curve: its name, its colour, and its value in a step.
type Quantile = (&'static str, RGBColor, fn(&Step) -> f64);

const QUANTILES: [Quantile; 3] = [
    ("p50", BLUE, |step| step.p50_ms),
    ("p99", RED, |step| step.p99_ms),
    ("p99.9", MAGENTA, |step| step.p999_ms),
];

/// Writes `report`'s curve to `path`.
pub fn latency_against_rate(
    report: &SweepReport,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut steps: Vec<_> = report.steps.iter().collect();
    steps.sort_by(|a, b| a.asked_per_second.total_cmp(&b.asked_per_second));
    let (highest_rate, y_range) = extent(report, &steps);

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let unit = unit(report.mode);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "dockercoins bench --sweep: latency against load ({})",
                report.machine
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..highest_rate * 1.05, y_range.log_scale())?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "{unit} asked per second (open loop, Poisson arrivals)"
        ))
        .y_desc("latency from due time, ms")
        .draw()?;

    for (name, color, value) in QUANTILES {
        let points: Vec<(f64, f64)> = steps
            .iter()
            .map(|step| (step.asked_per_second, value(step)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|point| Circle::new(point, 3, color.filled())),
        )?;
    }
    marks(&mut chart, report, highest_rate * 1.05)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// What a step's rate counts, on the x axis.
fn unit(mode: super::Mode) -> &'static str {
    match mode {
        super::Mode::Unary => "units of work (one block, two calls)",
        super::Mode::Batch => "batches",
    }
}

/// The chart's extent: the highest rate asked, and the latencies from
/// below the lowest p50 to above the highest p99.9 (the target included).
fn extent(report: &SweepReport, steps: &[&Step]) -> (f64, std::ops::Range<f64>) {
    let highest_rate = steps
        .iter()
        .map(|step| step.asked_per_second)
        .fold(1.0, f64::max);
    let (lowest_ms, highest_ms) = steps.iter().fold(
        (report.p99_target_ms, report.p99_target_ms),
        |(low, high), step| (low.min(step.p50_ms), high.max(step.p999_ms)),
    );
    (
        highest_rate,
        (lowest_ms.max(0.001) / 1.5)..(highest_ms * 1.5),
    )
}

/// The target as a dashed line across the chart, up to `right`, and the
/// knee, when there is one.
fn marks<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Chart>,
    report: &SweepReport,
    right: f64,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let target = report.p99_target_ms;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(0.0, target), (right, target)],
            6,
            4,
            BLACK.stroke_width(1),
        ))?
        .label(format!("target p99 {target} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    if let Some(knee) = &report.knee {
        chart
            .draw_series(std::iter::once(TriangleMarker::new(
                (knee.asked_per_second, knee.p99_ms),
                8,
                GREEN.filled(),
            )))?
            .label(format!("knee {:.0}/s", knee.asked_per_second))
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, GREEN.filled()));
    }
    Ok(())
}
