//! Lamport's logical clock (1978): one counter per process.

use serde::{Deserialize, Serialize};

/// A Lamport counter. Every local event and every send is [`Lamport::tick`]: +1, and the new
/// value stamps the event or message. Every receipt is [`Lamport::observe`]: the counter
/// becomes max(local, received) + 1. So if event *a* may have caused event *b* (same process
/// before it, or a chain of messages from one to the other), `lt(a) < lt(b)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lamport(u64);

impl Lamport {
    /// A counter that continues from `value` (a persisted one, say).
    pub fn from_value(value: u64) -> Self {
        Lamport(value)
    }

    /// The last value handed out.
    pub fn value(self) -> u64 {
        self.0
    }

    /// A local event or a send: +1; returns the stamp.
    pub fn tick(&mut self) -> u64 {
        self.0 = self.0.saturating_add(1);
        self.0
    }

    /// A receipt of a message stamped `remote`: max(local, remote) + 1; returns the stamp of
    /// the receive event.
    pub fn observe(&mut self, remote: u64) -> u64 {
        self.0 = self.0.max(remote).saturating_add(1);
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ticks_and_observes() {
        let mut a = Lamport::default();
        assert_eq!(a.tick(), 1);
        assert_eq!(a.observe(10), 11);
        assert_eq!(a.observe(3), 12, "an older stamp still advances the clock");
        assert_eq!(a.value(), 12);
    }

    /// A run of processes exchanging messages: each step is a local event, a send, or the
    /// receipt of a message sent earlier.
    #[derive(Debug, Clone)]
    enum Step {
        Local(usize),
        Send(usize),
        Receive(usize, usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                (0..4usize).prop_map(Step::Local),
                (0..4usize).prop_map(Step::Send),
                (0..4usize, 0..64usize).prop_map(|(p, m)| Step::Receive(p, m)),
            ],
            1..200,
        )
    }

    proptest! {
        /// Monotonic on every process, and send happens-before receive ⇒ smaller stamp.
        #[test]
        fn monotonic_and_causal(run in steps()) {
            let mut procs = [Lamport::default(); 4];
            let mut last = [0u64; 4];
            let mut sent: Vec<u64> = Vec::new();
            for step in run {
                let (p, stamp) = match step {
                    Step::Local(p) => (p, procs[p].tick()),
                    Step::Send(p) => {
                        let s = procs[p].tick();
                        sent.push(s);
                        (p, s)
                    }
                    Step::Receive(p, m) if !sent.is_empty() => {
                        let s = sent[m % sent.len()];
                        let r = procs[p].observe(s);
                        prop_assert!(s < r, "send {s} happens before receive {r}");
                        (p, r)
                    }
                    Step::Receive(p, _) => (p, procs[p].tick()),
                };
                prop_assert!(stamp > last[p], "monotonic on process {p}");
                last[p] = stamp;
            }
        }
    }
}
