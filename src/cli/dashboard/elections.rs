//! The replicas' leader election as the dashboard tells it: what is happening now, and the last
//! elections.
//!
//! *Now* comes from two sources. The dashboard hears every control message broadcast on
//! `ts.control` (an `election`, a `coordinator`, a `resign`; heartbeats only date each replica's
//! last word), opened with tsc's copy of the replica key so that a forged one never shows. It
//! does not hear `answer`s: they are addressed to one replica, and binding a queue to a
//! replica's routing key would change what the broker does with them (a message to a crashed
//! replica must be returned unroutable, PROTOCOL.md §13.7). So each replica's election phase
//! (`GET /electionStatus`) is read at every frame as well, and a phase change is a step of the
//! timeline: a candidate that moves from `waiting_for_answers` to `waiting_for_coordinator` has
//! had its ANSWER.
//!
//! *The last elections* come from the event log (`election_started` and `leader_elected`, with
//! the replica's own times), so they are the same for every dashboard and survive a restart of
//! this one.

use crate::cli::events::Logged;
use crate::core::protocol::{EventKind, ToReplica};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Steps of the timeline kept (and sent).
pub const TIMELINE_LEN: usize = 40;
/// An ELECTION not followed by a COORDINATOR within this long no longer counts as running (µs).
pub const ELECTION_QUIET_US: i64 = 5_000_000;
/// Past elections listed.
pub const PAST_LEN: usize = 10;

/// One step of an election, as the dashboard saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// When the dashboard saw it (host clock, µs).
    pub at_us: i64,
    pub replica: u64,
    /// `ELECTION`, `COORDINATOR`, `RESIGN` (messages heard) or `PHASE` (a phase read).
    pub what: &'static str,
    pub text: String,
    pub epoch: Option<u64>,
}

/// What the page shows of the election now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ElectionView {
    pub in_progress: bool,
    /// Replicas not idle: (id, phase).
    pub candidates: Vec<(u64, String)>,
    /// Newest last.
    pub steps: Vec<Step>,
    /// Each replica's last control message heard (host µs).
    pub last_heard_us: BTreeMap<u64, i64>,
}

/// The election now, from messages heard and phases read.
#[derive(Debug, Default)]
pub struct Timeline {
    steps: VecDeque<Step>,
    phases: BTreeMap<u64, String>,
    last_heard_us: BTreeMap<u64, i64>,
    last_election_us: Option<i64>,
    last_coordinator_us: Option<i64>,
}

impl Timeline {
    /// A control message heard at `at_us`.
    pub fn message(&mut self, at_us: i64, msg: &ToReplica) {
        let from = msg.from();
        self.last_heard_us.insert(from, at_us);
        let (what, text, epoch) = match msg {
            ToReplica::Election(e) => {
                self.last_election_us = Some(at_us);
                let text = format!(
                    "replica {from} calls an election (priority {}): ELECTION to all",
                    e.priority
                );
                ("ELECTION", text, None)
            }
            ToReplica::Coordinator(c) => {
                self.last_coordinator_us = Some(at_us);
                let text = format!("replica {from} leads epoch {}: COORDINATOR to all", c.epoch);
                ("COORDINATOR", text, Some(c.epoch))
            }
            ToReplica::Resign(_) => ("RESIGN", format!("replica {from} resigns"), None),
            ToReplica::Answer(_) | ToReplica::Heartbeat(_) => return,
        };
        self.push(Step {
            at_us,
            replica: from,
            what,
            text,
            epoch,
        });
    }

    /// Replica `replica`'s election phase (`GET /electionStatus`) read at `at_us`.
    pub fn phase(&mut self, at_us: i64, replica: u64, phase: &str) {
        let before = self.phases.insert(replica, phase.to_string());
        if before.as_deref() == Some(phase) || (before.is_none() && phase == "idle") {
            return;
        }
        let text = match phase {
            "waiting_for_answers" => "sent ELECTION; waiting for an ANSWER from a higher replica",
            "waiting_for_coordinator" => "got an ANSWER; waiting for the COORDINATOR",
            "claiming_epoch" => "no ANSWER came: claiming a new epoch in Redis",
            "idle" => "election over",
            _ => "in an unknown phase",
        };
        self.push(Step {
            at_us,
            replica,
            what: "PHASE",
            text: format!("replica {replica}: {text}"),
            epoch: None,
        });
    }

    /// A replica that is gone (no API any more): its phase is unknown, not idle.
    pub fn forget(&mut self, replica: u64) {
        self.phases.remove(&replica);
    }

    fn push(&mut self, step: Step) {
        if self.steps.len() == TIMELINE_LEN {
            self.steps.pop_front();
        }
        self.steps.push_back(step);
    }

    /// The view at host time `now_us`.
    pub fn view(&self, now_us: i64) -> ElectionView {
        let candidates: Vec<(u64, String)> = self
            .phases
            .iter()
            .filter(|(_, p)| p.as_str() != "idle")
            .map(|(id, p)| (*id, p.clone()))
            .collect();
        let unanswered = match (self.last_election_us, self.last_coordinator_us) {
            (Some(e), c) => c.is_none_or(|c| c < e) && now_us - e < ELECTION_QUIET_US,
            (None, _) => false,
        };
        ElectionView {
            in_progress: !candidates.is_empty() || unanswered,
            candidates,
            steps: self.steps.iter().cloned().collect(),
            last_heard_us: self.last_heard_us.clone(),
        }
    }
}

/// One past election, from the event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PastElection {
    /// When the winner took office (its clock, µs).
    pub at_us: i64,
    pub epoch: u64,
    pub replica: u64,
    /// From the winner's `election_started` to its `leader_elected` (ms), when both are known.
    pub took_ms: Option<i64>,
    /// Why the winner started it (its `election_started` text).
    pub why: Option<String>,
}

/// The last [`PAST_LEN`] elections in `events` (in causal order), newest first.
pub fn past_elections(events: &[Logged]) -> Vec<PastElection> {
    let mut out = Vec::new();
    for (i, l) in events.iter().enumerate() {
        if l.event.kind != EventKind::LeaderElected {
            continue;
        }
        let (Some(replica), Some(epoch)) = (
            l.event.data.get("replica").and_then(|v| v.as_u64()),
            l.event.data.get("epoch").and_then(|v| v.as_u64()),
        ) else {
            continue;
        };
        let started = events[..i]
            .iter()
            .rev()
            // An earlier win ends the search: a start before it belongs to an earlier election.
            .take_while(|e| e.event.kind != EventKind::LeaderElected)
            .find(|e| e.event.kind == EventKind::ElectionStarted && e.event.node == l.event.node);
        out.push(PastElection {
            at_us: l.at_us(),
            epoch,
            replica,
            took_ms: started.map(|s| (l.at_us() - s.at_us()) / 1000),
            why: started.map(|s| s.event.text.clone()),
        });
    }
    out.reverse();
    out.truncate(PAST_LEN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::logical::{Hlc, Stamp};
    use crate::core::protocol::{Coordinator, Election, Event, Heartbeat, PROTOCOL_VERSION};

    fn election(from: u64) -> ToReplica {
        ToReplica::Election(Election {
            v: PROTOCOL_VERSION,
            from,
            priority: from,
            stamp: Stamp::default(),
        })
    }

    fn coordinator(from: u64, epoch: u64) -> ToReplica {
        ToReplica::Coordinator(Coordinator {
            v: PROTOCOL_VERSION,
            from,
            priority: from,
            epoch,
            stamp: Stamp::default(),
        })
    }

    #[test]
    fn an_election_runs_from_election_to_coordinator() {
        let mut t = Timeline::default();
        assert!(!t.view(0).in_progress);
        t.phase(0, 1, "idle");
        t.phase(0, 3, "idle");
        assert!(t.view(0).steps.is_empty(), "a first idle is no news");

        t.message(1_000, &election(1));
        t.phase(1_100, 1, "waiting_for_answers");
        let v = t.view(1_200);
        assert!(v.in_progress);
        assert_eq!(v.candidates, vec![(1, "waiting_for_answers".to_string())]);

        t.phase(1_300, 1, "waiting_for_coordinator");
        t.phase(1_300, 1, "waiting_for_coordinator");
        t.message(1_400, &coordinator(3, 8));
        t.phase(1_500, 1, "idle");
        let v = t.view(1_600);
        assert!(!v.in_progress);
        let what: Vec<&str> = v.steps.iter().map(|s| s.what).collect();
        assert_eq!(what, ["ELECTION", "PHASE", "PHASE", "COORDINATOR", "PHASE"]);
        assert!(v.steps[2].text.contains("got an ANSWER"));
        assert_eq!(v.steps[3].epoch, Some(8));
        assert_eq!(v.last_heard_us[&3], 1_400);
    }

    #[test]
    fn an_unanswered_election_stops_counting_after_a_quiet_while() {
        let mut t = Timeline::default();
        t.message(0, &election(2));
        assert!(t.view(ELECTION_QUIET_US - 1).in_progress);
        assert!(!t.view(ELECTION_QUIET_US).in_progress);
    }

    #[test]
    fn heartbeats_date_a_replica_but_are_not_steps() {
        let mut t = Timeline::default();
        let hb = ToReplica::Heartbeat(Heartbeat {
            v: PROTOCOL_VERSION,
            from: 2,
            priority: 2,
            role: Default::default(),
            epoch: 5,
            leader: Some(2),
            stamp: Stamp::default(),
        });
        for i in 0..(TIMELINE_LEN as i64 + 5) {
            t.message(i, &hb);
            t.message(i, &coordinator(2, 5));
        }
        let v = t.view(100);
        assert_eq!(v.steps.len(), TIMELINE_LEN, "bounded");
        assert!(v.steps.iter().all(|s| s.what == "COORDINATOR"));
        assert_eq!(v.last_heard_us[&2], TIMELINE_LEN as i64 + 4);
    }

    fn logged(n: u64, kind: EventKind, node: &str, us: i64, data: &[(&str, u64)]) -> Logged {
        Logged {
            id: format!("{}-{n}", us / 1000),
            event: Event {
                kind,
                node: node.into(),
                stamp: Stamp {
                    lt: n,
                    hlc: Some(Hlc { us, c: 0 }),
                    vc: None,
                },
                cause: None,
                text: format!("{} of {node}", kind.as_str()),
                data: data
                    .iter()
                    .map(|(k, v)| (k.to_string(), (*v).into()))
                    .collect(),
            },
        }
    }

    #[test]
    fn past_elections_pair_each_win_with_its_start() {
        use EventKind::*;
        let events = [
            logged(1, ElectionStarted, "server-1", 1_000_000, &[]),
            logged(
                2,
                LeaderElected,
                "server-1",
                1_600_000,
                &[("replica", 1), ("epoch", 1)],
            ),
            logged(3, ElectionStarted, "server-2", 9_000_000, &[]),
            logged(4, ElectionStarted, "server-3", 9_100_000, &[]),
            logged(
                5,
                LeaderElected,
                "server-3",
                9_700_000,
                &[("replica", 3), ("epoch", 2)],
            ),
            // A win whose start is not in the log (trimmed): no duration.
            logged(
                6,
                LeaderElected,
                "server-2",
                20_000_000,
                &[("replica", 2), ("epoch", 3)],
            ),
        ];
        let past = past_elections(&events);
        let got: Vec<(u64, u64, Option<i64>)> = past
            .iter()
            .map(|p| (p.epoch, p.replica, p.took_ms))
            .collect();
        assert_eq!(got, [(3, 2, None), (2, 3, Some(600)), (1, 1, Some(600))]);
        assert_eq!(past[1].why.as_deref(), Some("election_started of server-3"));
    }
}
