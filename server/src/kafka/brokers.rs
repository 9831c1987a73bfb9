//! Brokers: which nodes a Kafka client is told of, where their listeners
//! are, and which broker leads a raft group (a partition's container, or
//! `meta` for the group coordinator).
//!
//! This node's listener is the one it serves; the others' are what they
//! reported in their last cluster status (the balance loop asks every
//! node each pass), so a node that stopped answering drops out of the
//! broker list within a pass. It only answers from what the node already
//! knows; it never calls another node.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;

use super::Kafka;
use crate::group::{Group, StateMachine};

/// Where a broker's Kafka listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listener {
    pub host: StrBytes,
    pub port: i32,
}

/// A group's leader as a broker, and the leader epoch to advertise (the
/// raft term where this node knows it, else -1: unknown, which clients
/// take without comparing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Leader {
    pub node: u64,
    pub epoch: i32,
}

/// The broker id of node `id` (node ids are small; Kafka's are i32).
pub(super) fn broker_id(id: u64) -> BrokerId {
    BrokerId(i32::try_from(id).unwrap_or(i32::MAX))
}

/// `addr` as a client reaches it: a listener on every interface
/// (0.0.0.0 or ::) is reached at its node's client host instead.
fn listener_at(addr: SocketAddr, client_address: Option<&str>) -> Listener {
    let host = match client_address.and_then(|a| a.rsplit_once(':')) {
        Some((host, _)) if addr.ip().is_unspecified() => host.to_string(),
        _ => addr.ip().to_string(),
    };
    Listener {
        host: StrBytes::from_string(host),
        port: i32::from(addr.port()),
    }
}

impl Kafka {
    /// Every broker a client may be sent to: this node and every other
    /// node whose listener is known, by node id.
    pub(super) fn brokers(&self) -> BTreeMap<u64, Listener> {
        let me = self.node.config.node_id;
        let mut all: BTreeMap<u64, Listener> = self
            .node
            .membership
            .kafka_listeners()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, addr)| {
                (
                    id,
                    listener_at(addr, self.node.addresses.get(id).as_deref()),
                )
            })
            .collect();
        all.insert(
            me,
            listener_at(self.advertised, self.node.addresses.get(me).as_deref()),
        );
        all
    }

    /// Who leads `group`, if a broker does: this node (with its term), the
    /// leader its replica follows, or the leader the other nodes report;
    /// None while there is none, or it has no Kafka listener known here.
    pub(super) fn leader_of<S: StateMachine>(
        &self,
        group: &Group<S>,
        brokers: &BTreeMap<u64, Listener>,
    ) -> Option<Leader> {
        let me = self.node.config.node_id;
        let epoch = |term: u64| i32::try_from(term).unwrap_or(i32::MAX);
        if let Some(term) = group.leader_term() {
            return Some(Leader {
                node: me,
                epoch: epoch(term),
            });
        }
        let status = group.status();
        let leader = if status.leader != 0 && status.leader != me && !status.is_blank() {
            Leader {
                node: status.leader,
                epoch: epoch(status.term),
            }
        } else {
            Leader {
                node: self.node.membership.leader(group.name())?,
                epoch: -1,
            }
        };
        (leader.node != me && brokers.contains_key(&leader.node)).then_some(leader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_on_every_interface_is_reached_at_the_client_host() {
        let any: SocketAddr = "0.0.0.0:9092".parse().unwrap();
        let one: SocketAddr = "127.0.0.2:9092".parse().unwrap();
        let at = |a, c| {
            let l = listener_at(a, c);
            (l.host.to_string(), l.port)
        };
        assert_eq!(at(any, Some("10.0.0.5:7000")), ("10.0.0.5".into(), 9092));
        assert_eq!(at(any, None), ("0.0.0.0".into(), 9092));
        assert_eq!(at(one, Some("10.0.0.5:7000")), ("127.0.0.2".into(), 9092));
    }
}
