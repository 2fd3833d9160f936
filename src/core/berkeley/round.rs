//! The Berkeley coordinator's rounds as an I/O-free state machine.
//!
//! Every [`RoundConfig::interval`] the coordinator opens a round: it broadcasts
//! [`RoundConfig::polls`] polls [`RoundConfig::spacing`] apart, keeps each client's *fastest*
//! answer (a fanout poll reaches many clients one after another, so one poll's round trips are
//! lopsided by milliseconds; TEMPO, too, measured each node several times), and
//! [`RoundConfig::collect`] after the last poll it closes the round: it averages the readings
//! ([`super::average()`]) and tells every client that answered its own adjustment.
//!
//! The driver ([`crate::server`]) feeds it time ([`Coordinator::tick`], whenever
//! [`Coordinator::next_wakeup`] is due) and the readings it receives
//! ([`Coordinator::on_reading`]), and carries out the [`Output`]s: broadcast a poll, send an
//! adjustment to a client's queue. Time is a `Duration` on the driver's monotonic clock, so
//! tests step it by hand; clock readings (the server's reference clock, µs since the epoch)
//! are passed in where a message is stamped.
//!
//! Answers count only for the round, epoch and poll they answer: a reading of an earlier round,
//! of a predecessor's epoch, or of a poll never sent is ignored, so a late or forged answer
//! cannot skew an average.

use super::average::{average, offset_from_poll, Average, BerkeleyConfig, Reading};
use crate::core::protocol::{
    BerkeleyAdjust, BerkeleyPoll, BerkeleyReading, Stamp, PROTOCOL_VERSION,
};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// Default polls per round.
pub const DEFAULT_POLLS: u32 = 5;
/// Default time between the polls of a round.
pub const DEFAULT_SPACING: Duration = Duration::from_millis(50);

/// Timing and averaging of the rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundConfig {
    /// Time between the starts of two rounds.
    pub interval: Duration,
    /// Polls per round; each client's fastest answer counts.
    pub polls: u32,
    /// Time between the polls of one round.
    pub spacing: Duration,
    /// How long answers are collected after the last poll.
    pub collect: Duration,
    /// How readings are averaged.
    pub average: BerkeleyConfig,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Broadcast this poll to every client (its send time is already recorded).
    Poll(BerkeleyPoll),
    /// Send this adjustment to the client queue `reply_to`.
    Adjust {
        reply_to: String,
        adjust: BerkeleyAdjust,
    },
    /// A round closed; `average` is `None` when no reading was usable.
    Closed {
        round: u64,
        readings: usize,
        average: Option<Average>,
    },
}

/// An open round.
#[derive(Debug, Clone)]
struct Open {
    /// Send time (reference clock, µs) of each poll sent so far.
    sent: Vec<i64>,
    next_poll: Duration,
    close_at: Duration,
    /// Each client's fastest answer so far, and the queue its adjustment goes to.
    best: BTreeMap<Uuid, (Reading, String)>,
}

/// One leader term's Berkeley rounds.
#[derive(Debug, Clone)]
pub struct Coordinator {
    cfg: RoundConfig,
    server_id: Uuid,
    epoch: u64,
    round: u64,
    next_round: Duration,
    open: Option<Open>,
}

impl Coordinator {
    /// A coordinator for leader term `epoch` of server `server_id`; its first round opens at
    /// `now`.
    pub fn new(cfg: RoundConfig, server_id: Uuid, epoch: u64, now: Duration) -> Self {
        Coordinator {
            cfg,
            server_id,
            epoch,
            round: 0,
            next_round: now,
            open: None,
        }
    }

    /// Starts a round at `now` if none is open (an operator asked for one); `false` if one is
    /// already running. The rounds after it keep the interval's rhythm from then on.
    pub fn request_round(&mut self, now: Duration) -> bool {
        if self.open.is_some() {
            return false;
        }
        self.next_round = now;
        true
    }

    /// The number of the latest round opened (0: none yet).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// When [`Coordinator::tick`] must be called next.
    pub fn next_wakeup(&self) -> Duration {
        match &self.open {
            None => self.next_round,
            Some(o) if (o.sent.len() as u32) < self.cfg.polls => o.next_poll.min(o.close_at),
            Some(o) => o.close_at,
        }
    }

    /// Advances time to `now`; `server_us` is the reference clock now, the send time of a poll
    /// sent by this call. Sends at most one poll per call: a driver that overslept calls again
    /// at once, since [`Coordinator::next_wakeup`] is then already due.
    pub fn tick(&mut self, now: Duration, server_us: i64) -> Vec<Output> {
        let mut out = Vec::new();
        if self.open.is_none() && now >= self.next_round {
            self.round += 1;
            self.open = Some(Open {
                sent: Vec::new(),
                next_poll: now,
                close_at: now + self.cfg.spacing * self.cfg.polls + self.cfg.collect,
                best: BTreeMap::new(),
            });
            // Rounds keep their rhythm; rounds that could not start in time are skipped.
            while self.next_round <= now {
                self.next_round += self.cfg.interval.max(Duration::from_millis(1));
            }
        }
        let Some(open) = self.open.as_mut() else {
            return out;
        };
        if now >= open.close_at {
            let open = self.open.take().expect("open round");
            self.close(open, &mut out);
        } else if (open.sent.len() as u32) < self.cfg.polls && now >= open.next_poll {
            let poll = open.sent.len() as u32;
            open.sent.push(server_us);
            open.next_poll += self.cfg.spacing;
            out.push(Output::Poll(BerkeleyPoll {
                v: PROTOCOL_VERSION,
                server_id: self.server_id,
                epoch: self.epoch,
                round: self.round,
                poll,
                stamp: Stamp::default(),
            }));
        }
        out
    }

    /// A client's answer, received at `received_us` on the reference clock, whose adjustment
    /// goes to `reply_to`. Returns whether it counts (the open round, this epoch, a poll that
    /// was sent); of a client's answers the one with the shortest round trip is kept.
    pub fn on_reading(&mut self, r: &BerkeleyReading, reply_to: &str, received_us: i64) -> bool {
        let Some(open) = self.open.as_mut() else {
            return false;
        };
        if r.round != self.round || r.epoch != self.epoch {
            return false;
        }
        let Some(&sent) = open.sent.get(r.poll as usize) else {
            return false;
        };
        let (polled, rtt_us) = offset_from_poll(sent, r.time_us, received_us);
        // A probing client's own estimate against this clock beats the poll's round trip.
        let offset_us = r.ref_offset_us.unwrap_or(polled);
        let faster = open.best.get(&r.id).is_none_or(|(b, _)| rtt_us < b.rtt_us);
        if faster {
            let reading = Reading {
                id: r.id,
                offset_us,
                rtt_us,
            };
            open.best.insert(r.id, (reading, reply_to.to_string()));
        }
        true
    }

    fn close(&self, open: Open, out: &mut Vec<Output>) {
        let readings: Vec<Reading> = open.best.values().map(|(r, _)| *r).collect();
        let result = average(&readings, &self.cfg.average);
        if let Some(avg) = &result {
            for (id, adjust_us) in &avg.adjustments {
                let Some((_, reply_to)) = open.best.get(id) else {
                    continue;
                };
                out.push(Output::Adjust {
                    reply_to: reply_to.clone(),
                    adjust: BerkeleyAdjust {
                        v: PROTOCOL_VERSION,
                        server_id: self.server_id,
                        epoch: self.epoch,
                        client_id: *id,
                        round: self.round,
                        adjust_us: *adjust_us,
                        outlier: avg.discarded.contains(id),
                        stamp: Stamp::default(),
                    },
                });
            }
        }
        out.push(Output::Closed {
            round: self.round,
            readings: readings.len(),
            average: result,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SERVER: Uuid = Uuid::from_u128(500);

    fn cfg() -> RoundConfig {
        RoundConfig {
            interval: Duration::from_secs(5),
            polls: 3,
            spacing: 50 * MS,
            collect: 500 * MS,
            average: BerkeleyConfig {
                include_coordinator: false,
                ..BerkeleyConfig::default()
            },
        }
    }

    /// Runs the coordinator from `from` to `to` in 1 ms steps, with the reference clock at
    /// `1_000_000 + ms·1000` µs; returns every output with the millisecond it came at.
    fn run(c: &mut Coordinator, from: u64, to: u64) -> Vec<(u64, Output)> {
        let mut out = Vec::new();
        for ms in from..=to {
            let now = Duration::from_millis(ms);
            while c.next_wakeup() <= now {
                let step = c.tick(now, 1_000_000 + ms as i64 * 1000);
                if step.is_empty() {
                    break;
                }
                out.extend(step.into_iter().map(|o| (ms, o)));
            }
        }
        out
    }

    fn reading(id: u128, round: u64, poll: u32, time_us: i64) -> BerkeleyReading {
        BerkeleyReading {
            v: PROTOCOL_VERSION,
            id: Uuid::from_u128(id),
            epoch: 7,
            round,
            poll,
            time_us,
            ref_offset_us: None,
            stamp: Stamp::default(),
        }
    }

    #[test]
    fn polls_on_schedule_then_closes_then_waits_for_the_next_round() {
        let mut c = Coordinator::new(cfg(), SERVER, 7, Duration::ZERO);
        let out = run(&mut c, 0, 5_100);
        let polls: Vec<(u64, u64, u32)> = out
            .iter()
            .filter_map(|(ms, o)| match o {
                Output::Poll(p) => Some((*ms, p.round, p.poll)),
                _ => None,
            })
            .collect();
        assert_eq!(
            polls,
            [
                (0, 1, 0),
                (50, 1, 1),
                (100, 1, 2),
                (5_000, 2, 0),
                (5_050, 2, 1),
                (5_100, 2, 2)
            ]
        );
        let closed: Vec<(u64, u64)> = out
            .iter()
            .filter_map(|(ms, o)| match o {
                Output::Closed { round, average, .. } => {
                    assert!(average.is_none(), "no readings, no average");
                    Some((*ms, *round))
                }
                _ => None,
            })
            .collect();
        // Three polls 50 ms apart plus 500 ms of collection.
        assert_eq!(closed, [(650, 1)]);
        let p = match &out[0].1 {
            Output::Poll(p) => p,
            o => panic!("{o:?}"),
        };
        assert_eq!((p.server_id, p.epoch), (SERVER, 7));
    }

    #[test]
    fn keeps_each_clients_fastest_answer_and_adjusts_everyone_who_answered() {
        let mut c = Coordinator::new(cfg(), SERVER, 7, Duration::ZERO);
        run(&mut c, 0, 100);
        // Polls left at 1_000_000, 1_050_000, 1_100_000 µs (reference clock).
        // (client, poll, node time, received at, expected to count)
        let table: &[(u128, u32, i64, i64, bool)] = &[
            // Client 1: 4 ms round trip on poll 0, 400 µs on poll 1 (kept).
            (1, 0, 1_002_000 + 3_000, 1_004_000, true),
            (1, 1, 1_050_200 + 3_000, 1_050_400, true),
            // Client 2: only poll 2, 1 ms round trip, clock 1 ms behind.
            (2, 2, 1_100_500 - 1_000, 1_101_000, true),
            // A poll that was never sent counts for nothing.
            (3, 9, 1_000_000, 1_000_100, false),
        ];
        for &(id, poll, time_us, at, counts) in table {
            let r = reading(id, 1, poll, time_us);
            assert_eq!(
                c.on_reading(&r, &format!("q{id}"), at),
                counts,
                "{id}/{poll}"
            );
        }
        let out = run(&mut c, 101, 700);
        let adjusts: Vec<(String, i64, bool)> = out
            .iter()
            .filter_map(|(_, o)| match o {
                Output::Adjust { reply_to, adjust } => {
                    assert_eq!((adjust.round, adjust.epoch), (1, 7));
                    Some((reply_to.clone(), adjust.adjust_us, adjust.outlier))
                }
                _ => None,
            })
            .collect();
        // Offsets: client 1 +3000 (its fast reading), client 2 −1000; the average is +1000.
        assert_eq!(
            adjusts,
            [("q1".into(), -2_000, false), ("q2".into(), 2_000, false)]
        );
        assert!(out.iter().any(|(_, o)| matches!(
            o,
            Output::Closed {
                round: 1,
                readings: 2,
                average: Some(_)
            }
        )));
    }

    #[test]
    fn answers_of_another_round_epoch_or_a_closed_round_are_ignored() {
        let mut c = Coordinator::new(cfg(), SERVER, 7, Duration::ZERO);
        assert!(
            !c.on_reading(&reading(1, 1, 0, 0), "q", 0),
            "no round is open yet"
        );
        run(&mut c, 0, 10);
        let mut stale = reading(1, 1, 0, 1_000_000);
        stale.epoch = 6;
        assert!(
            !c.on_reading(&stale, "q", 1_000_100),
            "a predecessor's epoch"
        );
        assert!(
            !c.on_reading(&reading(1, 2, 0, 1_000_000), "q", 1_000_100),
            "a round not yet opened"
        );
        assert!(c.on_reading(&reading(1, 1, 0, 1_000_000), "q", 1_000_100));
        run(&mut c, 11, 700);
        assert!(
            !c.on_reading(&reading(1, 1, 0, 1_000_000), "q", 1_700_000),
            "the round is closed"
        );
    }

    #[test]
    fn a_probing_clients_own_estimate_is_preferred_to_the_round_trip() {
        let mut c = Coordinator::new(cfg(), SERVER, 7, Duration::ZERO);
        run(&mut c, 0, 0);
        let mut r = reading(1, 1, 0, 1_000_000);
        r.ref_offset_us = Some(250);
        assert!(c.on_reading(&r, "q1", 1_000_200));
        c.on_reading(&reading(2, 1, 0, 1_000_100), "q2", 1_000_200);
        let out = run(&mut c, 1, 700);
        let adjusts: Vec<i64> = out
            .iter()
            .filter_map(|(_, o)| match o {
                Output::Adjust { adjust, .. } => Some(adjust.adjust_us),
                _ => None,
            })
            .collect();
        // Offsets 250 (estimate) and 0 (poll: 100 µs each way): average 125.
        assert_eq!(adjusts, [-125, 125]);
    }

    #[test]
    fn a_requested_round_starts_at_once_unless_one_is_open() {
        let mut c = Coordinator::new(cfg(), SERVER, 7, Duration::ZERO);
        run(&mut c, 0, 10);
        assert!(
            !c.request_round(Duration::from_millis(10)),
            "round 1 is open"
        );
        run(&mut c, 11, 1_000);
        assert!(c.request_round(Duration::from_millis(1_000)));
        let out = run(&mut c, 1_000, 1_000);
        assert!(matches!(&out[..], [(_, Output::Poll(p))] if p.round == 2 && p.poll == 0));
    }

    #[test]
    fn a_slow_driver_skips_missed_rounds_instead_of_bunching_them() {
        let mut c = Coordinator::new(cfg(), SERVER, 7, Duration::ZERO);
        run(&mut c, 0, 700);
        // The driver sleeps through three intervals.
        let late = Duration::from_secs(17);
        let out = c.tick(late, 0);
        assert!(matches!(&out[..], [Output::Poll(p)] if p.round == 2 && p.poll == 0));
        assert_eq!(c.next_wakeup(), late + 50 * MS);
        let out = run(&mut c, 17_001, 19_999);
        assert!(
            out.iter()
                .all(|(_, o)| !matches!(o, Output::Poll(p) if p.round == 3)),
            "next round at 20 s, not at once"
        );
        let out = run(&mut c, 20_000, 20_000);
        assert!(matches!(&out[..], [(_, Output::Poll(p))] if p.round == 3));
    }
}
