//! A budget of log lines per interval for events others control: a storm
//! of failed binds from one user must not flood the journal (journald
//! rate-limits the whole unit, losing portmon's own lines with the
//! storm's) nor spend the daemon's time formatting. Past the budget, lines
//! are counted, and one summary line per interval says how many.

use std::time::{Duration, Instant};

/// Lines allowed per interval, and what was held back.
#[derive(Debug)]
pub struct LogBudget {
    lines: u32,
    interval: Duration,
    window_start: Instant,
    used: u32,
    held_in_window: u64,
    held_total: u64,
}

impl LogBudget {
    /// `lines` per `interval`.
    pub fn new(lines: u32, interval: Duration) -> Self {
        Self {
            lines,
            interval,
            window_start: Instant::now(),
            used: 0,
            held_in_window: 0,
            held_total: 0,
        }
    }

    /// Whether one more line may be written now; a line refused is counted.
    /// A new interval first reports what the last one held back.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.roll(now);
        if self.used < self.lines {
            self.used += 1;
            true
        } else {
            self.held_in_window += 1;
            self.held_total += 1;
            false
        }
    }

    /// Ends the interval if it is over, with its summary line; for a timer
    /// that calls between events, so a storm that stopped is still summed up.
    pub fn roll(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.window_start) < self.interval {
            return None;
        }
        let held = std::mem::take(&mut self.held_in_window);
        if held > 0 {
            tracing::warn!(
                held,
                seconds = self.interval.as_secs(),
                "{held} more failures in the last {} s were not logged one by one; each is counted \
                 (portmon_bind_errors_total, portmon_connect_errors_total) and the latest are at \
                 /api/v1/failures",
                self.interval.as_secs()
            );
        }
        self.window_start = now;
        self.used = 0;
        (held > 0).then_some(held)
    }

    /// Lines held back since start.
    pub fn held_total(&self) -> u64 {
        self.held_total
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_gets_its_budget_then_one_summary_per_interval() {
        let mut budget = LogBudget::new(3, Duration::from_secs(10));
        let start = Instant::now();
        let allowed = (0..1000).filter(|_| budget.allow(start)).count();
        assert_eq!(allowed, 3);
        assert_eq!(budget.held_total(), 997);
        assert_eq!(budget.roll(start + Duration::from_secs(5)), None);
        assert_eq!(budget.roll(start + Duration::from_secs(10)), Some(997));
        // A quiet interval has nothing to sum up, and the budget is back.
        assert_eq!(budget.roll(start + Duration::from_secs(20)), None);
        assert!(budget.allow(start + Duration::from_secs(21)));
        assert_eq!(budget.held_total(), 997);
    }
}
