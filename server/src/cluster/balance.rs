//! The balancer: spreads container leadership evenly over the nodes, and
//! hears from every node which groups it leads (the leader hints that
//! redirects use) and where its Kafka listener is.
//!
//! It only ever asks a group to transfer leadership; it never changes
//! members or placement.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::members::Membership;
use super::peers::Peers;
use super::Transport;
use crate::addresses::NodeAddresses;
use crate::container::Containers;
use crate::controller::Controller;

/// How often a node checks whether it leads more containers than its share.
const BALANCE_INTERVAL: Duration = Duration::from_secs(3);

/// What the balancer needs of its node.
pub(crate) struct Balancer {
    pub me: u64,
    pub controller: Arc<Controller>,
    pub containers: Containers,
    pub peers: Arc<Peers>,
    pub addresses: NodeAddresses,
    pub transport: Arc<Transport>,
    pub membership: Arc<Membership>,
}

/// Spreads container leadership evenly: every [`BALANCE_INTERVAL`], a node
/// that leads more than its share hands one container to the voter of that
/// group that leads the fewest (one move per pass, so the counts settle in
/// between). Counts come from every node's own report of what it leads,
/// which also tells each node where to send requests for containers it
/// holds no replica of.
pub(crate) async fn balance_loop(node: Balancer, mut stop: watch::Receiver<bool>) {
    let me = node.me;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(BALANCE_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let nodes: Vec<u64> = node.controller.nodes().keys().copied().collect();
        let mut led: HashMap<u64, usize> = nodes.iter().map(|&n| (n, 0)).collect();
        let mut leaders = HashMap::new();
        for c in node.containers.iter().filter(|c| c.leader_term().is_some()) {
            leaders.insert(c.group().name().to_string(), me);
            *led.entry(me).or_default() += 1;
        }
        let mut kafka_listeners = HashMap::new();
        for status in node.peers.statuses(&node.addresses, me).await {
            // Empty: the node serves no Kafka listener.
            if let Ok(addr) = status.kafka_address.parse() {
                kafka_listeners.insert(status.node_id, addr);
            }
            let leading = status.groups.iter().filter(|g| {
                g.leader_id == status.node_id
                    && aquifer_proto::wire::parse_container_group(&g.name).is_some()
            });
            for g in leading {
                leaders.insert(g.name.clone(), status.node_id);
                *led.entry(status.node_id).or_default() += 1;
            }
        }
        node.membership.set_leaders(leaders);
        node.membership.set_kafka_listeners(kafka_listeners);
        let share = node.containers.len().div_ceil(nodes.len().max(1));
        let mine = led.get(&me).copied().unwrap_or(0);
        if mine <= share {
            continue;
        }
        // Only to nodes our raft messages reach: a transfer to a dead node
        // stalls the group's proposals until the transfer times out.
        let moves = node
            .containers
            .iter()
            .filter(|c| c.leader_term().is_some())
            .filter_map(|c| {
                let to = c
                    .group()
                    .status()
                    .voters
                    .into_iter()
                    .filter(|&n| n != me && node.transport.is_up(n))
                    .min_by_key(|n| led.get(n).copied().unwrap_or(0))?;
                Some((c, to, led.get(&to).copied().unwrap_or(0)))
            })
            .min_by_key(|(_, _, count)| *count);
        if let Some((c, to, count)) = moves {
            if count + 1 < mine {
                c.group().transfer_leader(to);
            }
        }
    }
}
