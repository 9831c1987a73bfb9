//! Per-segment traffic rates as replicated container state: exponentially
//! weighted moving averages of events/s and bytes/s over several windows.
//!
//! Appends count events and bytes as they apply; a `RateTick` entry (the
//! container leader proposes one every scaling tick) folds what arrived
//! since the last tick into the averages, using the tick's own time and
//! windows. So every replica computes the same rates from the same log, a
//! leader that takes over keeps them, and a silent segment's rates decay
//! (it merges) instead of vanishing. It never decides anything: the
//! auto-scaler reads the rates.

/// Rate windows per segment, shortest first.
pub const RATE_WINDOWS: usize = 4;

/// Per-window rates from a list (a snapshot's, a peer's); missing windows
/// are 0, extra ones ignored.
pub fn rates_from(v: &[f64]) -> [f64; RATE_WINDOWS] {
    let mut out = [0.0; RATE_WINDOWS];
    for (o, x) in out.iter_mut().zip(v) {
        *o = *x;
    }
    out
}

/// A segment's counters and moving averages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    /// Events and bytes applied since the segment was created.
    pub events_total: u64,
    pub bytes_total: u64,
    /// The totals and time at the last tick (0: never ticked).
    pub ticked_events: u64,
    pub ticked_bytes: u64,
    pub ticked_ms: u64,
    /// Events/s and bytes/s per window.
    pub events_per_second: [f64; RATE_WINDOWS],
    pub bytes_per_second: [f64; RATE_WINDOWS],
}

impl Rates {
    /// Counts an applied batch.
    pub fn record(&mut self, events: u32, bytes: u64) {
        self.events_total += u64::from(events);
        self.bytes_total += bytes;
    }

    /// Folds the traffic since the last tick into each window's average, as
    /// of `now_ms`. The first tick only starts the clock. A tick at or
    /// before the last one (a stale proposal) changes nothing.
    pub fn tick(&mut self, now_ms: u64, windows_ms: &[u64; RATE_WINDOWS]) {
        if self.ticked_ms == 0 {
            self.ticked_ms = now_ms;
            self.ticked_events = self.events_total;
            self.ticked_bytes = self.bytes_total;
            return;
        }
        if now_ms <= self.ticked_ms {
            return;
        }
        let dt = (now_ms - self.ticked_ms) as f64 / 1000.0;
        let events = (self.events_total - self.ticked_events) as f64 / dt;
        let bytes = (self.bytes_total - self.ticked_bytes) as f64 / dt;
        for (i, &window_ms) in windows_ms.iter().enumerate() {
            // The weight of the new sample: 1 - e^(-dt/window), so the
            // average forgets at the same speed whatever the tick interval.
            let window = (window_ms.max(1)) as f64 / 1000.0;
            let w = 1.0 - (-dt / window).exp();
            self.events_per_second[i] += w * (events - self.events_per_second[i]);
            self.bytes_per_second[i] += w * (bytes - self.bytes_per_second[i]);
        }
        self.ticked_ms = now_ms;
        self.ticked_events = self.events_total;
        self.ticked_bytes = self.bytes_total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOWS: [u64; RATE_WINDOWS] = [2_000, 5_000, 10_000, 20_000];

    #[test]
    fn a_steady_rate_is_learned_fastest_by_the_shortest_window() {
        let mut r = Rates::default();
        r.tick(1_000, &WINDOWS);
        for t in 1..=10u64 {
            r.record(500, 50_000); // 1,000 events/s at 2 ticks per second
            r.tick(1_000 + t * 500, &WINDOWS);
        }
        let e = r.events_per_second;
        assert!(e[0] > 900.0 && e[0] <= 1000.0, "{e:?}");
        assert!(e[0] > e[1] && e[1] > e[2] && e[2] > e[3], "{e:?}");
        assert!((r.bytes_per_second[0] / e[0] - 100.0).abs() < 1e-6);
    }

    #[test]
    fn silence_decays_and_stale_ticks_change_nothing() {
        let mut r = Rates::default();
        r.tick(1_000, &WINDOWS);
        r.record(10_000, 0);
        r.tick(2_000, &WINDOWS);
        let hot = r.events_per_second;
        let before = r.clone();
        r.tick(1_500, &WINDOWS);
        assert_eq!(r, before, "a tick from the past is ignored");
        for t in 3..=40u64 {
            r.tick(t * 1_000, &WINDOWS);
        }
        assert!(
            r.events_per_second[0] < hot[0] / 100.0,
            "{:?}",
            r.events_per_second
        );
        assert!(r.events_per_second[3] < hot[3], "{:?}", r.events_per_second);
    }
}
