//! Where this client's time comes from, and what its NTP service says about it (docs/NTP.md):
//! a follower follows its master; a master follows its own clock, or, with NTP upstreams, steers
//! its clock to the one the selection picks (`core::upstream`), with the same estimator and
//! discipline a follower uses toward the reference.

use super::{ClientCore, UpdateOutcome, SYNCED_US};
use crate::core::clock::Action;
use crate::core::ntp;
use crate::core::protocol::EventKind;
use crate::core::upstream::{self, Reply, Status, Upstream};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What became of a reply from an upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamReply {
    /// Not a usable answer to the request (counted as a missed poll).
    Unusable,
    /// Taken; what the master did with its clock (`None`: not master, or nothing selected).
    Taken(Option<UpdateOutcome>),
}

/// The NTP upstreams a master follows, and how far it got.
#[derive(Debug, Clone, Default)]
pub struct Follow {
    upstreams: Vec<Upstream>,
    /// The selected upstream, while this client is master and steers to it.
    following: Option<usize>,
    /// Within 1 ms of it, confirmed by a second sample.
    synced: bool,
    /// Corrections applied since it became master.
    applied: u32,
}

impl Follow {
    /// This client is not master: it steers to no upstream, and will start over if it is again.
    pub fn stop(&mut self) {
        self.following = None;
        self.synced = false;
        self.applied = 0;
    }
}

impl ClientCore {
    /// Whether this client is the master, by the last update.
    pub fn is_master(&self) -> bool {
        self.master.is_some_and(|(m, _)| m == self.id)
    }

    /// The NTP servers to follow while master (`HOST[:PORT]`, validated by the settings).
    pub fn set_upstreams(&mut self, addrs: &[String]) {
        self.follow = Follow {
            upstreams: addrs
                .iter()
                .take(upstream::MAX_UPSTREAMS)
                .map(|a| Upstream::new(a))
                .collect(),
            ..Follow::default()
        };
    }

    /// Upstreams to poll now: this client's, while it is master.
    pub fn wants_upstreams(&self) -> bool {
        self.is_master() && !self.follow.upstreams.is_empty()
    }

    /// Upstream `i` resolved to `ip` (its reference id when followed).
    pub fn upstream_resolved(&mut self, i: usize, ip: IpAddr) {
        if let Some(u) = self.follow.upstreams.get_mut(i) {
            u.ip = Some(ip);
        }
    }

    /// Whether upstream `i` counts as unreachable (poll it less often).
    pub fn upstream_unreachable(&self, i: usize) -> bool {
        self.follow
            .upstreams
            .get(i)
            .is_some_and(|u| u.state == upstream::State::Unreachable)
    }

    /// A poll of upstream `i` went unanswered. Once the upstream followed is unreachable, the
    /// master stops following it at once (it runs free, and says so: stratum 10, `LOCL`).
    pub fn on_upstream_missed(&mut self, i: usize) {
        if let Some(u) = self.follow.upstreams.get_mut(i) {
            u.missed();
            if u.state == upstream::State::Unreachable && self.follow.following == Some(i) {
                self.follow.stop();
            }
        }
    }

    /// `bytes` from upstream `i`, the answer to the request with transmit timestamp `sent` made
    /// at host time `t1_host_us`, received at `t4_host_us`. A reply that is not usable
    /// ([`Reply::parse`], with this client's own address as the reference id that would make a
    /// loop) counts as a missed poll. While this client is master, the clock is then steered to
    /// the selected upstream.
    pub fn on_upstream_packet(
        &mut self,
        i: usize,
        bytes: &[u8],
        sent: u64,
        t1_host_us: i64,
        t4_host_us: i64,
    ) -> UpstreamReply {
        let (t1, t4) = (self.clock.raw_at(t1_host_us), self.clock.raw_at(t4_host_us));
        let own = Some(ntp::refid_of(self.ip));
        let (Some(reply), Some(u)) = (
            Reply::parse(bytes, sent, t1, t4, own),
            self.follow.upstreams.get_mut(i),
        ) else {
            self.on_upstream_missed(i);
            return UpstreamReply::Unusable;
        };
        u.reply(reply);
        UpstreamReply::Taken(self.steer(t4_host_us))
    }

    /// Steers this master's clock to the selected upstream at host time `host_us`.
    fn steer(&mut self, host_us: i64) -> Option<UpdateOutcome> {
        if !self.is_master() {
            // Not master (any more): the clock follows the master, not the upstreams.
            self.follow.stop();
            return None;
        }
        let raw = self.clock.raw_at(host_us);
        let chosen = upstream::select(&mut self.follow.upstreams, raw, self.follow.following);
        if chosen.is_none() {
            // Nothing to follow: run free (a switch between agreeing upstreams keeps `synced`).
            self.follow.synced = false;
        }
        self.follow.following = chosen;
        let u = &self.follow.upstreams[chosen?];
        let est = u.estimate()?;
        let addr = u.addr.clone();
        // Raw clock minus upstream, plus the correction: this clock minus the upstream.
        let own = est.offset_at(raw) + self.clock.correction_at(host_us);
        if let Some(f) = est.freq_ppm {
            self.clock.set_freq(host_us, -f);
        }
        let offset_us = (-own).round() as i64;
        let was_synced = self.follow.synced;
        let action = self.discipline.decide(offset_us, was_synced);
        if self.follow.applied > 0 && offset_us.abs() < SYNCED_US {
            self.follow.synced = true;
        }
        self.follow.applied += 1;
        self.corrected_at_us = Some(host_us);
        match action {
            Action::Step(delta) => {
                self.clock.step(host_us, delta);
                self.stats.steps += 1;
                if was_synced {
                    self.max_step_us = self.max_step_us.max(delta.abs());
                }
                if was_synced && delta.abs() > self.discipline.config.step_threshold_us {
                    let data = BTreeMap::from([("step_us".to_string(), delta.into())]);
                    let text = format!("stepped {:+.6} s to follow NTP {addr}", delta as f64 / 1e6);
                    self.record(EventKind::ClockStepped, text, data, None, host_us);
                }
            }
            Action::Slew { delta_us, rate_ppm } => self.clock.slew(host_us, delta_us, rate_ppm),
        }
        if self.follow.synced && !was_synced {
            let data = BTreeMap::from([("offset_us".to_string(), offset_us.into())]);
            let text = format!("synced: within {} µs of NTP {addr}", offset_us.abs());
            self.record(EventKind::ClockSynced, text, data, None, host_us);
        }
        Some(UpdateOutcome::Applied { offset_us, action })
    }

    /// The upstream this master follows, when it is synchronized to it.
    fn followed(&self) -> Option<&Upstream> {
        let i = self.follow.following.filter(|_| self.follow.synced)?;
        let u = &self.follow.upstreams[i];
        (self.is_master() && u.state == upstream::State::Selected).then_some(u)
    }

    /// What the client's time follows, as reports name it: the upstream a master follows,
    /// `LOCL` for a master on its own clock, the master's address for a follower.
    pub fn reference_name(&self) -> Option<String> {
        if let Some(u) = self.followed() {
            return Some(u.addr.clone());
        }
        if self.is_master() {
            return Some("LOCL".into());
        }
        self.master_ip.map(|ip| ip.to_string())
    }

    /// Every upstream's status at host time `host_us` (empty without upstreams).
    pub fn upstream_statuses(&self, host_us: i64) -> Vec<Status> {
        let raw = self.clock.raw_at(host_us);
        let correction = self.clock.correction_at(host_us);
        self.follow
            .upstreams
            .iter()
            .map(|u| u.status(raw, correction))
            .collect()
    }

    /// What this client's NTP service says about its time at host time `host_us`
    /// (docs/NTP.md): a master on its own clock is the cluster's reference (stratum
    /// [`ntp::LOCAL_STRATUM`], `LOCL`); a master synchronized to an upstream is one stratum
    /// below it and names it; a follower is one stratum below its master, names its address,
    /// and is synchronized once its clock is within 1 ms of its target. A follower's root delay
    /// is the round trip of its best probe to the reference; its root dispersion is its ε
    /// (`max_error_us`, docs/PROTOCOL.md §15.6) and, while it has none, half the round trip
    /// (the asymmetry bound) plus 15 ppm of the time since its newest probe sample.
    pub fn ntp_source(&self, host_us: i64) -> ntp::Source {
        let raw = self.clock.raw_at(host_us);
        let reference_us = self.clock.now_at(self.corrected_at_us.unwrap_or(host_us));
        if let Some(u) = self.followed() {
            return ntp::Source {
                synced: true,
                stratum: u
                    .stratum()
                    .unwrap_or(ntp::UNSYNCED_STRATUM)
                    .saturating_add(1)
                    .min(ntp::UNSYNCED_STRATUM),
                reference_id: u.ip.map_or([0; 4], ntp::refid_of),
                reference_us,
                root_delay_us: u.root_delay_us(),
                root_dispersion_us: u.dispersion_us(raw),
            };
        }
        if self.is_master() {
            return ntp::Source {
                synced: true,
                stratum: ntp::LOCAL_STRATUM,
                reference_id: ntp::LOCAL_REFID,
                reference_us,
                root_delay_us: 0,
                root_dispersion_us: ntp::dispersion_us(
                    0,
                    host_us - self.corrected_at_us.unwrap_or(host_us),
                ),
            };
        }
        // Without an estimate (none yet, or the leader changed and it starts over), the bound is
        // the sync threshold, grown since the last correction: never a claim of no error.
        let since = host_us - self.corrected_at_us.unwrap_or(host_us);
        let (delay, bound, age) = self
            .estimator
            .estimate()
            .map_or((0, SYNCED_US, since), |e| {
                (e.min_delay_us, e.min_delay_us / 2, raw - e.at_raw_us)
            });
        ntp::Source {
            synced: self.synced,
            // Stratum 16 is "unsynchronized": a chain that long is no time source.
            stratum: self
                .master_stratum
                .unwrap_or(ntp::LOCAL_STRATUM)
                .saturating_add(1)
                .min(ntp::UNSYNCED_STRATUM),
            reference_id: self.master_ip.map_or([0; 4], ntp::refid_of),
            reference_us,
            root_delay_us: delay,
            root_dispersion_us: self
                .max_error(host_us)
                .map_or_else(|| ntp::dispersion_us(bound, age), |e| e.ceil() as i64),
        }
    }
}
