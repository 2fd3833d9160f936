//! One node's logical clocks together, as every process keeps them.

use super::{HlcClock, Lamport, Stamp, VectorClock};

/// A node's Lamport clock and hybrid logical clock, and for a server replica its vector clock.
///
/// Every send and local event is [`NodeClocks::tick`]; every receipt [`NodeClocks::observe`].
/// `pt` is the node's disciplined physical clock (µs), or `None` while it has none it can
/// trust (a client that is not synced yet): then the stamp carries no HLC and a received HLC is
/// not taken in.
#[derive(Debug, Clone)]
pub struct NodeClocks {
    lamport: Lamport,
    hlc: HlcClock,
    /// This replica's id and vector clock; `None` for clients and tsc.
    vc: Option<(u64, VectorClock)>,
}

impl NodeClocks {
    /// A client's or tsc's clocks.
    pub fn new(max_offset_us: i64) -> Self {
        NodeClocks {
            lamport: Lamport::default(),
            hlc: HlcClock::new(max_offset_us),
            vc: None,
        }
    }

    /// Replica `id`'s clocks, vector clock included.
    pub fn replica(id: u64, max_offset_us: i64) -> Self {
        NodeClocks {
            vc: Some((id, VectorClock::default())),
            ..NodeClocks::new(max_offset_us)
        }
    }

    /// Continues a Lamport counter from `lt` (tsc keeps its counter between runs).
    pub fn resume_lamport(&mut self, lt: u64) {
        self.lamport = Lamport::from_value(self.lamport.value().max(lt));
    }

    /// The Lamport counter's last value.
    pub fn lamport(&self) -> u64 {
        self.lamport.value()
    }

    /// Remote timestamps refused for being too far ahead.
    pub fn hlc_refused(&self) -> u64 {
        self.hlc.refused
    }

    /// A send or a local event at physical time `pt`.
    pub fn tick(&mut self, pt: Option<i64>) -> Stamp {
        Stamp {
            lt: self.lamport.tick(),
            hlc: pt.map(|pt| self.hlc.now(pt)),
            vc: self.vc.as_mut().map(|(id, vc)| vc.tick(*id).clone()),
        }
    }

    /// The receipt of a message stamped `remote` at physical time `pt`; returns the receive
    /// event's stamp.
    pub fn observe(&mut self, remote: &Stamp, pt: Option<i64>) -> Stamp {
        let hlc = pt.map(|pt| match remote.hlc {
            Some(r) => self.hlc.observe(r, pt).0,
            None => self.hlc.now(pt),
        });
        let vc = self.vc.as_mut().map(|(id, vc)| match &remote.vc {
            Some(r) => vc.observe(*id, r).clone(),
            None => vc.tick(*id).clone(),
        });
        Stamp {
            lt: self.lamport.observe(remote.lt),
            hlc,
            vc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::logical::Causality;

    #[test]
    fn a_message_between_replicas_orders_every_clock() {
        let (mut a, mut b) = (NodeClocks::replica(1, 1000), NodeClocks::replica(2, 1000));
        let sent = a.tick(Some(5_000));
        let got = b.observe(&sent, Some(4_990));
        assert!(sent.lt < got.lt);
        assert!(sent.hlc < got.hlc, "{:?} < {:?}", sent.hlc, got.hlc);
        let (sv, gv) = (sent.vc.unwrap(), got.vc.unwrap());
        assert_eq!(sv.compare(&gv), Causality::Before);
    }

    #[test]
    fn without_a_trusted_clock_there_is_no_hlc() {
        let mut c = NodeClocks::new(1000);
        let s = c.tick(None);
        assert_eq!((s.lt, s.hlc, s.vc.clone()), (1, None, None));
        let r = c.observe(&s, None);
        assert_eq!((r.lt, r.hlc), (2, None));
        assert!(c.tick(Some(10)).hlc.is_some());
    }
}
