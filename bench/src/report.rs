//! The report: per scenario variant, one column per system and one row per figure, as
//! text for the terminal and as Markdown for docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::run::{thousands, Figures, Measurement, Outcome, Report, Scenario};
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
            variant_table(variant, &group, report)
        })
        .collect()
}

type Cell = fn(&Figures, Option<&Figures>) -> String;

fn variant_table(title: &str, group: &[&Measurement], report: &Report) -> Table {
    let scenario = group[0].scenario;
    let subplex = group
        .iter()
        .find(|m| m.system == SystemKind::Subplex)
        .and_then(|m| m.figures());
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
        Scenario::Idle => title.to_owned(),
    };
    let event_rows: Vec<(&'static str, Cell)> = vec![
        ("delivered events/s", |f, _| opt(f.delivered_per_s, 0)),
        ("events delivered / expected", |f, _| {
            format!(
                "{} / {}",
                thousands(f.events_delivered),
                thousands(f.events_expected)
            )
        }),
        ("latency p50 / p99 / p99.9 (ms)", |f, _| {
            f.latency_us.as_ref().map_or("-".into(), |l| {
                format!("{} / {} / {}", ms(l.p50), ms(l.p99), ms(l.p999))
            })
        }),
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
    let storm_rows: Vec<(&'static str, Cell)> = vec![
        ("connects+subscribes/s", |f, _| opt(f.connects_per_s, 0)),
        ("all attached after (s)", |f, _| opt(f.attach_s, 2)),
        ("gateway CPU (s)", |f, _| opt(f.gateway_cpu_s, 2)),
    ];
    let common_rows: Vec<(&'static str, Cell)> = vec![
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
    let mut chosen: Vec<(&'static str, Cell)> = Vec::new();
    match scenario {
        Scenario::Fanout | Scenario::Distinct | Scenario::Contexts => chosen.extend(event_rows),
        Scenario::Storm => chosen.extend(storm_rows),
        Scenario::Idle => {}
    }
    chosen.extend(common_rows);
    let rows = chosen
        .into_iter()
        .map(|(label, cell)| {
            let values = group
                .iter()
                .map(|m| match &m.outcome {
                    Outcome::Measured(figures) => cell(figures, subplex),
                    Outcome::NotApplicable(_) => "n/a".into(),
                    Outcome::Failed(_) => "failed".into(),
                })
                .collect();
            (label, values)
        })
        .collect();
    let mut notes = Vec::new();
    for m in group {
        match &m.outcome {
            Outcome::Measured(figures) => {
                for problem in &figures.problems {
                    notes.push(format!("{}: {problem}", m.system));
                }
                for sample in &figures.gateway_warning_samples {
                    notes.push(format!("{} logged: {sample}", m.system));
                }
            }
            Outcome::NotApplicable(reason) => notes.push(format!("{}: n/a: {reason}", m.system)),
            Outcome::Failed(reason) => notes.push(format!("{}: failed: {reason}", m.system)),
        }
    }
    Table {
        title,
        columns: group.iter().map(|m| m.system.to_string()).collect(),
        rows,
        notes,
    }
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
