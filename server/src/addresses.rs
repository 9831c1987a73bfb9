//! The cluster's nodes and the address clients reach each at, as one node
//! knows them: seeded from the configuration, then kept to the membership in
//! the metadata group.
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
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Every node and its address.
    pub fn all(&self) -> BTreeMap<u64, String> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether there is more than one node.
    pub fn is_cluster(&self) -> bool {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).len() > 1
    }
}
