//! Master election: which client's clock everyone follows.
//!
//! The rule is "the live client with the lowest IP", with addresses compared as numbers, never
//! as strings or concatenated digits (as text, `10.0.1.2` would rank below `10.0.0.100`).
//! Every IPv4 address ranks below every IPv6 address (IPv4-mapped IPv6 addresses
//! count as IPv4); ties, e.g. two processes advertising one address, are broken by the id's
//! 128-bit value so every server replica picks the same master.
//!
//! A master, once elected, keeps the role while its reports keep arriving, even if a lower
//! address joins, *until* that client has synced to it: re-electing on every join would make
//! every client chase an unsynced reference, while never handing over would leave the role, after
//! churn, with a client the rule does not name. A synced lower address takes over cleanly: its
//! clock already agrees with the master's, and the followers hold over while they change
//! reference. [`decide`] is the scheduler's whole decision and has no I/O.

use crate::core::protocol::{MasterRecord, StoredReport};
use std::net::IpAddr;
use uuid::Uuid;

/// How often a leader reads the lowest-ranked live clients while its master is alive, to hand the role to
/// a lower address that has synced ([`Decision::HandOver`]).
pub const HANDOVER_SCAN: std::time::Duration = std::time::Duration::from_secs(10);

/// A sort key in which "lower" means "preferred as master".
pub fn ip_rank(ip: &IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(v4) => (0, u128::from(u32::from(*v4))),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (0, u128::from(u32::from(v4))),
            None => (1, u128::from(*v6)),
        },
    }
}

/// A client's member in the live index (`ts:live`, see [`crate::core::protocol::LIVE_KEY`]): its
/// rank and id as fixed-width lowercase hex, `<family><32 hex digits of the address>:<id>`
/// (family `0` for IPv4, `1` for IPv6), so that members sort as strings exactly as
/// [`lowest_ip`] ranks them (the canonical hyphenated id sorts like its 128-bit value).
pub fn live_member(id: &Uuid, ip: &IpAddr) -> String {
    let (family, n) = ip_rank(ip);
    format!("{family}{n:032x}:{id}")
}

/// The id in a member made by [`live_member`].
pub fn member_id(member: &str) -> Option<Uuid> {
    member.get(34..)?.parse().ok()
}

/// The preferred master among `candidates` (id, ip), or `None` when there are none.
pub fn lowest_ip<'a, I>(candidates: I) -> Option<(Uuid, IpAddr)>
where
    I: IntoIterator<Item = (&'a Uuid, &'a IpAddr)>,
{
    candidates
        .into_iter()
        .min_by_key(|(id, ip)| (ip_rank(ip), id.as_u128()))
        .map(|(id, ip)| (*id, *ip))
}

/// What the scheduler should do this tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<'a> {
    /// No live client: publish nothing.
    NoClients,
    /// The current master is alive: broadcast its time.
    Keep(&'a StoredReport),
    /// Store this client as the new master, then broadcast its time. `previous` is the master it
    /// replaces, if there was one.
    Elect {
        master: &'a StoredReport,
        previous: Option<Uuid>,
    },
    /// The current master (`current`, alive) and a lower address that has synced to it: hand
    /// the role over.
    HandOver {
        master: &'a StoredReport,
        current: &'a StoredReport,
    },
}

/// How close a hand-over candidate's clock must be to the master's, by their offsets to the
/// same reference clock (µs): the followers will follow it without a visible change.
pub const HANDOVER_AGREE_US: i64 = 200;
/// How much older than the master's a candidate's last report may be (µs): a client that
/// stopped reporting is not handed the role while its key lives out the TTL.
pub const HANDOVER_FRESH_US: i64 = 2_000_000;

/// Whether `r`'s client can take over from master `m` now: it follows `m`, is synchronized (a
/// stratum below [`crate::core::ntp::UNSYNCED_STRATUM`]), reports as recently as `m` does, and
/// its clock agrees with `m`'s within [`HANDOVER_AGREE_US`] against one reference clock.
fn ready_to_take_over(r: &StoredReport, m: &StoredReport) -> bool {
    let (c, mr) = (&r.report, &m.report);
    let same_reference = c.ref_server_id.is_some() && c.ref_server_id == mr.ref_server_id;
    c.master_id == Some(mr.id)
        && c.stratum
            .is_some_and(|s| s < crate::core::ntp::UNSYNCED_STRATUM)
        && r.received_at_us >= m.received_at_us - HANDOVER_FRESH_US
        && same_reference
        && c.ref_offset_us
            .zip(mr.ref_offset_us)
            .is_some_and(|(a, b)| (a - b).abs() <= HANDOVER_AGREE_US)
}

/// Decides from the stored master (if any) and the live reports (whose keys have not expired).
pub fn decide<'a>(current: Option<&MasterRecord>, live: &'a [StoredReport]) -> Decision<'a> {
    let lowest = lowest_ip(live.iter().map(|r| (&r.report.id, &r.report.ip))).map(|(id, _)| {
        live.iter()
            .find(|r| r.report.id == id)
            .expect("lowest_ip returns one of the candidates")
    });
    if let Some(cur) = current {
        if let Some(r) = live.iter().find(|r| r.report.id == cur.id) {
            return match lowest {
                Some(l) if l.report.id != cur.id && ready_to_take_over(l, r) => {
                    Decision::HandOver {
                        master: l,
                        current: r,
                    }
                }
                _ => Decision::Keep(r),
            };
        }
    }
    let Some(master) = lowest else {
        return Decision::NoClients;
    };
    Decision::Elect {
        master,
        previous: current.map(|c| c.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::TimeReport;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn live_members_sort_like_ranks() {
        let ips = [
            "10.0.1.2",
            "10.0.0.100",
            "9.255.255.255",
            "::1",
            "255.255.255.255",
            "fe80::1",
            "::ffff:10.0.0.1",
            "2001:db8::10",
            "2001:db8::9",
            "127.0.0.2",
            "127.0.0.12",
        ];
        let mut clients: Vec<(Uuid, IpAddr)> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (id(i as u128 * 0x1_0000_0000_0001), ip.parse().unwrap()))
            .collect();
        // Two ids on one address: the tie is broken by the id, as lowest_ip does.
        clients.push((id(u128::MAX - 7), "10.0.0.100".parse().unwrap()));
        clients.push((id(3), "10.0.0.100".parse().unwrap()));
        let mut by_text: Vec<String> = clients.iter().map(|(i, ip)| live_member(i, ip)).collect();
        by_text.sort();
        let mut by_rank = clients.clone();
        by_rank.sort_by_key(|(i, ip)| (ip_rank(ip), i.as_u128()));
        let expected: Vec<String> = by_rank.iter().map(|(i, ip)| live_member(i, ip)).collect();
        assert_eq!(by_text, expected);
        for (i, ip) in &clients {
            assert_eq!(member_id(&live_member(i, ip)), Some(*i));
        }
        let low = lowest_ip(clients.iter().map(|(i, ip)| (i, ip))).unwrap();
        assert_eq!(by_text[0], live_member(&low.0, &low.1));
    }

    #[test]
    fn lowest_ip_is_numeric() {
        // (candidates, expected winner index)
        let table: &[(&[&str], usize)] = &[
            (&["10.0.1.2", "10.0.0.100"], 1),
            (&["172.17.0.10", "172.17.0.9"], 1),
            (&["9.255.255.255", "10.0.0.0"], 0),
            (&["127.0.0.12", "127.0.0.2", "127.0.0.100"], 1),
            (&["::1", "255.255.255.255"], 1),
            (&["fe80::1", "::2", "fe80::"], 1),
            (&["::ffff:10.0.0.1", "10.0.0.2"], 0),
            (&["2001:db8::10", "2001:db8::9"], 1),
        ];
        for (ips, want) in table {
            let ids: Vec<Uuid> = (0..ips.len() as u128).map(id).collect();
            let parsed: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
            let (winner, _) = lowest_ip(ids.iter().zip(parsed.iter())).unwrap();
            assert_eq!(winner, ids[*want], "{ips:?}");
        }
    }

    #[test]
    fn ties_broken_by_numeric_id() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let ids = [id(0x10), id(0x9), id(0x100)];
        let (winner, _) = lowest_ip(ids.iter().map(|i| (i, &ip))).unwrap();
        assert_eq!(winner, id(0x9));
    }

    #[test]
    fn empty_has_no_winner() {
        assert_eq!(lowest_ip(std::iter::empty()), None);
    }

    fn stored(n: u128, ip: &str) -> StoredReport {
        StoredReport {
            report: TimeReport::new(id(n), ip.parse().unwrap(), 0, 1),
            received_at_us: 0,
        }
    }

    fn record(n: u128, ip: &str) -> MasterRecord {
        MasterRecord {
            id: id(n),
            ip: ip.parse().unwrap(),
            elected_at_us: 0,
            epoch: 1,
        }
    }

    #[test]
    fn scheduler_decisions() {
        let live = vec![stored(1, "10.0.0.5"), stored(2, "10.0.0.3")];
        // No clients at all.
        assert_eq!(decide(None, &[]), Decision::NoClients);
        assert_eq!(
            decide(Some(&record(1, "10.0.0.5")), &[]),
            Decision::NoClients
        );
        // No master yet: lowest IP.
        assert_eq!(
            decide(None, &live),
            Decision::Elect {
                master: &live[1],
                previous: None
            }
        );
        // A live master is kept even though a lower IP exists, while that one is not synced.
        assert_eq!(
            decide(Some(&record(1, "10.0.0.5")), &live),
            Decision::Keep(&live[0])
        );
        let mut following = live.clone();
        let server = Some(id(50));
        for (r, off) in following.iter_mut().zip([1000, 1150]) {
            r.report.ref_server_id = server;
            r.report.ref_offset_us = Some(off);
        }
        following[1].report.master_id = Some(id(1));
        following[1].report.stratum = Some(crate::core::ntp::UNSYNCED_STRATUM);
        let cur = record(1, "10.0.0.5");
        assert_eq!(
            decide(Some(&cur), &following),
            Decision::Keep(&following[0]),
            "following, not synced yet"
        );
        // Once it is synced to the master, it takes over.
        following[1].report.stratum = Some(11);
        assert_eq!(
            decide(Some(&cur), &following),
            Decision::HandOver {
                master: &following[1],
                current: &following[0]
            }
        );
        // Not while its clock is further from the master's than HANDOVER_AGREE_US, its report
        // is older than the master's by more than HANDOVER_FRESH_US, or its offset is against
        // another reference.
        let mut far = following.clone();
        far[1].report.ref_offset_us = Some(1000 + HANDOVER_AGREE_US + 1);
        let mut silent = following.clone();
        silent[1].received_at_us -= HANDOVER_FRESH_US + 1;
        let mut elsewhere = following.clone();
        elsewhere[1].report.ref_server_id = Some(id(51));
        for (what, live) in [("far", far), ("silent", silent), ("elsewhere", elsewhere)] {
            assert_eq!(
                decide(Some(&cur), &live),
                Decision::Keep(&live[0]),
                "{what}"
            );
        }
        // An expired master is replaced by the lowest live IP.
        assert_eq!(
            decide(Some(&record(9, "10.0.0.1")), &live),
            Decision::Elect {
                master: &live[1],
                previous: Some(id(9))
            }
        );
    }
}
