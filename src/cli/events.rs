//! `tsc events`: the cluster's story, from the event log in Redis, in causal order.
//!
//! Events carry their node's hybrid logical clock, so sorting by it puts every cause before
//! what it caused (a client's clock being stepped does not reorder anything). An event without
//! one (a client that was not synced yet) sorts by the time the log received it. `--follow`
//! keeps printing new events; `--explain-master` tells the story of the current master.

use super::output::{exit, CliResult, Failure, Out};
use super::snapshot::redis;
use crate::cache::{RedisStore, ReportStore};
use crate::core::clock::{format_us, Clock, SystemClock};
use crate::core::logical::Causality;
use crate::core::protocol::{Event, EventKind, MasterRecord};
use crate::runtime::cluster::State;
use crate::runtime::Runtime;
use clap::Args;
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Events read per request.
const PAGE: usize = 1000;
/// How often `--follow` looks for new events.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing new events (ctrl-c stops).
    #[arg(short, long)]
    pub follow: bool,
    /// Only events of the last DURATION (`90s`, `10m`, `2h`, `1d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only events of these kinds (repeatable: `--kind master_elected --kind leader_elected`).
    #[arg(long)]
    pub kind: Vec<EventKind>,
    /// Tell the story of the current master: when and why it was elected, who was master
    /// before, and what became of it.
    #[arg(long)]
    pub explain_master: bool,
}

/// An event with its stream id, as read.
#[derive(Debug, Clone)]
pub struct Logged {
    pub id: String,
    pub event: Event,
}

impl Logged {
    /// The time the event happened (µs): its HLC's physical part, else when the log got it.
    pub fn at_us(&self) -> i64 {
        self.event
            .stamp
            .hlc
            .map_or_else(|| stream_us(&self.id), |h| h.us)
    }

    /// The causal sort key: HLC (or receipt time), then Lamport counter, then arrival.
    fn key(&self) -> (i64, u32, u64, String) {
        let c = self.event.stamp.hlc.map_or(0, |h| h.c);
        (self.at_us(), c, self.event.stamp.lt, self.id.clone())
    }
}

/// The receipt time of a stream id (`<ms>-<n>`), in µs.
fn stream_us(id: &str) -> i64 {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse::<i64>().ok())
        .map_or(0, |ms| ms * 1000)
}

/// Sorts events into causal order (see the module docs).
pub fn causal_order(events: &mut [Logged]) {
    events.sort_by_key(Logged::key);
}

/// Parses `90s`, `10m`, `2h`, `1d` (or plain seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// One line for people.
pub fn line(l: &Logged) -> String {
    let e = &l.event;
    let mut clocks = format!("lt {}", e.stamp.lt);
    if let Some(vc) = &e.stamp.vc {
        let entries: Vec<String> = vc.entries().map(|(k, v)| format!("{k}:{v}")).collect();
        clocks.push_str(&format!(", vc {{{}}}", entries.join(",")));
    }
    format!(
        "{}  {:<44} {:<16} {}  [{clocks}]",
        format_us(l.at_us()),
        e.node,
        e.kind.as_str(),
        e.text
    )
}

/// Every event of the log (oldest first, as stored).
pub async fn read_all(store: &RedisStore) -> CliResult<Vec<Logged>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.events(after.as_deref(), PAGE).await?;
        let n = page.len();
        after = page.last().map(|(id, _)| id.clone()).or(after);
        out.extend(page.into_iter().map(|(id, event)| Logged { id, event }));
        if n < PAGE {
            return Ok(out);
        }
    }
}

/// The story of master `m` from the log, as lines for people.
pub fn explain_master(m: &MasterRecord, events: &[Logged]) -> Vec<String> {
    let id = m.id.to_string();
    let data_is =
        |e: &Logged, key: &str, v: &str| e.event.data.get(key).and_then(|x| x.as_str()) == Some(v);
    let elected: Vec<&Logged> = events
        .iter()
        .filter(|e| e.event.kind == EventKind::MasterElected)
        .collect();
    let mut out = Vec::new();
    let Some(mine) = elected.iter().rev().find(|e| data_is(e, "master_id", &id)) else {
        out.push(format!(
            "Master {id} ({}) was elected at {} (epoch {}); the event log no longer has that \
             election.",
            m.ip,
            format_us(m.elected_at_us),
            m.epoch
        ));
        return out;
    };
    let reason = mine
        .event
        .data
        .get("reason")
        .and_then(|r| r.as_str())
        .unwrap_or("?");
    let live = mine
        .event
        .data
        .get("live_clients")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    out.push(format!(
        "Master {id} ({}) was elected at {} by {} (epoch {}).",
        m.ip,
        format_us(mine.at_us()),
        mine.event.node,
        m.epoch
    ));
    out.push(format!(
        "Why: {reason}; it had the lowest IP of the {live} live clients."
    ));
    let previous = mine.event.data.get("previous").and_then(|p| p.as_str());
    match previous {
        None => out.push(
            "Before it: no master (the cluster had just started, or every client had left).".into(),
        ),
        Some(p) => {
            let since = elected
                .iter()
                .rev()
                .find(|e| data_is(e, "master_id", p) && e.key() < mine.key());
            let mut before = format!("Before it: {p} was master");
            if let Some(s) = since {
                before.push_str(&format!(
                    " from {} (elected by {})",
                    format_us(s.at_us()),
                    s.event.node
                ));
            }
            out.push(before + ".");
            let left = events.iter().find(|e| {
                e.event.kind == EventKind::ClientLeft
                    && data_is(e, "client_id", p)
                    && e.key() < mine.key()
            });
            match left {
                Some(l) => out.push(format!(
                    "What happened to it: it left at {} ({}), and the leader replaced it.",
                    format_us(l.at_us()),
                    l.event.text
                )),
                None => out.push(format!(
                    "What happened to it: it stopped reporting; its report expired and the leader replaced it ({reason})."
                )),
            }
        }
    }
    let steps = events
        .iter()
        .filter(|e| e.event.kind == EventKind::ClockStepped && e.key() > mine.key())
        .count();
    out.push(format!(
        "Since then: {steps} clock step(s) logged; {} leader election(s).",
        events
            .iter()
            .filter(|e| e.event.kind == EventKind::LeaderElected && e.key() > mine.key())
            .count()
    ));
    out
}

/// Pairs of `election_started` events (by stream id) whose vector clocks are concurrent: two
/// replicas that started elections without either knowing of the other's.
pub fn concurrent_elections(events: &[Logged]) -> Vec<(String, String)> {
    let elections: Vec<&Logged> = events
        .iter()
        .filter(|e| e.event.kind == EventKind::ElectionStarted && e.event.stamp.vc.is_some())
        .collect();
    let mut out = Vec::new();
    for (i, a) in elections.iter().enumerate() {
        for b in &elections[i + 1..] {
            let (va, vb) = (a.event.stamp.vc.as_ref(), b.event.stamp.vc.as_ref());
            if let (Some(va), Some(vb)) = (va, vb) {
                if a.event.node != b.event.node && va.compare(vb) == Causality::Concurrent {
                    out.push((a.id.clone(), b.id.clone()));
                }
            }
        }
    }
    out
}

/// `tsc events`.
pub async fn events(rt: &Runtime, state: &State, args: EventsArgs, out: &Out) -> CliResult<u8> {
    let store = redis(rt, state).await?;
    let since_us = match &args.since {
        Some(s) => {
            let d = parse_duration(s).ok_or_else(|| {
                Failure::usage(format!("--since {s:?}: give a duration like 90s, 10m, 2h"))
            })?;
            Some(SystemClock.now_us() - d.as_micros() as i64)
        }
        None => None,
    };
    let keep = |l: &Logged| {
        since_us.is_none_or(|s| l.at_us() >= s)
            && (args.kind.is_empty() || args.kind.contains(&l.event.kind))
    };
    let mut all = read_all(&store).await?;
    causal_order(&mut all);
    if args.explain_master {
        let Some(m) = store.master().await? else {
            return Err(Failure::new(exit::NOT_FOUND, "no master elected yet"));
        };
        let story = explain_master(&m, &all);
        if out.json {
            out.json(json!({ "master": m, "story": story }));
        } else {
            for l in story {
                out.line(&l);
            }
        }
        return Ok(0);
    }
    let concurrent = concurrent_elections(&all);
    let shown: Vec<&Logged> = all.iter().filter(|l| keep(l)).collect();
    let with_concurrency = |l: &Logged| {
        let others: Vec<&str> = concurrent
            .iter()
            .filter_map(|(a, b)| {
                if *a == l.id {
                    Some(b.as_str())
                } else if *b == l.id {
                    Some(a.as_str())
                } else {
                    None
                }
            })
            .collect();
        json!({ "id": l.id, "event": l.event, "concurrent_with": others })
    };
    if out.json && !args.follow {
        let list: Vec<serde_json::Value> = shown.iter().map(|l| with_concurrency(l)).collect();
        out.json(json!({ "events": list }));
        return Ok(0);
    }
    let print = |l: &Logged| {
        if out.json {
            super::output::print_line(&with_concurrency(l).to_string());
        } else {
            let v = with_concurrency(l);
            let others = v["concurrent_with"].as_array().map_or(0, Vec::len);
            let mark = if others > 0 {
                format!("  (concurrent with {others} other election(s))")
            } else {
                String::new()
            };
            super::output::print_line(&format!("{}{mark}", line(l)));
        }
    };
    shown.iter().for_each(|l| print(l));
    if !args.follow {
        return Ok(0);
    }
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    let mut last = all
        .iter()
        .map(|l| l.id.clone())
        .max_by_key(|id| stream_key(id));
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        let page = store.events(last.as_deref(), PAGE).await?;
        if let Some((id, _)) = page.last() {
            last = Some(id.clone());
        }
        let mut new: Vec<Logged> = page
            .into_iter()
            .map(|(id, event)| Logged { id, event })
            .filter(|l| keep(l))
            .collect();
        causal_order(&mut new);
        new.iter().for_each(print);
    }
    Ok(0)
}

fn stream_key(id: &str) -> (u64, u64) {
    id.split_once('-')
        .map(|(a, b)| (a.parse().unwrap_or(0), b.parse().unwrap_or(0)))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::logical::{Hlc, Stamp};
    use std::collections::BTreeMap;
    use uuid::Uuid;

    fn ev(id: &str, kind: EventKind, us: Option<i64>, lt: u64, data: &[(&str, &str)]) -> Logged {
        Logged {
            id: id.into(),
            event: Event {
                kind,
                node: "server-1".into(),
                stamp: Stamp {
                    lt,
                    hlc: us.map(|us| Hlc { us, c: 0 }),
                    vc: None,
                },
                cause: None,
                text: format!("{kind:?}"),
                data: data
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                    .collect::<BTreeMap<_, _>>(),
            },
        }
    }

    #[test]
    fn causal_order_is_by_hlc_not_by_arrival() {
        let mut v = vec![
            ev("5-0", EventKind::ClientJoined, Some(3_000), 9, &[]),
            ev("1-0", EventKind::ClientJoined, Some(4_000), 2, &[]),
            ev("2-0", EventKind::FencingRefused, None, 1, &[]),
        ];
        causal_order(&mut v);
        let ids: Vec<&str> = v.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(
            ids,
            ["2-0", "5-0", "1-0"],
            "no HLC: the receipt time (2 ms)"
        );
    }

    #[test]
    fn elections_without_news_of_each_other_are_concurrent() {
        use crate::core::logical::VectorClock;
        let mut a = VectorClock::default();
        let mut b = VectorClock::default();
        a.tick(1);
        b.tick(2);
        let mut c = b.clone();
        c.observe(2, &a);
        let mut evs = vec![
            ev("1-0", EventKind::ElectionStarted, Some(1), 1, &[]),
            ev("1-1", EventKind::ElectionStarted, Some(2), 1, &[]),
            ev("1-2", EventKind::ElectionStarted, Some(3), 2, &[]),
        ];
        for (e, (vc, node)) in
            evs.iter_mut()
                .zip([(a, "server-1"), (b, "server-2"), (c, "server-2")])
        {
            e.event.stamp.vc = Some(vc);
            e.event.node = node.into();
        }
        assert_eq!(
            concurrent_elections(&evs),
            vec![("1-0".to_string(), "1-1".to_string())]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("m"), None);
    }

    #[test]
    fn the_story_of_a_master() {
        let (old, new) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (o, n) = (old.to_string(), new.to_string());
        let events = vec![
            ev(
                "1-0",
                EventKind::MasterElected,
                Some(1_000_000),
                1,
                &[("master_id", &o), ("reason", "there was no master")],
            ),
            ev(
                "2-0",
                EventKind::ClientLeft,
                Some(5_000_000),
                5,
                &[("client_id", &o)],
            ),
            ev(
                "3-0",
                EventKind::MasterElected,
                Some(6_000_000),
                6,
                &[
                    ("master_id", &n),
                    ("previous", &o),
                    ("reason", "master has not reported for the TTL"),
                ],
            ),
        ];
        let m = MasterRecord {
            id: new,
            ip: "10.0.0.2".parse().unwrap(),
            elected_at_us: 6_000_000,
            epoch: 3,
        };
        let story = explain_master(&m, &events).join("\n");
        assert!(story.contains(&format!("Master {n}")), "{story}");
        assert!(story.contains("has not reported for the TTL"), "{story}");
        assert!(
            story.contains(&format!(
                "Before it: {o} was master from 1970-01-01T00:00:01"
            )),
            "{story}"
        );
        assert!(story.contains("it left at 1970-01-01T00:00:05"), "{story}");
    }
}
