//! The human-readable table: one column per system, one row per measurement.

use std::fmt::Write as _;

use crate::run::{FanoutResult, IdleResult, Percentiles, Report};

/// Renders the whole report as text tables.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let machine = &report.machine;
    let p = &report.parameters;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "machine: {} CPUs, {}, {} MiB RAM, Linux {}",
        machine.cpus,
        machine.cpu_model,
        machine.memory_total_kib / 1024,
        machine.kernel
    );
    if !report.fanout.is_empty() {
        let _ = writeln!(
            out,
            "\nFan-out: {} subscribers × {} events/s × {} s, {:?} ticks, ~{} B payloads",
            p.subscribers, p.rate, p.duration_s, p.mode, p.payload_bytes
        );
        out.push_str(&fanout_table(&report.fanout));
    }
    if !report.idle.is_empty() {
        let _ = writeln!(
            out,
            "\nIdle: {} subscriptions, no events",
            p.idle_subscriptions
        );
        out.push_str(&idle_table(&report.idle));
    }
    let notes = report
        .fanout
        .iter()
        .map(|r| {
            let name = format!("fan-out / {}", r.system);
            (name, &r.problems, &r.gateway_warning_samples)
        })
        .chain(report.idle.iter().map(|r| {
            let name = format!("idle / {}", r.system);
            (name, &r.problems, &r.gateway_warning_samples)
        }));
    for (name, problems, samples) in notes {
        for problem in problems {
            let _ = writeln!(out, "! {name}: {problem}");
        }
        for sample in samples {
            let _ = writeln!(out, "  {name} logged: {sample}");
        }
    }
    out
}

/// A row of a table: its label and how to get its value from one system's result.
type Row<T> = (&'static str, Box<dyn Fn(&T) -> String>);

fn fanout_table(results: &[FanoutResult]) -> String {
    let latency = |pick: fn(&Percentiles) -> f64| {
        move |r: &FanoutResult| {
            r.latency_us
                .as_ref()
                .map_or("-".into(), |l| format!("{:.0}", pick(l)))
        }
    };
    let rows: Vec<Row<FanoutResult>> = vec![
        (
            "upstream connections",
            Box::new(|r| r.upstream_connections.to_string()),
        ),
        (
            "upstream subscriptions",
            Box::new(|r| r.upstream_subscriptions.to_string()),
        ),
        (
            "events expected by clients",
            Box::new(|r| r.events_expected.to_string()),
        ),
        (
            "events sent by upstream",
            Box::new(|r| r.events_sent.to_string()),
        ),
        (
            "events delivered",
            Box::new(|r| r.events_delivered.to_string()),
        ),
        (
            "delivered events/s",
            Box::new(|r| format!("{:.0}", r.delivered_per_s)),
        ),
        ("latency p50 (µs)", Box::new(latency(|l| l.p50))),
        ("latency p90 (µs)", Box::new(latency(|l| l.p90))),
        ("latency p99 (µs)", Box::new(latency(|l| l.p99))),
        ("latency p99.9 (µs)", Box::new(latency(|l| l.p999))),
        ("latency max (µs)", Box::new(latency(|l| l.max))),
        (
            "gateway CPU (s)",
            Box::new(|r| optional(r.gateway_cpu_s, 2)),
        ),
        (
            "gateway CPU (% of a core)",
            Box::new(|r| optional(r.gateway_cpu_percent, 0)),
        ),
        (
            "gateway CPU s per 1M events",
            Box::new(|r| {
                r.gateway_cpu_s_per_million_events
                    .map_or("-".into(), |v| format!("{v:.2}"))
            }),
        ),
        (
            "gateway RSS at end (MiB)",
            Box::new(|r| r.gateway_memory.map_or("-".into(), |m| mib(m.rss_kib))),
        ),
        (
            "gateway peak RSS (MiB)",
            Box::new(|r| r.gateway_memory.map_or("-".into(), |m| mib(m.peak_kib))),
        ),
        (
            "emitter CPU (s)",
            Box::new(|r| format!("{:.2}", r.emitter_cpu_s)),
        ),
        (
            "load generator CPU (s)",
            Box::new(|r| format!("{:.2}", r.harness_cpu_s)),
        ),
        (
            "slow-consumer cut-offs",
            Box::new(|r| r.clients.slow_consumer_cutoffs.to_string()),
        ),
        (
            "missing / out of order",
            Box::new(|r| format!("{} / {}", r.clients.missing, r.clients.out_of_order)),
        ),
        (
            "gateway WARN/ERROR log lines",
            Box::new(|r| r.gateway_warnings.to_string()),
        ),
        ("checks", Box::new(|r| verdict(&r.problems))),
    ];
    render(
        results.iter().map(|r| r.system.to_string()).collect(),
        rows.iter()
            .map(|(label, value)| (*label, results.iter().map(value).collect()))
            .collect(),
    )
}

fn idle_table(results: &[IdleResult]) -> String {
    let rows: Vec<Row<IdleResult>> = vec![
        (
            "upstream connections",
            Box::new(|r| r.upstream_connections.to_string()),
        ),
        (
            "upstream subscriptions",
            Box::new(|r| r.upstream_subscriptions.to_string()),
        ),
        (
            "gateway RSS before (MiB)",
            Box::new(|r| mib(r.memory_before.rss_kib)),
        ),
        (
            "gateway RSS after (MiB)",
            Box::new(|r| mib(r.memory_after.rss_kib)),
        ),
        (
            "RSS per subscription (KiB)",
            Box::new(|r| format!("{:.1}", r.rss_per_subscription_kib)),
        ),
        (
            "gateway WARN/ERROR log lines",
            Box::new(|r| r.gateway_warnings.to_string()),
        ),
        ("checks", Box::new(|r| verdict(&r.problems))),
    ];
    render(
        results.iter().map(|r| r.system.to_string()).collect(),
        rows.iter()
            .map(|(label, value)| (*label, results.iter().map(value).collect()))
            .collect(),
    )
}

/// A figure with `decimals` decimals, `-` when there is none.
fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn verdict(problems: &[String]) -> String {
    if problems.is_empty() {
        "ok".into()
    } else {
        format!("{} problem(s), see below", problems.len())
    }
}

/// Left-aligned labels, right-aligned values.
fn render(columns: Vec<String>, rows: Vec<(&str, Vec<String>)>) -> String {
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
