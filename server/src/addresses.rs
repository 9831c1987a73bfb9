//! The cluster's nodes and the addresses each is reached at, as one node
//! knows them: seeded from the configuration, then kept to the membership in
//! the metadata group.
//!
//! A node has two addresses, kept together as one *address spec*
//! `CLIENT/PEER` (in `peers`, `cluster add-node` and the metadata): clients
//! call the first, the other nodes (raft, snapshots, forwarding) the second.
//! A spec without `/PEER` means the client host at the client port + 1.
//!
//! Owned by the [`crate::node::Node`] and handed to whoever names a node to
//! a client (groups, when they refuse a proposal with where the leader is).
//! It never decides membership: it only remembers what it was told.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

#[derive(Clone, Debug, Default)]
pub struct NodeAddresses {
    nodes: Arc<RwLock<BTreeMap<u64, String>>>,
}

impl NodeAddresses {
    pub fn new(nodes: BTreeMap<u64, String>) -> NodeAddresses {
        NodeAddresses {
            nodes: Arc::new(RwLock::new(nodes)),
        }
    }

    /// Replaces the node list (membership changed).
    pub fn set(&self, nodes: BTreeMap<u64, String>) {
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    /// The address clients reach node `id` at.
    pub fn get(&self, id: u64) -> Option<String> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.get(&id).map(|spec| client_address(spec).to_string())
    }

    /// The address the other nodes reach node `id` at.
    pub fn peer(&self, id: u64) -> Option<String> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.get(&id).map(|spec| peer_address(spec))
    }

    /// The peer address of the node whose client address is `client`
    /// (callers that only know where a redirect pointed); `client` itself
    /// when no node has it.
    pub fn peer_of(&self, client: &str) -> String {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes
            .values()
            .find(|spec| client_address(spec) == client)
            .map(|spec| peer_address(spec))
            .unwrap_or_else(|| client.to_string())
    }

    /// Every node and its address spec.
    pub fn all(&self) -> BTreeMap<u64, String> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether there is more than one node.
    pub fn is_cluster(&self) -> bool {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).len() > 1
    }
}

/// The client half of an address spec.
pub fn client_address(spec: &str) -> &str {
    spec.split_once('/').map_or(spec, |(client, _)| client)
}

/// The peer half of an address spec: after the `/`, else the client host
/// at the client port + 1.
pub fn peer_address(spec: &str) -> String {
    if let Some((_, peer)) = spec.split_once('/') {
        return peer.to_string();
    }
    match spec.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(p) if p < u16::MAX => format!("{host}:{}", p + 1),
            _ => spec.to_string(),
        },
        None => spec.to_string(),
    }
}

/// The spec of a node at `client` and `peer` (None: the default peer port).
pub fn spec(client: &str, peer: Option<&str>) -> String {
    match peer.filter(|p| !p.is_empty()) {
        Some(p) => format!("{client}/{p}"),
        None => client.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_names_both_addresses_and_the_peer_port_defaults_to_the_next() {
        assert_eq!(client_address("h:7450/h:9000"), "h:7450");
        assert_eq!(peer_address("h:7450/h:9000"), "h:9000");
        assert_eq!(client_address("h:7450"), "h:7450");
        assert_eq!(peer_address("h:7450"), "h:7451");
        assert_eq!(peer_address("[::1]:7450"), "[::1]:7451");
        assert_eq!(spec("a:1", Some("b:2")), "a:1/b:2");
        assert_eq!(spec("a:1", None), "a:1");
        let a = NodeAddresses::new([(1, "a:1/b:2".to_string()), (2, "c:5".to_string())].into());
        assert_eq!(a.get(1).as_deref(), Some("a:1"));
        assert_eq!(a.peer(2).as_deref(), Some("c:6"));
        assert_eq!(a.peer_of("a:1"), "b:2");
        assert_eq!(a.peer_of("z:9"), "z:9");
    }
}
