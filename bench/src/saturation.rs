//! The saturation scenario's rules: when a rate step passes, which rate to try next, and
//! what a system's steps add up to. No I/O: [`crate::run`] measures each step (a fan-out
//! measurement at that rate) and hands the results here.
//!
//! A step passes when every event reached every client in order, at no less than
//! [`PACE_SHARE`] of the offered events/s (a source that falls behind its schedule stamps
//! its events late, so latency alone would not show it), the p99 latency stayed under
//! [`P99_LIMIT_MS`] and every other check of the measurement passed. The rates are
//! tried in ascending order. A step that fails is measured again, up to `attempts` times
//! in all, because on a shared machine one burst of other work can push a p99 over the
//! limit; a rate passes when one of its attempts passes. Stepping stops at the first rate
//! whose every attempt failed: higher rates would only fail again, slowly. A system's
//! saturation throughput is the highest delivered events/s of a passing step.
//!
//! Main types: [`Saturation`] (a system's [`Step`]s, one per attempt at a rate, and their
//! [`Verdict`], made by [`verdict`]) and [`Failure`] (why a step failed); [`next_rate`]
//! is the stop rule.

use serde::Serialize;

use crate::run::{thousands, Figures, Outcome};

/// A step fails when its p99 latency is at or above this, in ms.
pub const P99_LIMIT_MS: f64 = 100.0;

/// A step fails when the clients received fewer events/s than this share of the offered
/// rate (clients × rate per subscription). The delivered rate is measured from the start
/// of the ticks to the last delivery, so a system that keeps up loses only its last
/// event's latency over the step: under 2% at 100 ms over 5 s.
pub const PACE_SHARE: f64 = 0.95;

/// One rate step: events per second per subscription, and what its measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub rate: u64,
    /// Events/s all clients together should receive: clients × `rate`.
    pub offered_per_s: f64,
    /// [`Outcome::Measured`] or [`Outcome::Failed`].
    pub outcome: Outcome,
}

/// A system's saturation measurement: the steps in the order they ran, and their verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    pub steps: Vec<Step>,
    pub verdict: Verdict,
}

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Failure {
    /// p99 latency at or above [`P99_LIMIT_MS`].
    Latency { p99_ms: f64 },
    /// The clients received less than [`PACE_SHARE`] of the offered events/s.
    BehindPace {
        delivered_per_s: f64,
        offered_per_s: f64,
    },
    /// Not one measured event arrived, so there is no latency to judge.
    NoEvents,
    /// A check of the measurement failed (events not delivered, lost or out of order,
    /// clients cut off or disconnected, …): its text.
    Check(String),
    /// The step could not be measured: why.
    NotMeasured(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Latency { p99_ms } => {
                write!(f, "p99 {p99_ms:.1} ms, not under {P99_LIMIT_MS:.0} ms")
            }
            Failure::BehindPace {
                delivered_per_s,
                offered_per_s,
            } => write!(
                f,
                "{} events/s delivered, {:.0}% of the {} offered",
                thousands(delivered_per_s.round() as u64),
                delivered_per_s * 100.0 / offered_per_s,
                thousands(offered_per_s.round() as u64)
            ),
            Failure::NoEvents => f.write_str("no event arrived"),
            Failure::Check(problem) => f.write_str(problem),
            Failure::NotMeasured(reason) => write!(f, "not measured: {reason}"),
        }
    }
}

/// What one step showed, for the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepFigures {
    /// Events per second per subscription.
    pub rate: u64,
    pub offered_per_s: f64,
    /// Events all clients received per second; `None` if none arrived or not measured.
    pub delivered_per_s: Option<f64>,
    pub events_delivered: u64,
    pub events_expected: u64,
    pub p99_ms: Option<f64>,
}

/// The first step that failed, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedStep {
    #[serde(flatten)]
    pub step: StepFigures,
    /// Never empty.
    pub failures: Vec<Failure>,
}

/// What a system's steps add up to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// The passing step with the highest delivered events/s: the saturation throughput.
    /// `None` when the lowest rate already failed.
    pub saturation: Option<StepFigures>,
    /// The last attempt at the first rate whose every attempt failed (where the system
    /// broke); `None` when every rate passed, so the saturation point lies above the
    /// highest rate tried.
    pub first_failure: Option<FailedStep>,
    /// Rates measured more than once because an attempt failed.
    pub repeated: Vec<u64>,
}

/// Why the step failed; empty when it passed.
pub fn judge(step: &Step) -> Vec<Failure> {
    let figures = match &step.outcome {
        Outcome::Measured(figures) => figures,
        Outcome::Failed(reason) | Outcome::NotApplicable(reason) => {
            return vec![Failure::NotMeasured(reason.clone())]
        }
        Outcome::Saturation(_) => {
            return vec![Failure::NotMeasured("a saturation inside a step".into())]
        }
    };
    let mut failures = Vec::new();
    match p99_ms(figures) {
        Some(p99_ms) if p99_ms >= P99_LIMIT_MS => failures.push(Failure::Latency { p99_ms }),
        Some(_) => {}
        None => failures.push(Failure::NoEvents),
    }
    match figures.delivered_per_s {
        Some(delivered_per_s) if delivered_per_s < PACE_SHARE * step.offered_per_s => {
            failures.push(Failure::BehindPace {
                delivered_per_s,
                offered_per_s: step.offered_per_s,
            });
        }
        _ => {}
    }
    failures.extend(figures.problems.iter().cloned().map(Failure::Check));
    // The measurement's own checks report undelivered events; this holds even if a
    // figure arrived without them.
    if failures.is_empty() && figures.events_delivered < figures.events_expected {
        failures.push(Failure::Check(format!(
            "{} of {} events delivered",
            figures.events_delivered, figures.events_expected
        )));
    }
    failures
}

fn p99_ms(figures: &Figures) -> Option<f64> {
    figures.latency_us.as_ref().map(|latency| latency.p99 / 1e3)
}

fn step_figures(step: &Step) -> StepFigures {
    let figures = match &step.outcome {
        Outcome::Measured(figures) => Some(&**figures),
        _ => None,
    };
    StepFigures {
        rate: step.rate,
        offered_per_s: step.offered_per_s,
        delivered_per_s: figures.and_then(|f| f.delivered_per_s),
        events_delivered: figures.map_or(0, |f| f.events_delivered),
        events_expected: figures.map_or(0, |f| f.events_expected),
        p99_ms: figures.and_then(p99_ms),
    }
}

/// The verdict over the steps run so far, in the order they ran (the attempts at one
/// rate next to each other).
pub fn verdict(steps: &[Step]) -> Verdict {
    let mut saturation: Option<StepFigures> = None;
    let mut first_failure = None;
    let mut repeated = Vec::new();
    for attempts in steps.chunk_by(|a, b| a.rate == b.rate) {
        if attempts.len() > 1 {
            repeated.push(attempts[0].rate);
        }
        let mut passed = false;
        for step in attempts.iter().filter(|step| judge(step).is_empty()) {
            passed = true;
            let figures = step_figures(step);
            let higher = match (&saturation, figures.delivered_per_s) {
                (None, _) => true,
                (Some(best), Some(rate)) => best.delivered_per_s.is_none_or(|best| rate > best),
                (Some(_), None) => false,
            };
            if higher {
                saturation = Some(figures);
            }
        }
        if !passed {
            // Chunks are never empty.
            let last = &attempts[attempts.len() - 1];
            first_failure = Some(FailedStep {
                step: step_figures(last),
                failures: judge(last),
            });
            break;
        }
    }
    Verdict {
        saturation,
        first_failure,
        repeated,
    }
}

/// The rates to try, ascending, each once, without 0.
pub fn ascending(rates: &[u64]) -> Vec<u64> {
    let mut rates: Vec<u64> = rates.iter().copied().filter(|&rate| rate > 0).collect();
    rates.sort_unstable();
    rates.dedup();
    rates
}

/// The stop rule: the rate to measure after `steps`, or `None` when done. After a
/// passing step, the next of `rates` (ascending, see [`ascending`]); after a failing one,
/// the same rate again until it has failed `attempts` times in a row; then `None`, as
/// after the last rate.
pub fn next_rate(rates: &[u64], attempts: usize, steps: &[Step]) -> Option<u64> {
    let Some(last) = steps.last() else {
        return rates.first().copied();
    };
    if judge(last).is_empty() {
        return rates.iter().copied().find(|&rate| rate > last.rate);
    }
    let failed_in_a_row = steps
        .iter()
        .rev()
        .take_while(|step| step.rate == last.rate)
        .count();
    (failed_in_a_row < attempts).then_some(last.rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Percentiles;

    /// A measured step at `rate` over 1,000 clients for 5 s: `delivered_share` of the
    /// expected events arrived, at that share of the offered events/s, with that p99 and
    /// these check problems.
    fn step(rate: u64, delivered_share: f64, p99_ms: f64, problems: &[&str]) -> Step {
        let offered_per_s = 1000.0 * rate as f64;
        let expected = 1000 * rate * 5;
        let delivered = (expected as f64 * delivered_share) as u64;
        let figures = Figures {
            events_expected: expected,
            events_delivered: delivered,
            delivered_per_s: Some(delivered as f64 / 5.0),
            latency_us: Some(Percentiles {
                p50: p99_ms * 500.0,
                p90: p99_ms * 900.0,
                p99: p99_ms * 1e3,
                p999: p99_ms * 1e3,
                max: p99_ms * 1e3,
                mean: p99_ms * 500.0,
            }),
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
            ..Figures::default()
        };
        Step {
            rate,
            offered_per_s,
            outcome: Outcome::Measured(Box::new(figures)),
        }
    }

    fn passing(rate: u64) -> Step {
        step(rate, 1.0, 20.0, &[])
    }

    fn figures_mut(step: &mut Step) -> &mut Figures {
        match &mut step.outcome {
            Outcome::Measured(figures) => figures,
            _ => unreachable!("the test steps are measured"),
        }
    }

    #[test]
    fn a_step_passes_only_with_every_event_and_p99_under_the_limit() {
        assert_eq!(judge(&passing(100)), vec![]);
        assert_eq!(
            judge(&step(100, 1.0, 100.0, &[])),
            vec![Failure::Latency { p99_ms: 100.0 }]
        );
        assert_eq!(judge(&step(100, 1.0, 99.9, &[])), vec![]);
        // Undelivered events come with the measurement's own problem text.
        let lost = "5 events missing from client sequences";
        assert_eq!(
            judge(&step(100, 0.99, 20.0, &[lost])),
            vec![Failure::Check(lost.into())]
        );
        let reordered = "3 events out of order or duplicated";
        assert_eq!(
            judge(&step(100, 1.0, 150.0, &[reordered])),
            vec![
                Failure::Latency { p99_ms: 150.0 },
                Failure::Check(reordered.into())
            ]
        );
        // Without the problem text, a shortfall still fails the step.
        let mut short = passing(100);
        figures_mut(&mut short).events_delivered -= 1;
        assert_eq!(
            judge(&short),
            vec![Failure::Check("499999 of 500000 events delivered".into())]
        );
        let failed = Step {
            rate: 100,
            offered_per_s: 100_000.0,
            outcome: Outcome::Failed("800 of 1000 clients could not subscribe".into()),
        };
        assert_eq!(
            judge(&failed),
            vec![Failure::NotMeasured(
                "800 of 1000 clients could not subscribe".into()
            )]
        );
    }

    #[test]
    fn a_step_that_falls_behind_the_offered_rate_fails_even_with_every_event() {
        // The source fell behind its schedule: every event arrived, in order and with a
        // low latency from its (late) stamp, but over a longer time.
        let mut behind = passing(600);
        figures_mut(&mut behind).delivered_per_s = Some(414_000.0);
        assert_eq!(
            judge(&behind),
            vec![Failure::BehindPace {
                delivered_per_s: 414_000.0,
                offered_per_s: 600_000.0
            }]
        );
        // The last event's latency over the step is within the margin.
        let mut on_pace = passing(600);
        figures_mut(&mut on_pace).delivered_per_s = Some(0.96 * 600_000.0);
        assert_eq!(judge(&on_pace), vec![]);
        // Half the events lost: behind the pace too.
        let lost = "1500000 of 3000000 events never reached a client";
        assert_eq!(
            judge(&step(600, 0.5, 20.0, &[lost])),
            vec![
                Failure::BehindPace {
                    delivered_per_s: 300_000.0,
                    offered_per_s: 600_000.0
                },
                Failure::Check(lost.into())
            ]
        );
    }

    #[test]
    fn failures_read_as_sentences() {
        let behind = Failure::BehindPace {
            delivered_per_s: 391_763.4,
            offered_per_s: 500_000.0,
        };
        assert_eq!(
            behind.to_string(),
            "391,763 events/s delivered, 78% of the 500,000 offered"
        );
        assert_eq!(
            Failure::Latency { p99_ms: 103.35 }.to_string(),
            "p99 103.3 ms, not under 100 ms"
        );
    }

    #[test]
    fn no_events_is_a_failure_not_a_zero_latency() {
        let mut silent = step(10, 0.0, 1.0, &[]);
        let figures = figures_mut(&mut silent);
        figures.latency_us = None;
        figures.delivered_per_s = None;
        assert_eq!(judge(&silent), vec![Failure::NoEvents]);
    }

    fn slow(rate: u64) -> Step {
        step(rate, 1.0, 250.0, &[])
    }

    #[test]
    fn stepping_goes_up_until_a_rate_fails_every_attempt() {
        let rates = ascending(&[400, 10, 50, 50, 0, 100]);
        assert_eq!(rates, vec![10, 50, 100, 400]);
        assert_eq!(next_rate(&rates, 2, &[]), Some(10));
        assert_eq!(next_rate(&rates, 2, &[passing(10)]), Some(50));
        assert_eq!(next_rate(&rates, 2, &[passing(10), passing(50)]), Some(100));
        // A failure is measured again, and stops the stepping when it repeats.
        assert_eq!(next_rate(&rates, 2, &[passing(10), slow(50)]), Some(50));
        assert_eq!(
            next_rate(&rates, 2, &[passing(10), slow(50), slow(50)]),
            None
        );
        assert_eq!(
            next_rate(&rates, 2, &[passing(10), slow(50), passing(50)]),
            Some(100)
        );
        // Each rate gets its own attempts.
        let flaky = [passing(10), slow(50), passing(50), slow(100)];
        assert_eq!(next_rate(&rates, 2, &flaky), Some(100));
        // One attempt: the first failure stops.
        assert_eq!(next_rate(&rates, 1, &[passing(10), slow(50)]), None);
        let all = [passing(10), passing(50), passing(100), passing(400)];
        assert_eq!(next_rate(&rates, 2, &all), None);
        assert_eq!(next_rate(&[], 2, &[]), None);
    }

    #[test]
    fn a_rate_that_passes_on_a_second_attempt_passes() {
        let verdict = verdict(&[passing(10), slow(50), passing(50), slow(100), slow(100)]);
        assert_eq!(verdict.saturation.map(|s| s.rate), Some(50));
        let failure = verdict.first_failure.expect("100 failed twice");
        assert_eq!(failure.step.rate, 100);
        assert_eq!(failure.failures, vec![Failure::Latency { p99_ms: 250.0 }]);
        assert_eq!(verdict.repeated, vec![50, 100]);
    }

    #[test]
    fn the_verdict_is_the_best_passing_step_and_the_first_failure() {
        let lost = "120 of 1000000 events never reached a client";
        let steps = [passing(10), passing(50), step(100, 0.99, 180.0, &[lost])];
        let verdict = verdict(&steps);
        assert_eq!(verdict.repeated, Vec::<u64>::new());
        let saturation = verdict.saturation.expect("two steps passed");
        assert_eq!(saturation.rate, 50);
        assert_eq!(saturation.offered_per_s, 50_000.0);
        assert_eq!(saturation.delivered_per_s, Some(50_000.0));
        assert_eq!(saturation.p99_ms, Some(20.0));
        let failure = verdict.first_failure.expect("the third step failed");
        assert_eq!(failure.step.rate, 100);
        assert_eq!(failure.step.delivered_per_s, Some(99_000.0));
        assert_eq!(failure.step.p99_ms, Some(180.0));
        assert_eq!(
            failure.failures,
            vec![
                Failure::Latency { p99_ms: 180.0 },
                Failure::Check(lost.into())
            ]
        );
    }

    #[test]
    fn the_saturation_is_the_highest_delivered_rate_not_the_last_step() {
        // Delivered events/s can dip at a higher rate (a noisy step) and still pass.
        let mut dip = passing(100);
        figures_mut(&mut dip).delivered_per_s = Some(96_000.0);
        let mut best = passing(50);
        figures_mut(&mut best).delivered_per_s = Some(99_000.0);
        let verdict = verdict(&[passing(10), best, dip]);
        assert_eq!(verdict.saturation.map(|s| s.rate), Some(50));
        assert_eq!(verdict.first_failure, None);
    }

    #[test]
    fn a_first_step_that_fails_leaves_no_saturation() {
        let steps = [Step {
            rate: 10,
            offered_per_s: 10_000.0,
            outcome: Outcome::Failed("gateway did not start".into()),
        }];
        let verdict = verdict(&steps);
        assert_eq!(verdict.saturation, None);
        let failure = verdict.first_failure.expect("failed");
        assert_eq!(failure.step.rate, 10);
        assert_eq!(failure.step.delivered_per_s, None);
        assert_eq!(
            failure.failures,
            vec![Failure::NotMeasured("gateway did not start".into())]
        );
    }
}
