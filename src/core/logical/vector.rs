//! Vector clocks among the server replicas (Fidge, Mattern 1988).
//!
//! Replicas are a small known group (ids 1–10), so each carries one counter per replica it has
//! heard of. A replica increments its own entry on every local event and send, and on receipt
//! takes the entry-wise maximum with the message's vector, then increments its own entry.
//! Comparing two vectors then says whether one event happened before the other or whether they
//! were concurrent, which a Lamport counter alone cannot.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How two events relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Causality {
    /// The same event (equal vectors).
    Equal,
    /// The first happened before the second.
    Before,
    /// The first happened after the second.
    After,
    /// Neither could have caused the other.
    Concurrent,
}

/// A vector clock: replica id → events of that replica known of. Absent entries are zero.
/// In JSON an object whose keys are the replica ids as strings: `{"1": 4, "3": 7}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VectorClock(BTreeMap<u64, u64>);

impl Serialize for VectorClock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k.to_string(), v)))
    }
}

impl<'de> Deserialize<'de> for VectorClock {
    /// Keys are read as strings and parsed, so a vector clock decodes the same inside a tagged
    /// message (where serde buffers keys as strings) as on its own.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: BTreeMap<String, u64> = BTreeMap::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                k.parse::<u64>().map(|k| (k, v)).map_err(|_| {
                    serde::de::Error::custom(format!("replica id {k:?} is not a number"))
                })
            })
            .collect::<Result<BTreeMap<u64, u64>, _>>()
            .map(VectorClock)
    }
}

/// Most entries a received vector may have (replica ids go from 1 to 10; the margin is for
/// ids that were used and left).
pub const MAX_ENTRIES: usize = 64;

impl VectorClock {
    /// This replica's own entry.
    pub fn get(&self, id: u64) -> u64 {
        self.0.get(&id).copied().unwrap_or(0)
    }

    /// Entries, by replica id.
    pub fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(k, v)| (*k, *v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A local event or a send by replica `id`.
    pub fn tick(&mut self, id: u64) -> &Self {
        let e = self.0.entry(id).or_insert(0);
        *e = e.saturating_add(1);
        self
    }

    /// Replica `id` receives a message stamped `other`.
    pub fn observe(&mut self, id: u64, other: &VectorClock) -> &Self {
        for (k, v) in &other.0 {
            let e = self.0.entry(*k).or_insert(0);
            *e = (*e).max(*v);
        }
        self.tick(id)
    }

    /// How the event stamped `self` relates to the one stamped `other`.
    pub fn compare(&self, other: &VectorClock) -> Causality {
        let (mut less, mut more) = (false, false);
        for k in self.0.keys().chain(other.0.keys()) {
            let (a, b) = (self.get(*k), other.get(*k));
            less |= a < b;
            more |= a > b;
        }
        match (less, more) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vc(entries: &[(u64, u64)]) -> VectorClock {
        VectorClock(entries.iter().copied().collect())
    }

    #[test]
    fn compares() {
        let table = [
            (vc(&[(1, 1)]), vc(&[(1, 1)]), Causality::Equal),
            (vc(&[(1, 1)]), vc(&[(1, 2)]), Causality::Before),
            (vc(&[(1, 1), (2, 3)]), vc(&[(1, 1)]), Causality::After),
            (vc(&[(1, 2)]), vc(&[(2, 1)]), Causality::Concurrent),
            (vc(&[]), vc(&[(3, 1)]), Causality::Before),
        ];
        for (a, b, want) in table {
            assert_eq!(a.compare(&b), want, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn serializes_with_string_keys_and_reads_them_back() {
        let v = vc(&[(1, 4), (10, 7)]);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"1":4,"10":7}"#);
        assert_eq!(serde_json::from_str::<VectorClock>(&json).unwrap(), v);
        assert!(serde_json::from_str::<VectorClock>(r#"{"x":1}"#).is_err());
        // Inside an internally tagged enum, as in every message.
        #[derive(Deserialize, Debug)]
        #[serde(tag = "type")]
        enum M {
            A { vc: VectorClock },
        }
        let M::A { vc: back } = serde_json::from_str(r#"{"type":"A","vc":{"2":3}}"#).unwrap();
        assert_eq!(back, vc(&[(2, 3)]));
    }

    #[test]
    fn two_elections_started_at_once_are_concurrent() {
        let (mut r1, mut r2) = (VectorClock::default(), VectorClock::default());
        let e1 = r1.tick(1).clone(); // replica 1 starts an election
        let e2 = r2.tick(2).clone(); // so does replica 2, before hearing of it
        assert_eq!(e1.compare(&e2), Causality::Concurrent);
        // Replica 2 hears replica 1's ELECTION and answers: ordered after both.
        let answer = r2.observe(2, &e1).clone();
        assert_eq!(e1.compare(&answer), Causality::Before);
        assert_eq!(answer.compare(&e2), Causality::After);
    }

    proptest! {
        /// The vectors of a simulated run agree with the real happens-before relation, which
        /// the test tracks on its own: the set of events each event may have seen.
        #[test]
        fn vectors_match_happens_before(
            run in prop::collection::vec((1..4u64, 0..3u8, 0..32usize), 1..80)
        ) {
            use std::collections::BTreeSet;
            let mut clocks: BTreeMap<u64, VectorClock> = BTreeMap::new();
            let mut seen: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
            // (vector, the events it may have seen, itself included)
            let mut events: Vec<(VectorClock, BTreeSet<usize>)> = Vec::new();
            let mut sent: Vec<usize> = Vec::new();
            for (id, what, m) in run {
                let idx = events.len();
                let mut past = seen.get(&id).cloned().unwrap_or_default();
                let clock = clocks.entry(id).or_default();
                if what == 2 && !sent.is_empty() {
                    let from = sent[m % sent.len()];
                    clock.observe(id, &events[from].0.clone());
                    past.extend(events[from].1.iter().copied());
                } else {
                    clock.tick(id);
                    if what == 1 {
                        sent.push(idx);
                    }
                }
                past.insert(idx);
                seen.insert(id, past.clone());
                events.push((clock.clone(), past));
            }
            for (i, (a, pa)) in events.iter().enumerate() {
                for (j, (b, pb)) in events.iter().enumerate() {
                    let want = if i == j {
                        Causality::Equal
                    } else if pb.contains(&i) {
                        Causality::Before
                    } else if pa.contains(&j) {
                        Causality::After
                    } else {
                        Causality::Concurrent
                    };
                    prop_assert_eq!(a.compare(b), want, "events {} and {}", i, j);
                }
            }
        }
    }
}
