//! The client's NTP service: a UDP socket answered by [`crate::core::ntp::Responder`] with the
//! client's disciplined virtual clock (docs/NTP.md); and, for a master with NTP upstreams, the
//! poller that reads them ([`follow`]).
//!
//! One task reads requests one at a time. The receive timestamp is read right after the
//! datagram is taken from the socket, the transmit timestamp as late as possible before it is
//! handed back, both from the client's clock under one short lock of its core, which also takes
//! the service's counters into the next report.

use crate::core::client::ClientCore;
use crate::core::client::UpstreamReply;
use crate::core::clock::Clock;
use crate::core::ntp::{Answer, Packet, Responder, MAX_REQUEST_LEN};
use crate::error::{Error, Result};
use crate::logging::RejectLog;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Binds the service's socket (so a taken or forbidden address fails the client at start).
pub async fn bind(addr: SocketAddr) -> Result<UdpSocket> {
    UdpSocket::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot serve NTP on {addr}: {e}")))
}

/// Answers requests on `socket` until `shutdown`; `rate` is per source address per second.
pub async fn serve<C: Clock>(
    socket: UdpSocket,
    core: Arc<Mutex<ClientCore>>,
    clock: C,
    rate: f64,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = socket.local_addr() {
        info!(%addr, rate, "serving NTP");
    }
    let mut responder = Responder::new(rate);
    let mut refusals = RejectLog::new("ntp".into());
    core.lock().expect("not poisoned").ntp = Some(responder.stats);
    // One byte more than the longest request answered, to tell an oversized one.
    let mut buf = vec![0u8; MAX_REQUEST_LEN + 1];
    let mut flush = tokio::time::interval(RejectLog::window());
    loop {
        let (n, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = flush.tick() => {
                refusals.flush();
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // An ICMP error from an earlier send, or a transient failure: not fatal.
                    warn!(error = %e, "NTP socket");
                    continue;
                }
            },
        };
        let rx_host = clock.now_us();
        let answer = {
            let mut c = core.lock().expect("not poisoned");
            let source = c.ntp_source(rx_host);
            let rx = c.now_at(rx_host);
            let answer = responder.handle(&buf[..n], from.ip(), rx, &source, || {
                c.now_at(clock.now_us())
            });
            c.ntp = Some(responder.stats);
            answer
        };
        match answer {
            Ok(Answer::Time(b) | Answer::Kiss(b)) => {
                if let Err(e) = socket.send_to(&b, from).await {
                    warn!(error = %e, %from, "cannot answer an NTP request");
                }
            }
            Err(why) => refusals.note(why.as_str(), &format!("NTP request from {from} refused"), n),
        }
    }
}

/// Polls between corrections while following (a master's upstreams).
pub const UPSTREAM_POLL: Duration = Duration::from_secs(1);
/// Polls of a newly followed upstream come this fast at first, for a quick first estimate.
pub const UPSTREAM_FIRST_POLLS: Duration = Duration::from_millis(250);
/// First polls that come fast.
const FIRST_POLLS: u32 = 4;
/// A poll without an answer by then is missed.
const REPLY_TIMEOUT: Duration = Duration::from_millis(500);
/// An unreachable upstream is polled less often, down to once per this; so is one that sent
/// `RATE` kisses.
const MAX_RETRY: Duration = Duration::from_secs(32);
/// Longest wait for a name lookup.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The code of a Kiss-o'-Death (stratum 0, mode 4), if `bytes` is one.
fn kiss_code(bytes: &[u8]) -> Option<[u8; 4]> {
    let p = Packet::decode(bytes)?;
    (p.mode == 4 && p.stratum == 0).then_some(p.reference_id)
}

/// One upstream as the poller sees it.
struct Poll {
    addr: String,
    to: Option<SocketAddr>,
    next: Instant,
    /// The request in flight: its transmit timestamp and host send time.
    pending: Option<(u64, i64, Instant)>,
    /// Polls answered since it was last (re)started, and consecutive failures.
    answered: u32,
    failures: u32,
    warned: bool,
    /// Polls come at least this far apart: doubled by every `RATE` kiss.
    min_poll: Duration,
    /// Told to stop (`DENY`, `RSTR` kiss): never polled again.
    denied: bool,
}

impl Poll {
    /// A poll that got nothing usable (no answer, an unusable one, no address, a failed send):
    /// counted, and once it makes the upstream unreachable, logged once per outage and its
    /// address looked up again (it may have changed).
    fn failed(&mut self) {
        self.failures += 1;
        if self.failures >= crate::core::upstream::UNREACHABLE_AFTER && !self.warned {
            warn!(upstream = %self.addr, "NTP upstream does not answer; the clock runs free until it does");
            self.warned = true;
            self.to = None;
        }
    }

    /// A usable answer.
    fn answered(&mut self) {
        self.answered += 1;
        self.failures = 0;
        if self.warned {
            info!(upstream = %self.addr, "NTP upstream answers again");
            self.warned = false;
        }
    }

    /// A Kiss-o'-Death: `RATE` doubles the poll interval (up to [`MAX_RETRY`]); `DENY` and
    /// `RSTR` stop polling this upstream (RFC 5905 §7.4).
    fn kissed(&mut self, code: &[u8; 4]) {
        match code {
            b"RATE" => {
                self.min_poll = (self.min_poll * 2).min(MAX_RETRY);
                warn!(upstream = %self.addr, poll_s = self.min_poll.as_secs(), "NTP upstream asks for fewer polls (RATE)");
            }
            b"DENY" | b"RSTR" => {
                self.denied = true;
                warn!(upstream = %self.addr, code = %String::from_utf8_lossy(code), "NTP upstream refuses us; not polled again");
            }
            _ => {}
        }
    }

    /// When to poll next after a poll at `now`.
    fn schedule(&mut self, now: Instant) {
        let wait = if self.failures >= crate::core::upstream::UNREACHABLE_AFTER {
            // Retried with backoff: 2, 4, … 32 s.
            let k = (self.failures - crate::core::upstream::UNREACHABLE_AFTER + 1).min(5);
            (UPSTREAM_POLL * 2u32.pow(k)).min(MAX_RETRY)
        } else if self.answered < FIRST_POLLS {
            UPSTREAM_FIRST_POLLS
        } else {
            UPSTREAM_POLL
        };
        self.next = now + wait.max(self.min_poll);
    }
}

/// Follows `addrs` (`HOST[:PORT]`) for the client whose core is `core`: while it is master,
/// polls each with NTP client requests and hands every answer to the core, which steers the
/// clock (docs/NTP.md §6). While it is not master, nothing is sent. Unanswered polls are
/// retried with backoff and logged once per outage; the clock runs free meanwhile.
pub async fn follow<C: Clock>(
    core: Arc<Mutex<ClientCore>>,
    clock: C,
    addrs: Vec<String>,
    shutdown: CancellationToken,
) -> Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| Error::Config(format!("cannot open a socket for NTP upstreams: {e}")))?;
    let socket6 = UdpSocket::bind("[::]:0").await.ok();
    info!(upstreams = ?addrs, "following NTP upstreams while master");
    let now = Instant::now();
    let mut polls: Vec<Poll> = addrs
        .into_iter()
        .map(|addr| Poll {
            addr,
            to: None,
            next: now,
            pending: None,
            answered: 0,
            failures: 0,
            warned: false,
            min_poll: Duration::ZERO,
            denied: false,
        })
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut buf = vec![0u8; MAX_REQUEST_LEN + 1];
    let mut buf6 = vec![0u8; MAX_REQUEST_LEN + 1];
    loop {
        let got = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => None,
            r = socket.recv_from(&mut buf) => r.ok().map(|(n, from)| (buf[..n].to_vec(), from)),
            r = recv_on(socket6.as_ref(), &mut buf6) => r.ok().map(|(n, from)| (buf6[..n].to_vec(), from)),
        };
        let t4 = clock.now_us();
        if let Some((bytes, from)) = got {
            // Only the answer to the request in flight counts: a stray, late or forged datagram
            // (another origin) is dropped without touching anything.
            let Some(origin) = Packet::decode(&bytes).map(|p| p.origin_ts) else {
                continue;
            };
            let Some(i) = polls
                .iter()
                .position(|p| p.to == Some(from) && p.pending.is_some_and(|(s, _, _)| s == origin))
            else {
                continue;
            };
            let p = &mut polls[i];
            let (sent, t1, _) = p.pending.take().expect("pending");
            if let Some(code) = kiss_code(&bytes) {
                p.kissed(&code);
            }
            let taken = core
                .lock()
                .expect("not poisoned")
                .on_upstream_packet(i, &bytes, sent, t1, t4);
            // An unusable reply was counted as a miss by the core already.
            if taken == UpstreamReply::Unusable {
                p.failed();
            } else {
                p.answered();
            }
            continue;
        }
        let wants = core.lock().expect("not poisoned").wants_upstreams();
        let now = Instant::now();
        let missed = |p: &mut Poll, i: usize| {
            p.failed();
            core.lock().expect("not poisoned").on_upstream_missed(i);
        };
        for (i, p) in polls.iter_mut().enumerate() {
            if p.pending
                .is_some_and(|(_, _, at)| now.duration_since(at) > REPLY_TIMEOUT)
            {
                p.pending = None;
                missed(p, i);
            }
            if !wants {
                // Not master: start over with fast polls when it is again.
                p.answered = 0;
                p.next = now;
                continue;
            }
            if p.pending.is_some() || now < p.next || p.denied {
                continue;
            }
            p.schedule(now);
            if p.to.is_none() {
                // Bounded, so that a slow name server cannot hold the other upstreams' replies.
                p.to = tokio::time::timeout(RESOLVE_TIMEOUT, resolve(&p.addr))
                    .await
                    .ok()
                    .flatten();
                match p.to {
                    Some(to) => core
                        .lock()
                        .expect("not poisoned")
                        .upstream_resolved(i, to.ip()),
                    None => {
                        missed(p, i);
                        continue;
                    }
                }
            }
            let to = p.to.expect("resolved");
            let t1 = clock.now_us();
            // Our transmit timestamp is random (RFC 5905 §9.1's advice for clients that do not
            // need it): the reply must echo it, which an off-path forger cannot guess.
            let sent = rand::random::<u64>() | 1;
            let req = Packet {
                version: 4,
                mode: 3,
                poll: 0,
                transmit_ts: sent,
                ..Packet::default()
            }
            .encode();
            let s = match (to, &socket6) {
                (SocketAddr::V6(_), Some(s6)) => s6,
                _ => &socket,
            };
            if let Err(e) = s.send_to(&req, to).await {
                warn!(upstream = %p.addr, error = %e, "cannot send to NTP upstream");
                p.to = None;
                missed(p, i);
                continue;
            }
            p.pending = Some((sent, t1, now));
        }
    }
}

/// A datagram from `s`, or never without a socket.
async fn recv_on(s: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match s {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// `HOST[:PORT]` (port 123 by default) to a socket address, preferring IPv4.
async fn resolve(addr: &str) -> Option<SocketAddr> {
    let (host, port) = crate::net::host_port(addr, 123)?;
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
}
