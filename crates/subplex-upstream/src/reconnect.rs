//! When to dial again after a retryable failure: exponential backoff with jitter, and the
//! give-up window. Pure arithmetic over [`Instant`]s; the connection task sleeps.

use std::hash::BuildHasher;
use std::time::Duration;

use tokio::time::Instant;

/// `[upstreams.NAME.reconnect]`: how an upstream connection is re-established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectSettings {
    /// The first delay before dialling again.
    pub initial: Duration,
    /// The delay doubles per failed attempt up to this.
    pub max: Duration,
    /// How long an outage may last before operations fail; zero fails them at once.
    pub give_up_after: Duration,
}

impl Default for ReconnectSettings {
    fn default() -> Self {
        ReconnectSettings {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(5_000),
            give_up_after: Duration::from_millis(30_000),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Dial again at this instant.
    At(Instant),
    /// The outage has lasted `give_up_after`: fail the operations.
    GiveUp { waited: Duration },
}

/// The backoff state of one connection across one outage.
#[derive(Debug)]
pub(crate) struct Backoff {
    settings: ReconnectSettings,
    /// Failed attempts in the current outage.
    attempts: u32,
    /// When the current outage began; `None` while connected.
    failing_since: Option<Instant>,
}

impl Backoff {
    pub fn new(settings: ReconnectSettings) -> Self {
        Backoff {
            settings,
            attempts: 0,
            failing_since: None,
        }
    }

    /// The connection is up again (acknowledged): the next outage starts afresh.
    pub fn reset(&mut self) {
        self.attempts = 0;
        self.failing_since = None;
    }

    /// When the current outage must end in a give-up; `None` while connected.
    pub fn give_up_at(&self) -> Option<Instant> {
        self.failing_since
            .map(|since| since + self.settings.give_up_after)
    }

    /// Records a failed attempt at `now` and says when to try again. A retry never lies
    /// beyond the give-up instant, so a give-up is reported on time.
    pub fn after_failure(&mut self, now: Instant) -> Retry {
        let since = *self.failing_since.get_or_insert(now);
        let give_up_at = since + self.settings.give_up_after;
        if now >= give_up_at {
            return Retry::GiveUp {
                waited: now - since,
            };
        }
        let delay = jittered(self.ceiling(self.attempts), random_fraction());
        self.attempts = self.attempts.saturating_add(1);
        Retry::At((now + delay).min(give_up_at))
    }

    /// The delay bound for attempt `n` (0-based): `initial * 2^n`, at most `max`.
    fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.settings
            .initial
            .saturating_mul(factor)
            .min(self.settings.max)
    }
}

/// "Equal jitter": half the ceiling for sure, the other half random, so the delays still
/// grow while clients of one restarted upstream do not all dial in the same millisecond.
fn jittered(ceiling: Duration, fraction: f64) -> Duration {
    let half = ceiling / 2;
    half + half.mul_f64(fraction.clamp(0.0, 1.0))
}

/// A fraction in `[0, 1)`. `RandomState` is seeded randomly per process and differs per
/// instance, which is all jitter needs; no extra crate for it.
fn random_fraction() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(0u8);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(initial: u64, max: u64, give_up_after: u64) -> ReconnectSettings {
        ReconnectSettings {
            initial: Duration::from_millis(initial),
            max: Duration::from_millis(max),
            give_up_after: Duration::from_millis(give_up_after),
        }
    }

    #[test]
    fn ceilings_double_up_to_the_maximum() {
        let backoff = Backoff::new(settings(100, 5_000, 30_000));
        let ceilings: Vec<u128> = (0..8).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.ceiling(1_000).as_millis(), 5000);
    }

    #[test]
    fn jitter_keeps_between_half_and_the_whole_ceiling() {
        let ceiling = Duration::from_millis(800);
        assert_eq!(jittered(ceiling, 0.0), Duration::from_millis(400));
        assert_eq!(jittered(ceiling, 0.5), Duration::from_millis(600));
        assert_eq!(jittered(ceiling, 1.0), Duration::from_millis(800));
        for _ in 0..1000 {
            let fraction = random_fraction();
            assert!((0.0..1.0).contains(&fraction), "{fraction}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_grow_and_give_up_exactly_at_the_window() {
        let mut backoff = Backoff::new(settings(100, 400, 2_000));
        let start = Instant::now();
        assert_eq!(backoff.give_up_at(), None);
        let mut expected_ceiling = [100, 200, 400, 400, 400].into_iter();
        loop {
            match backoff.after_failure(Instant::now()) {
                Retry::At(when) => {
                    let delay = when - Instant::now();
                    assert_eq!(
                        backoff.give_up_at(),
                        Some(start + Duration::from_millis(2_000))
                    );
                    match expected_ceiling.next() {
                        Some(ceiling) => {
                            let ceiling = Duration::from_millis(ceiling);
                            assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?}");
                        }
                        // Later retries are clamped to the give-up instant at most.
                        None => assert!(when <= start + Duration::from_millis(2_000)),
                    }
                    tokio::time::sleep_until(when).await;
                }
                Retry::GiveUp { waited } => {
                    assert_eq!(waited, Duration::from_millis(2_000));
                    assert_eq!(Instant::now() - start, Duration::from_millis(2_000));
                    break;
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_starts_the_next_outage_afresh() {
        let mut backoff = Backoff::new(settings(100, 5_000, 1_000));
        backoff.after_failure(Instant::now());
        backoff.after_failure(Instant::now());
        tokio::time::advance(Duration::from_millis(900)).await;
        backoff.reset();
        assert_eq!(backoff.give_up_at(), None);
        tokio::time::advance(Duration::from_millis(900)).await;
        let Retry::At(when) = backoff.after_failure(Instant::now()) else {
            panic!("a new outage must not give up at once");
        };
        assert!(when - Instant::now() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_window_gives_up_at_the_first_failure() {
        let mut backoff = Backoff::new(settings(100, 5_000, 0));
        assert_eq!(
            backoff.after_failure(Instant::now()),
            Retry::GiveUp {
                waited: Duration::ZERO
            }
        );
    }
}
