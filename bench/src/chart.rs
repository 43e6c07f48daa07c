//! The SVG chart of the fan-out measurements: gateway CPU per delivered event and p99
//! latency against the number of subscribers, one line per system.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::loadgen::Transport;
use crate::run::{Report, Scenario};
use crate::systems::SystemKind;

/// One system's points: (N, CPU µs per event) and (N, p99 ms).
struct Series {
    system: SystemKind,
    cpu: Vec<(f64, f64)>,
    p99: Vec<(f64, f64)>,
}

fn series(report: &Report) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for m in &report.measurements {
        // The chart is the WebSocket fan-out's, the one every system speaks.
        if m.scenario != Scenario::Fanout || m.transport != Transport::Ws {
            continue;
        }
        let Some(figures) = m.figures() else { continue };
        let index = match out.iter().position(|s| s.system == m.system) {
            Some(index) => index,
            None => {
                out.push(Series {
                    system: m.system,
                    cpu: Vec::new(),
                    p99: Vec::new(),
                });
                out.len() - 1
            }
        };
        let n = m.n as f64;
        // CPU-seconds per million events is CPU-microseconds per event.
        if let Some(cpu) = figures.gateway_cpu_s_per_million_events {
            out[index].cpu.push((n, cpu));
        }
        if let Some(latency) = &figures.latency_us {
            out[index].p99.push((n, latency.p99 / 1e3));
        }
    }
    out
}

/// Writes the chart to `path`.
pub fn write(report: &Report, path: &Path) -> anyhow::Result<()> {
    let series = series(report);
    let all_n = series
        .iter()
        .flat_map(|s| s.cpu.iter().chain(&s.p99))
        .map(|&(n, _)| n);
    let (n_min, n_max) = all_n.fold((f64::MAX, 0f64), |(lo, hi), n| (lo.min(n), hi.max(n)));
    if n_max <= 0.0 {
        return Err(anyhow!("no fan-out measurements to chart"));
    }
    let n_range = (n_min * 0.7)..(n_max * 1.4);
    let cpu_max = series
        .iter()
        .flat_map(|s| &s.cpu)
        .map(|&(_, v)| v)
        .fold(0f64, f64::max);
    let p99 = series.iter().flat_map(|s| &s.p99).map(|&(_, v)| v);
    let (p99_min, p99_max) = p99.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let p99_range = (p99_min.max(0.01) * 0.5)..(p99_max.max(0.02) * 2.0);

    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    let draw_error = |err: &dyn std::fmt::Display| anyhow!("drawing {}: {err}", path.display());
    root.fill(&WHITE).map_err(|e| draw_error(&e))?;
    let (left, right) = root.split_horizontally(550);

    let mut cpu_chart = ChartBuilder::on(&left)
        .caption(
            "Gateway CPU per delivered event (fan-out)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(n_range.clone().log_scale(), 0f64..(cpu_max * 1.15).max(1.0))
        .map_err(|e| draw_error(&e))?;
    cpu_chart
        .configure_mesh()
        .x_desc("subscribers (N)")
        .y_desc("CPU µs per event")
        .x_label_formatter(&|n| format!("{n:.0}"))
        .draw()
        .map_err(|e| draw_error(&e))?;

    let mut p99_chart = ChartBuilder::on(&right)
        .caption("p99 latency (fan-out)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(n_range.log_scale(), p99_range.log_scale())
        .map_err(|e| draw_error(&e))?;
    p99_chart
        .configure_mesh()
        .x_desc("subscribers (N)")
        .y_desc("p99 ms (log)")
        .x_label_formatter(&|n| format!("{n:.0}"))
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(|e| draw_error(&e))?;

    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let label = s.system.to_string();
        plot_system(&mut cpu_chart, &s.cpu, color, &label).map_err(|e| draw_error(&e))?;
        plot_system(&mut p99_chart, &s.p99, color, &label).map_err(|e| draw_error(&e))?;
    }
    legend(&mut cpu_chart).map_err(|e| draw_error(&e))?;
    legend(&mut p99_chart).map_err(|e| draw_error(&e))?;
    root.present().map_err(|e| draw_error(&e))?;
    Ok(())
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// One system's line, its points and its legend entry.
fn plot_system<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    points: &[(f64, f64)],
    color: RGBAColor,
    label: &str,
) -> DrawResult<DB>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .draw_series(LineSeries::new(points.to_vec(), color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    Ok(())
}

fn legend<'a, DB, X, Y>(chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>) -> DrawResult<DB>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}
