//! The report: per scenario variant, one column per system and one row per figure, as
//! text for the terminal and as Markdown for docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::run::{thousands, Figures, Measurement, Outcome, Report, Scenario};
use crate::saturation::{Saturation, StepFigures};
use crate::systems::SystemKind;

/// The markers between which `--write-markdown` replaces a file's text.
const START_MARKER: &str = "<!-- bench:results:start -->";
const END_MARKER: &str = "<!-- bench:results:end -->";

/// One table: the variant's name, the system columns, and labelled rows of cells.
struct Table {
    title: String,
    columns: Vec<String>,
    rows: Vec<(&'static str, Vec<String>)>,
    notes: Vec<String>,
}

/// Groups measurements by variant (in run order) and builds a table for each.
fn tables(report: &Report) -> Vec<Table> {
    let mut variants: Vec<String> = Vec::new();
    for m in &report.measurements {
        if !variants.contains(&m.variant()) {
            variants.push(m.variant());
        }
    }
    variants
        .iter()
        .map(|variant| {
            let group: Vec<&Measurement> = report
                .measurements
                .iter()
                .filter(|m| m.variant() == *variant)
                .collect();
            if group[0].scenario == Scenario::Saturation {
                saturation_table(variant, &group, report)
            } else {
                variant_table(variant, &group, report)
            }
        })
        .collect()
}

/// A cell: from a system's figures, and subplex's for ratios.
type Cell<T> = fn(&T, Option<&T>) -> String;

fn variant_table(title: &str, group: &[&Measurement], report: &Report) -> Table {
    let scenario = group[0].scenario;
    let p = &report.parameters;
    let title = match scenario {
        Scenario::Fanout | Scenario::Distinct | Scenario::Contexts => format!(
            "{title}: {} events/s per subscription for {} s, {:?} ticks, ~{} B payloads{}",
            p.rate,
            p.duration_s,
            p.mode,
            p.payload_bytes,
            if scenario == Scenario::Contexts {
                format!(", {} security contexts", p.contexts)
            } else {
                String::new()
            }
        ),
        Scenario::Storm => format!("{title}, {} handshakes in flight", p.storm_concurrency),
        // Saturation has a table of its own.
        Scenario::Idle | Scenario::Saturation => title.to_owned(),
    };
    let event_rows: Vec<(&'static str, Cell<Figures>)> = vec![
        ("delivered events/s", |f, _| opt(f.delivered_per_s, 0)),
        ("events delivered / expected", |f, _| {
            format!(
                "{} / {}",
                thousands(f.events_delivered),
                thousands(f.events_expected)
            )
        }),
        ("latency p50 / p99 / p99.9 (ms)", |f, _| latencies(f)),
        ("gateway CPU-s per 1M events", |f, _| {
            opt(f.gateway_cpu_s_per_million_events, 1)
        }),
        ("CPU per event, × subplex", |f, subplex| {
            ratio(
                f.gateway_cpu_s_per_million_events,
                subplex.and_then(|s| s.gateway_cpu_s_per_million_events),
            )
        }),
        ("emitter CPU (s)", |f, _| format!("{:.2}", f.emitter_cpu_s)),
    ];
    let storm_rows: Vec<(&'static str, Cell<Figures>)> = vec![
        ("connects+subscribes/s", |f, _| opt(f.connects_per_s, 0)),
        ("all attached after (s)", |f, _| opt(f.attach_s, 2)),
        ("gateway CPU (s)", |f, _| opt(f.gateway_cpu_s, 2)),
    ];
    let common_rows: Vec<(&'static str, Cell<Figures>)> = vec![
        ("upstream sockets / subscriptions", |f, _| {
            format!("{} / {}", f.upstream_sockets, f.upstream_subscriptions)
        }),
        ("gateway RSS before → after (MiB)", |f, _| {
            match (f.memory_before, f.memory_after) {
                (Some(before), Some(after)) => {
                    format!("{} → {}", mib(before.rss_kib), mib(after.rss_kib))
                }
                _ => "-".into(),
            }
        }),
        ("gateway peak RSS (MiB)", |f, _| {
            f.memory_after.map_or("-".into(), |m| mib(m.peak_kib))
        }),
        ("RSS per subscriber (KiB)", |f, _| {
            opt(f.rss_per_subscriber_kib, 1)
        }),
        ("lost / out of order", |f, _| {
            f.clients.as_ref().map_or("-".into(), |c| {
                format!("{} / {}", c.missing + missing_events(f), c.out_of_order)
            })
        }),
        ("checks", |f, _| {
            if f.problems.is_empty() {
                "ok".into()
            } else {
                format!("{} problem(s)", f.problems.len())
            }
        }),
    ];
    let mut chosen: Vec<(&'static str, Cell<Figures>)> = Vec::new();
    match scenario {
        Scenario::Fanout | Scenario::Distinct | Scenario::Contexts => chosen.extend(event_rows),
        Scenario::Storm => chosen.extend(storm_rows),
        Scenario::Idle | Scenario::Saturation => {}
    }
    chosen.extend(common_rows);
    let rows = fill_rows(chosen, group, Measurement::figures);
    let mut notes = Vec::new();
    for m in group {
        match &m.outcome {
            Outcome::Measured(figures) => notes.extend(figure_notes(m, figures)),
            other => notes.extend(unmeasured_note(m, other)),
        }
    }
    Table {
        title,
        columns: group.iter().map(|m| m.system.to_string()).collect(),
        rows,
        notes,
    }
}

/// One row per cell function, one value per system of `group`: `pick` finds the figures
/// a cell reads; each cell also gets subplex's, for ratios.
fn fill_rows<T>(
    cells: Vec<(&'static str, Cell<T>)>,
    group: &[&Measurement],
    pick: fn(&Measurement) -> Option<&T>,
) -> Vec<(&'static str, Vec<String>)> {
    let subplex = group
        .iter()
        .find(|m| m.system == SystemKind::Subplex)
        .and_then(|m| pick(m));
    cells
        .into_iter()
        .map(|(label, cell)| {
            let values = group
                .iter()
                .map(|m| match pick(m) {
                    Some(figures) => cell(figures, subplex),
                    None => unmeasured_cell(&m.outcome),
                })
                .collect();
            (label, values)
        })
        .collect()
}

/// The cell of a system that has no figures of this table's kind.
fn unmeasured_cell(outcome: &Outcome) -> String {
    match outcome {
        Outcome::NotApplicable(_) => "n/a".into(),
        Outcome::Failed(_) => "failed".into(),
        Outcome::Measured(_) | Outcome::Saturation(_) => "-".into(),
    }
}

/// Why a system has no figures, as a note.
fn unmeasured_note(m: &Measurement, outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::NotApplicable(reason) => Some(format!("{}: n/a: {reason}", m.system)),
        Outcome::Failed(reason) => Some(format!("{}: failed: {reason}", m.system)),
        Outcome::Measured(_) | Outcome::Saturation(_) => None,
    }
}

/// A measurement's problems and the gateway's logged warnings, as notes.
fn figure_notes(m: &Measurement, figures: &Figures) -> Vec<String> {
    let problems = figures
        .problems
        .iter()
        .map(|problem| format!("{}: {problem}", m.system));
    let warnings = figures
        .gateway_warning_samples
        .iter()
        .map(|sample| format!("{} logged: {sample}", m.system));
    problems.chain(warnings).collect()
}

/// The saturation table: per system, the best passing step and the first failing one.
fn saturation_table(title: &str, group: &[&Measurement], report: &Report) -> Table {
    let p = &report.parameters;
    let rates = match (p.saturation_rates.first(), p.saturation_rates.last()) {
        (Some(low), Some(high)) if low != high => format!("{low} → {high}"),
        (Some(rate), _) => rate.to_string(),
        _ => "no".into(),
    };
    let title = format!(
        "{title}: {rates} events/s per subscription, {} s per step, {:?} ticks, ~{} B \
         payloads; a step passes with every event delivered in order, at {:.0}% of the offered \
         rate or more, with p99 under {} ms; a rate fails when {} attempt(s) fail",
        p.saturation_duration_s,
        p.mode,
        p.payload_bytes,
        p.saturation_pace_share * 100.0,
        p.saturation_p99_limit_ms,
        p.saturation_attempts
    );
    let highest_rate = p.saturation_rates.last().copied().unwrap_or(0);
    let rows: Vec<(&'static str, Cell<Saturation>)> = vec![
        ("saturation throughput (events/s)", |s, _| {
            best(s).map_or("none".into(), |b| opt(b.delivered_per_s, 0))
        }),
        ("saturation throughput, × subplex", |s, subplex| {
            ratio(
                best(s).and_then(|b| b.delivered_per_s),
                subplex.and_then(best).and_then(|b| b.delivered_per_s),
            )
        }),
        ("… reached at events/s per subscription", |s, _| {
            best(s).map_or("-".into(), |b| b.rate.to_string())
        }),
        ("… latency p50 / p99 / p99.9 (ms)", |s, _| {
            best_figures(s).map_or("-".into(), latencies)
        }),
        ("… gateway CPU-s per 1M events", |s, _| {
            best_figures(s).map_or("-".into(), |f| opt(f.gateway_cpu_s_per_million_events, 1))
        }),
        ("… load generator / emitter CPU (s)", |s, _| {
            best_figures(s).map_or("-".into(), |f| {
                format!("{:.1} / {:.1}", f.harness_cpu_s, f.emitter_cpu_s)
            })
        }),
        ("first failing step: events/s per subscription", |s, _| {
            s.verdict
                .first_failure
                .as_ref()
                .map_or("none".into(), |f| f.step.rate.to_string())
        }),
        ("… delivered events/s (% of offered)", |s, _| {
            s.verdict
                .first_failure
                .as_ref()
                .map_or("-".into(), |f| delivered_share(&f.step))
        }),
        ("… latency p50 / p99 / p99.9 (ms)", |s, _| {
            failed_figures(s).map_or("-".into(), latencies)
        }),
        ("steps run", |s, _| {
            let repeated = match s.verdict.repeated.as_slice() {
                [] => String::new(),
                rates => format!("; again: {}", join(rates)),
            };
            match (s.steps.first(), s.steps.last()) {
                (Some(first), Some(last)) => format!(
                    "{} ({} → {}{repeated})",
                    s.steps.len(),
                    first.rate,
                    last.rate
                ),
                _ => "0".into(),
            }
        }),
    ];
    let rows = fill_rows(rows, group, saturation_of);
    let mut notes = Vec::new();
    for m in group {
        let Outcome::Saturation(steps) = &m.outcome else {
            notes.extend(unmeasured_note(m, &m.outcome));
            continue;
        };
        match &steps.verdict.first_failure {
            Some(failed) => {
                let why = failed
                    .failures
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                notes.push(format!(
                    "{}: failed at {} events/s per subscription: {why}",
                    m.system, failed.step.rate
                ));
            }
            None => notes.push(format!(
                "{}: every rate passed, up to {highest_rate} events/s per subscription: it \
                 saturates higher",
                m.system
            )),
        }
        if let Some(figures) = failed_figures(steps) {
            for sample in &figures.gateway_warning_samples {
                notes.push(format!("{} logged: {sample}", m.system));
            }
        }
    }
    Table {
        title,
        columns: group.iter().map(|m| m.system.to_string()).collect(),
        rows,
        notes,
    }
}

fn join(rates: &[u64]) -> String {
    rates
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn saturation_of(m: &Measurement) -> Option<&Saturation> {
    match &m.outcome {
        Outcome::Saturation(steps) => Some(steps),
        _ => None,
    }
}

fn best(s: &Saturation) -> Option<&StepFigures> {
    s.verdict.saturation.as_ref()
}

/// The figures of the step at `rate`.
fn step_figures(s: &Saturation, rate: u64) -> Option<&Figures> {
    s.steps
        .iter()
        .find(|step| step.rate == rate)
        .and_then(|step| match &step.outcome {
            Outcome::Measured(figures) => Some(&**figures),
            _ => None,
        })
}

fn best_figures(s: &Saturation) -> Option<&Figures> {
    best(s).and_then(|b| step_figures(s, b.rate))
}

fn failed_figures(s: &Saturation) -> Option<&Figures> {
    let failed = s.verdict.first_failure.as_ref()?;
    step_figures(s, failed.step.rate)
}

fn latencies(figures: &Figures) -> String {
    figures.latency_us.as_ref().map_or("-".into(), |l| {
        format!("{} / {} / {}", ms(l.p50), ms(l.p99), ms(l.p999))
    })
}

/// `150,000 (75%)`: delivered events/s and their share of the offered events/s.
fn delivered_share(step: &StepFigures) -> String {
    let share = match step.delivered_per_s {
        Some(delivered) if step.offered_per_s > 0.0 => {
            format!(" ({:.0}%)", delivered * 100.0 / step.offered_per_s)
        }
        _ => String::new(),
    };
    format!("{}{share}", opt(step.delivered_per_s, 0))
}

/// Events lost between gateway and clients that the per-client sequence check cannot see:
/// a client that stopped receiving before the end has no later event to show the gap.
fn missing_events(figures: &Figures) -> u64 {
    let clients = figures.clients.as_ref();
    let counted = clients.map_or(0, |c| c.missing);
    figures
        .events_expected
        .saturating_sub(figures.events_delivered)
        .saturating_sub(counted)
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| {
        if decimals == 0 {
            thousands(v.round() as u64)
        } else {
            format!("{v:.decimals$}")
        }
    })
}

fn ms(us: f64) -> String {
    if us >= 100_000.0 {
        format!("{:.0}", us / 1e3)
    } else {
        format!("{:.1}", us / 1e3)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(value), Some(base)) if base > 0.0 => format!("{:.2}×", value / base),
        _ => "-".into(),
    }
}

/// Renders the whole report as text tables.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let machine = &report.machine;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "machine: {} CPUs, {}, {} MiB RAM, Linux {}; run took {:.0} s",
        machine.cpus,
        machine.cpu_model,
        machine.memory_total_kib / 1024,
        machine.kernel,
        report.wall_time_s
    );
    for table in tables(report) {
        let _ = writeln!(out, "\n{}", table.title);
        out.push_str(&render_text(&table.columns, &table.rows));
        for note in &table.notes {
            let _ = writeln!(out, "  ! {note}");
        }
    }
    out
}

/// Left-aligned labels, right-aligned values.
fn render_text(columns: &[String], rows: &[(&str, Vec<String>)]) -> String {
    let label_width = rows
        .iter()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            rows.iter()
                .map(|(_, values)| values[i].chars().count())
                .chain([column.chars().count()])
                .max()
                .unwrap_or(0)
                .max(10)
        })
        .collect();
    let mut out = String::new();
    let _ = write!(out, "  {:label_width$}", "");
    for (column, width) in columns.iter().zip(&widths) {
        let _ = write!(out, "  {column:>width$}");
    }
    out.push('\n');
    for (label, values) in rows {
        let pad = label_width - label.chars().count();
        let _ = write!(out, "  {label}{:pad$}", "");
        for (value, width) in values.iter().zip(&widths) {
            let _ = write!(out, "  {value:>width$}");
        }
        out.push('\n');
    }
    out
}

/// The report as Markdown: run description, then one table per variant with its notes.
pub fn markdown(report: &Report, chart: Option<&str>) -> String {
    let mut out = String::new();
    let machine = &report.machine;
    let _ = writeln!(
        out,
        "Measured {} on {} CPUs ({}), {} MiB RAM, Linux {}; open-file limit {}. The whole \
         run took {:.0} s.\n",
        report.date,
        machine.cpus,
        machine.cpu_model,
        machine.memory_total_kib / 1024,
        machine.kernel,
        thousands(report.parameters.open_file_limit),
        report.wall_time_s
    );
    let command = report
        .command
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ");
    let _ = writeln!(out, "Command: `subplex-bench {command}`\n");
    if let Some(chart) = chart {
        let _ = writeln!(
            out,
            "![Gateway CPU per delivered event and p99 latency against N]({chart})\n"
        );
    }
    for table in tables(report) {
        let _ = writeln!(out, "#### {}\n", table.title);
        let _ = writeln!(out, "| | {} |", table.columns.join(" | "));
        let _ = writeln!(
            out,
            "|---|{}",
            table.columns.iter().map(|_| "---:|").collect::<String>()
        );
        for (label, values) in &table.rows {
            let _ = writeln!(out, "| {label} | {} |", values.join(" | "));
        }
        out.push('\n');
        for note in &table.notes {
            let _ = writeln!(out, "- {}", note.replace('|', "\\|"));
        }
        if !table.notes.is_empty() {
            out.push('\n');
        }
    }
    out
}

/// Replaces the text between the result markers of `path` with the report. Paths inside
/// the repository are written relative to it: the page is committed, the checkout's
/// location is nobody's business.
pub fn write_markdown(report: &Report, path: &Path, chart: Option<&str>) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut body = markdown(report, chart);
    if let Some(root) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        body = body.replace(&format!("{}/", root.display()), "");
    }
    let updated = replace_between_markers(&text, &body).with_context(|| {
        format!(
            "{}: no `{START_MARKER}` … `{END_MARKER}` section to write the results into",
            path.display()
        )
    })?;
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

fn replace_between_markers(text: &str, body: &str) -> Option<String> {
    let start = text.find(START_MARKER)? + START_MARKER.len();
    let end = start + text[start..].find(END_MARKER)?;
    Some(format!("{}\n\n{body}{}", &text[..start], &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_between_markers() {
        let text = format!("before\n{START_MARKER}\nold\n{END_MARKER}\nafter\n");
        let updated = replace_between_markers(&text, "new\n").unwrap();
        assert_eq!(
            updated,
            format!("before\n{START_MARKER}\n\nnew\n{END_MARKER}\nafter\n")
        );
        assert_eq!(replace_between_markers("no markers", "x"), None);
    }

    #[test]
    fn ratios_and_millis() {
        assert_eq!(ratio(Some(15.0), Some(10.0)), "1.50×");
        assert_eq!(ratio(Some(15.0), None), "-");
        assert_eq!(ms(1234.0), "1.2");
        assert_eq!(ms(6_800_000.0), "6800");
    }
}
