//! The dashboard's one snapshot loop: every [`FRAME_EVERY`] it reads the cluster once (the
//! runtime's nodes, Redis's reports, master, replica records and counters, new events, each
//! replica's election phase), joins it with the same functions `tsc status` uses, and publishes
//! one serialized frame. Every open page gets that same frame by its event stream, so N
//! browsers cost N sends of one string, not N reads of the cluster.
//!
//! The loop also keeps what a single frame cannot carry: the chart's history of every client's
//! true error (the last [`CHART_WINDOW`], a sample every [`CHART_EVERY`]), the recent event
//! log, and which clients this dashboard has seen the runtime run (so a removed client's card
//! goes at once, not when its last report expires).

use super::elections::{past_elections, ElectionView, PastElection, Timeline};
use crate::cache::{RedisStore, ReportStore};
use crate::cli::events::{causal_order, Logged};
use crate::cli::operator::http;
use crate::cli::snapshot::redis;
use crate::cli::verdict::{health, Freshness};
use crate::cli::view::{client_rows, current_leader, server_rows, ClientRow, ServerRow};
use crate::core::clock::{Clock, SystemClock};
use crate::core::protocol::{EventKind, MasterRecord};
use crate::runtime::cluster::{ClusterConfig, State};
use crate::runtime::{Node, Runtime};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the loop reads the cluster and every page gets a frame.
pub const FRAME_EVERY: Duration = Duration::from_millis(250);
/// How often a point is added to the chart.
pub const CHART_EVERY: Duration = Duration::from_millis(500);
/// How much history the chart holds.
pub const CHART_WINDOW: Duration = Duration::from_secs(180);
/// Events a frame carries (the newest, in causal order).
pub const EVENTS_SHOWN: usize = 30;
/// Events kept in memory to draw from (the last elections, each client's clock events).
pub const EVENTS_KEPT: usize = 2000;
/// Clock events listed on a client's card.
pub const CLOCK_EVENTS_SHOWN: usize = 3;
/// Longest wait for one replica's election phase.
const PHASE_TIMEOUT: Duration = Duration::from_millis(400);

/// One event, as the page lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventLine {
    pub at_us: i64,
    pub node: String,
    pub kind: &'static str,
    pub text: String,
}

impl From<&Logged> for EventLine {
    fn from(l: &Logged) -> Self {
        EventLine {
            at_us: l.at_us(),
            node: l.event.node.clone(),
            kind: l.event.kind.as_str(),
            text: l.event.text.clone(),
        }
    }
}

/// A client's card: its row, and the last things that happened to its clock.
#[derive(Debug, Clone, Serialize)]
pub struct Card {
    #[serde(flatten)]
    pub row: ClientRow,
    pub clock_events: Vec<EventLine>,
}

/// One point of the chart: every client's true error to the master (µs) at `t_us`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub t_us: i64,
    pub errors: BTreeMap<String, i64>,
}

/// Everything a page shows, at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    /// Frames published since the dashboard started (1, 2, ...).
    pub seq: u64,
    /// Host clock when the cluster was read (µs).
    pub now_us: i64,
    pub cluster_id: String,
    pub runtime: &'static str,
    pub algorithm: &'static str,
    pub clients: Vec<Card>,
    /// Clients with a live report.
    pub live: usize,
    pub master: Option<MasterRecord>,
    pub servers: Vec<ServerRow>,
    pub leader: Option<u64>,
    pub epoch: Option<u64>,
    pub election: ElectionView,
    pub elections: Vec<PastElection>,
    pub events: Vec<EventLine>,
    /// Why the cluster is not healthy (`tsc status`'s verdict); empty when it is.
    pub problems: Vec<String>,
    /// The chart's newest point, when one was taken with this frame.
    pub sample: Option<Sample>,
}

/// The chart's history.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds `s`, forgetting samples older than [`CHART_WINDOW`] before it.
    pub fn push(&mut self, s: Sample) {
        let oldest = s.t_us - CHART_WINDOW.as_micros() as i64;
        while self.samples.front().is_some_and(|f| f.t_us < oldest) {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// `{"window_s": …, "samples": […]}`, oldest first.
    pub fn json(&self) -> String {
        serde_json::json!({
            "window_s": CHART_WINDOW.as_secs(),
            "samples": self.samples,
        })
        .to_string()
    }
}

/// The rows that get a card: every client the runtime runs, and reporting clients it did not
/// start (`external`), but not one this dashboard saw the runtime run and no longer does (it
/// was removed: its report outlives it by up to the TTL), nor a `silent` one.
pub fn cards_of(
    rows: Vec<ClientRow>,
    nodes: &[Node],
    seen: &mut HashSet<String>,
) -> Vec<ClientRow> {
    seen.extend(nodes.iter().flat_map(Node::client_ids));
    rows.into_iter()
        .filter(|r| match r.state.as_str() {
            "silent" => false,
            "external" => !seen.contains(&r.id),
            _ => true,
        })
        .collect()
}

/// The last [`CLOCK_EVENTS_SHOWN`] clock events (synced, stepped) of client `id`, newest
/// first, from `events` in causal order.
pub fn clock_events(events: &[Logged], id: &str) -> Vec<EventLine> {
    let node = format!("client-{id}");
    events
        .iter()
        .rev()
        .filter(|l| l.event.node == node)
        .filter(|l| {
            matches!(
                l.event.kind,
                EventKind::ClockStepped | EventKind::ClockSynced
            )
        })
        .take(CLOCK_EVENTS_SHOWN)
        .map(EventLine::from)
        .collect()
}

/// What the loop publishes, and what a page asks for when it connects.
pub struct Feed {
    frames: watch::Sender<Arc<str>>,
    history: Mutex<History>,
    /// Frames published (the snapshot loop's reads of the cluster).
    pub published: AtomicU64,
}

impl Feed {
    pub fn new() -> Arc<Feed> {
        Arc::new(Feed {
            frames: watch::channel(Arc::from("null")).0,
            history: Mutex::new(History::default()),
            published: AtomicU64::new(0),
        })
    }

    /// A receiver of every frame from now on, the current one included (marked unseen, so a
    /// page that connects gets it at once).
    pub fn subscribe(&self) -> watch::Receiver<Arc<str>> {
        let mut rx = self.frames.subscribe();
        rx.mark_changed();
        rx
    }

    /// The newest frame (JSON; `null` before the first).
    pub fn current(&self) -> Arc<str> {
        self.frames.borrow().clone()
    }

    /// The chart's history (JSON).
    pub fn history(&self) -> String {
        self.history.lock().expect("not poisoned").json()
    }

    /// Pages connected now.
    pub fn subscribers(&self) -> usize {
        self.frames.receiver_count()
    }

    fn publish(&self, frame: &Frame) {
        if let Some(s) = &frame.sample {
            self.history.lock().expect("not poisoned").push(s.clone());
        }
        let json = serde_json::to_string(frame).expect("frames serialize");
        self.frames.send_replace(Arc::from(json));
        self.published.fetch_add(1, Relaxed);
    }
}

/// The loop's memory between frames.
struct Looker {
    cfg: ClusterConfig,
    rt: Arc<Runtime>,
    store: Option<RedisStore>,
    seen: HashSet<String>,
    events: VecDeque<Logged>,
    last_event: Option<String>,
    timeline: Arc<Mutex<Timeline>>,
    seq: u64,
    next_sample_us: i64,
}

/// Runs the snapshot loop until `shutdown`.
pub async fn run(
    cfg: ClusterConfig,
    rt: Arc<Runtime>,
    feed: Arc<Feed>,
    timeline: Arc<Mutex<Timeline>>,
    shutdown: CancellationToken,
) {
    let mut looker = Looker {
        cfg,
        rt,
        store: None,
        seen: HashSet::new(),
        events: VecDeque::new(),
        last_event: None,
        timeline,
        seq: 0,
        next_sample_us: 0,
    };
    let mut ticker = tokio::time::interval(FRAME_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let frame = looker.frame().await;
        feed.publish(&frame);
    }
}

impl Looker {
    /// Reads the cluster once and builds the next frame. Whatever cannot be read becomes a
    /// problem on the page; the loop never stops for it.
    async fn frame(&mut self) -> Frame {
        self.seq += 1;
        let mut problems = Vec::new();
        // tsc commands run beside the dashboard change state.json: read it every time.
        let state = State::load(&self.cfg.home).unwrap_or_default();
        let nodes = match self.rt.nodes(&state).await {
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("cannot list the cluster's nodes: {e}"));
                Vec::new()
            }
        };
        if self.store.is_none() {
            match redis(&self.rt, &state).await {
                Ok(s) => self.store = Some(s),
                Err(f) => problems.push(f.message),
            }
        }
        let (reports, master, records, stats) = match &self.store {
            Some(store) => {
                let read = async {
                    Ok::<_, crate::Error>((
                        store.live_reports().await?,
                        store.master().await?,
                        store.replicas().await?,
                        store.server_stats().await?,
                    ))
                };
                match read.await {
                    Ok(r) => r,
                    Err(e) => {
                        problems.push(format!("cannot read the cluster's Redis: {e}"));
                        Default::default()
                    }
                }
            }
            None => Default::default(),
        };
        self.read_events().await;
        let now_us = SystemClock.now_us();
        let rows = client_rows(&nodes, &reports, master.as_ref(), now_us);
        let servers = server_rows(&nodes, &records, now_us);
        self.read_phases(&servers).await;
        if self.store.is_some() {
            problems.extend(health(
                &nodes,
                &rows,
                master.as_ref(),
                stats.len(),
                &servers,
                Freshness::new(now_us, self.cfg.client.interval()),
                self.cfg.server.algorithm,
            ));
        }
        let mut events: Vec<Logged> = self.events.iter().cloned().collect();
        causal_order(&mut events);
        let cards: Vec<Card> = cards_of(rows, &nodes, &mut self.seen)
            .into_iter()
            .map(|row| Card {
                clock_events: clock_events(&events, &row.id),
                row,
            })
            .collect();
        let sample = (now_us >= self.next_sample_us).then(|| {
            self.next_sample_us = now_us + CHART_EVERY.as_micros() as i64;
            Sample {
                t_us: now_us,
                errors: cards
                    .iter()
                    .filter_map(|c| Some((c.row.id.clone(), c.row.true_error_us?)))
                    .collect(),
            }
        });
        let leader = current_leader(&servers);
        Frame {
            seq: self.seq,
            now_us,
            cluster_id: self.cfg.cluster_id.clone(),
            runtime: self.rt.kind().as_str(),
            algorithm: self.cfg.server.algorithm.as_str(),
            live: cards.iter().filter(|c| c.row.time_us.is_some()).count(),
            clients: cards,
            master,
            leader: leader.map(|l| l.id),
            epoch: leader.and_then(|l| l.epoch),
            election: self.timeline.lock().expect("not poisoned").view(now_us),
            elections: past_elections(&events),
            events: events
                .iter()
                .rev()
                .take(EVENTS_SHOWN)
                .map(EventLine::from)
                .collect(),
            servers,
            problems,
            sample,
        }
    }

    /// New entries of the event log (the newest [`EVENTS_KEPT`] at the first read).
    async fn read_events(&mut self) {
        let Some(store) = &self.store else { return };
        let read = match &self.last_event {
            None => store.events_tail(EVENTS_KEPT).await,
            Some(after) => store.events(Some(after), EVENTS_KEPT).await,
        };
        let Ok(new) = read else { return };
        if let Some((id, _)) = new.last() {
            self.last_event = Some(id.clone());
        }
        for (id, event) in new {
            if self.events.len() == EVENTS_KEPT {
                self.events.pop_front();
            }
            self.events.push_back(Logged { id, event });
        }
    }

    /// Every running replica's election phase (`GET /electionStatus`), read together.
    async fn read_phases(&self, servers: &[ServerRow]) {
        let asks = servers.iter().map(|s| async move {
            let addr = s.http.as_deref().filter(|_| s.state == "running")?;
            let ask = http(addr, "GET", "/electionStatus", None, None);
            match tokio::time::timeout(PHASE_TIMEOUT, ask).await {
                Ok(Ok((200, v))) => Some((s.id, v["phase"].as_str()?.to_string())),
                _ => None,
            }
        });
        let phases = futures_util::future::join_all(asks).await;
        let now_us = SystemClock.now_us();
        let mut t = self.timeline.lock().expect("not poisoned");
        for (s, phase) in servers.iter().zip(phases) {
            match phase {
                Some((id, p)) => t.phase(now_us, id, &p),
                None => t.forget(s.id),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Role;

    fn row(id: &str, state: &str) -> ClientRow {
        ClientRow {
            id: id.into(),
            ip: "127.0.0.1".parse().unwrap(),
            state: state.into(),
            is_master: false,
            time_us: Some(1),
            master_id: None,
            offset_to_master_us: None,
            true_error_us: None,
            max_error_us: None,
            last_report_age_ms: Some(0),
            reports_seq: Some(1),
            epoch: None,
            stratum: None,
            reference: None,
            ntp: None,
        }
    }

    fn client_node(id: &str) -> Node {
        Node::fake(Role::Client, id, "127.0.0.1", "running")
    }

    #[test]
    fn a_removed_client_loses_its_card_at_once_an_external_one_keeps_it() {
        let mut seen = HashSet::new();
        let ids = |rows: Vec<ClientRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let both = vec![row("a", "running"), row("b", "running")];
        let nodes = [client_node("a"), client_node("b")];
        assert_eq!(ids(cards_of(both, &nodes, &mut seen)), ["a", "b"]);
        // b removed: its report is still there (external to the runtime now), x never ran here.
        let rows = vec![
            row("a", "running"),
            row("b", "external"),
            row("x", "external"),
            row("y", "silent"),
        ];
        assert_eq!(ids(cards_of(rows, &nodes[..1], &mut seen)), ["a", "x"]);
    }

    #[test]
    fn the_chart_keeps_its_window() {
        let mut h = History::default();
        let w = CHART_WINDOW.as_micros() as i64;
        for t in [0, w / 2, w, w + 1, 2 * w] {
            h.push(Sample {
                t_us: t,
                errors: BTreeMap::from([("a".to_string(), t)]),
            });
        }
        let kept: Vec<i64> = h.samples.iter().map(|s| s.t_us).collect();
        assert_eq!(kept, [w, w + 1, 2 * w]);
        let v: serde_json::Value = serde_json::from_str(&h.json()).unwrap();
        assert_eq!(v["samples"][0]["errors"]["a"], w);
        assert_eq!(v["window_s"], CHART_WINDOW.as_secs());
    }
}
