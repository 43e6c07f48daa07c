//! The saturation scenario's rules: when a rate step passes, which rate to try next, and
//! what a system's steps add up to. No I/O: [`crate::run`] measures each step (a fan-out
//! measurement at that rate) and hands the results here.
//!
//! A step passes when every event reached every client in order, the p99 latency stayed
//! under [`P99_LIMIT_MS`] and every other check of the measurement passed. The rates are
//! tried in ascending order and stepping stops at the first step that fails: higher rates
//! would only fail again, slowly. A system's saturation throughput is the highest
//! delivered events/s of a passing step.
//!
//! Main types: [`Saturation`] (a system's [`Step`]s, one rate each, and their
//! [`Verdict`], made by [`verdict`]) and [`Failure`] (why a step failed); [`next_rate`]
//! is the stop rule.

use serde::Serialize;

use crate::run::{Figures, Outcome};

/// A step fails when its p99 latency is at or above this, in ms.
pub const P99_LIMIT_MS: f64 = 100.0;

/// One rate step: events per second per subscription, and what its measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub rate: u64,
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
    /// The first step that failed (where the system broke); `None` when every rate
    /// passed, so the saturation point lies above the highest rate tried.
    pub first_failure: Option<FailedStep>,
}

/// Why the step failed; empty when it passed.
pub fn judge(outcome: &Outcome) -> Vec<Failure> {
    let figures = match outcome {
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
        delivered_per_s: figures.and_then(|f| f.delivered_per_s),
        events_delivered: figures.map_or(0, |f| f.events_delivered),
        events_expected: figures.map_or(0, |f| f.events_expected),
        p99_ms: figures.and_then(p99_ms),
    }
}

/// The verdict over the steps run so far, in the order they ran.
pub fn verdict(steps: &[Step]) -> Verdict {
    let mut saturation: Option<StepFigures> = None;
    let mut first_failure = None;
    for step in steps {
        let failures = judge(&step.outcome);
        let figures = step_figures(step);
        if !failures.is_empty() {
            first_failure = Some(FailedStep {
                step: figures,
                failures,
            });
            break;
        }
        let higher = match (&saturation, figures.delivered_per_s) {
            (None, _) => true,
            (Some(best), Some(rate)) => best.delivered_per_s.is_none_or(|best| rate > best),
            (Some(_), None) => false,
        };
        if higher {
            saturation = Some(figures);
        }
    }
    Verdict {
        saturation,
        first_failure,
    }
}

/// The rates to try, ascending, each once, without 0.
pub fn ascending(rates: &[u64]) -> Vec<u64> {
    let mut rates: Vec<u64> = rates.iter().copied().filter(|&rate| rate > 0).collect();
    rates.sort_unstable();
    rates.dedup();
    rates
}

/// The stop rule: the next rate of `rates` (ascending, see [`ascending`]) to measure
/// after `steps`, or `None` once a step failed or every rate was measured.
pub fn next_rate(rates: &[u64], steps: &[Step]) -> Option<u64> {
    if steps.iter().any(|step| !judge(&step.outcome).is_empty()) {
        return None;
    }
    match steps.last() {
        None => rates.first().copied(),
        Some(last) => rates.iter().copied().find(|&rate| rate > last.rate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Percentiles;

    /// A measured step at `rate` over 1,000 clients for 5 s: `delivered` of the expected
    /// events at `delivered_per_s`, with that p99, and these check problems.
    fn step(rate: u64, delivered_share: f64, p99_ms: f64, problems: &[&str]) -> Step {
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
            outcome: Outcome::Measured(Box::new(figures)),
        }
    }

    fn passing(rate: u64) -> Step {
        step(rate, 1.0, 20.0, &[])
    }

    #[test]
    fn a_step_passes_only_with_every_event_and_p99_under_the_limit() {
        assert_eq!(judge(&passing(100).outcome), vec![]);
        assert_eq!(
            judge(&step(100, 1.0, 100.0, &[]).outcome),
            vec![Failure::Latency { p99_ms: 100.0 }]
        );
        assert_eq!(judge(&step(100, 1.0, 99.9, &[]).outcome), vec![]);
        // Undelivered events always come with the measurement's own problem text.
        let lost = "5 events missing from client sequences";
        assert_eq!(
            judge(&step(100, 0.9, 20.0, &[lost]).outcome),
            vec![Failure::Check(lost.into())]
        );
        // Without it, the shortfall still fails the step.
        assert_eq!(
            judge(&step(100, 0.5, 20.0, &[]).outcome),
            vec![Failure::Check("250000 of 500000 events delivered".into())]
        );
        let reordered = "3 events out of order or duplicated";
        assert_eq!(
            judge(&step(100, 1.0, 150.0, &[reordered]).outcome),
            vec![
                Failure::Latency { p99_ms: 150.0 },
                Failure::Check(reordered.into())
            ]
        );
        let failed = Outcome::Failed("800 of 1000 clients could not subscribe".into());
        assert_eq!(
            judge(&failed),
            vec![Failure::NotMeasured(
                "800 of 1000 clients could not subscribe".into()
            )]
        );
    }

    #[test]
    fn no_events_is_a_failure_not_a_zero_latency() {
        let mut silent = step(10, 0.0, 1.0, &[]);
        if let Outcome::Measured(figures) = &mut silent.outcome {
            figures.latency_us = None;
        }
        assert_eq!(judge(&silent.outcome)[0], Failure::NoEvents);
    }

    #[test]
    fn stepping_goes_up_until_the_first_failure() {
        let rates = ascending(&[400, 10, 50, 50, 0, 100]);
        assert_eq!(rates, vec![10, 50, 100, 400]);
        assert_eq!(next_rate(&rates, &[]), Some(10));
        assert_eq!(next_rate(&rates, &[passing(10)]), Some(50));
        assert_eq!(next_rate(&rates, &[passing(10), passing(50)]), Some(100));
        let broke = [passing(10), step(50, 1.0, 250.0, &[])];
        assert_eq!(next_rate(&rates, &broke), None);
        let all = [passing(10), passing(50), passing(100), passing(400)];
        assert_eq!(next_rate(&rates, &all), None);
        assert_eq!(next_rate(&[], &[]), None);
    }

    #[test]
    fn the_verdict_is_the_best_passing_step_and_the_first_failure() {
        let lost = "120 of 1000000 events never reached a client";
        let steps = [passing(10), passing(50), step(100, 0.99, 180.0, &[lost])];
        let verdict = verdict(&steps);
        let saturation = verdict.saturation.expect("two steps passed");
        assert_eq!(saturation.rate, 50);
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
        if let Outcome::Measured(figures) = &mut dip.outcome {
            figures.delivered_per_s = Some(40_000.0);
        }
        let verdict = verdict(&[passing(10), passing(50), dip]);
        assert_eq!(verdict.saturation.map(|s| s.rate), Some(50));
        assert_eq!(verdict.first_failure, None);
    }

    #[test]
    fn a_first_step_that_fails_leaves_no_saturation() {
        let steps = [Step {
            rate: 10,
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
