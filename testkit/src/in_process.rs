//! An in-process cluster: N nodes (`aquifer_server::serve`), each with its
//! own data directory, listening on free loopback ports, all in the test's
//! own process and talking real gRPC to each other.
//!
//! Cheaper than processes (no binary, shared runtime, a node stops in a
//! blink) and possible because a node holds no process-wide state. Use it
//! for cluster behaviour that needs no `kill -9`; crash tests keep using
//! real processes ([`crate::process`]). Dropping the cluster stops every node
//! and removes its directories, even on panic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aquifer_proto::v1::cluster_client::ClusterClient;
use aquifer_proto::v1::{ClusterStatus, ClusterStatusRequest};
use aquifer_server::ServerConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process node.
struct Running {
    stop: oneshot::Sender<()>,
    served: JoinHandle<Result<(), aquifer_server::Error>>,
}

pub struct InProcessCluster {
    /// Node `id` is at index `id - 1`; None once stopped.
    nodes: Vec<Option<Running>>,
    addrs: Vec<String>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl InProcessCluster {
    /// Starts `n` nodes sharing a local tier-2 directory, `containers`
    /// containers each, replication factor `n`.
    pub async fn start(n: u64, containers: u32) -> InProcessCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        // Each node's peer port is a free port of its own (not PORT + 1,
        // which may be taken).
        let peers: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}/127.0.0.1:{}", i + 1, free_port()))
            .collect();
        let tier2 = dir.path().join("tier2");
        let mut nodes = Vec::new();
        for id in 1..=n {
            let mut config = ServerConfig {
                node_id: id,
                peers: peers.clone(),
                listen: addrs[(id - 1) as usize].parse().expect("loopback address"),
                data_dir: dir.path().join(format!("d{id}")),
                containers,
                replication_factor: n as u32,
                ..ServerConfig::default()
            };
            config.tier2.url = Some(format!("file://{}", tier2.display()));
            let (stop, stopped) = oneshot::channel::<()>();
            let served = tokio::spawn(aquifer_server::serve(config, async {
                let _ = stopped.await;
            }));
            nodes.push(Some(Running { stop, served }));
        }
        InProcessCluster {
            nodes,
            addrs,
            _dir: dir,
        }
    }

    /// The address clients reach node `id` at.
    pub fn addr(&self, id: u64) -> &str {
        &self.addrs[(id - 1) as usize]
    }

    /// The ids of the nodes still running.
    pub fn running(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|&id| self.nodes[(id - 1) as usize].is_some())
            .collect()
    }

    /// Stops node `id` as its shutdown signal would, and waits until it has
    /// served its last call and let go of its groups.
    pub async fn stop(&mut self, id: u64) {
        let Some(node) = self.nodes[(id - 1) as usize].take() else {
            return;
        };
        let _ = node.stop.send(());
        let served = tokio::time::timeout(Duration::from_secs(30), node.served)
            .await
            .unwrap_or_else(|_| panic!("node {id} did not stop within 30 s"))
            .expect("the node's task");
        served.unwrap_or_else(|e| panic!("node {id} failed: {e}"));
    }

    /// Node `id`'s own view of the cluster, if it answers.
    pub async fn status(&self, id: u64) -> Option<ClusterStatus> {
        let mut c = ClusterClient::connect(format!("http://{}", self.addr(id)))
            .await
            .ok()?;
        Some(c.status(ClusterStatusRequest {}).await.ok()?.into_inner())
    }

    /// Every group's leader by its own word (group name → node id), asking
    /// the running nodes.
    pub async fn leaders(&self) -> HashMap<String, u64> {
        let mut leaders = HashMap::new();
        for id in self.running() {
            let Some(status) = self.status(id).await else {
                continue;
            };
            for g in status.groups {
                if g.leader_id == status.node_id {
                    leaders.insert(g.name, g.leader_id);
                }
            }
        }
        leaders
    }

    /// Waits until each of `groups` has a leader among the running nodes,
    /// and returns them.
    pub async fn wait_for_leaders(
        &self,
        groups: &[String],
        timeout: Duration,
    ) -> HashMap<String, u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders = self.leaders().await;
            let running = self.running();
            let all = groups
                .iter()
                .all(|g| leaders.get(g).is_some_and(|n| running.contains(n)));
            if all {
                return leaders;
            }
            assert!(
                Instant::now() < deadline,
                "no leader for every group of {groups:?} within {timeout:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for InProcessCluster {
    fn drop(&mut self) {
        // The runtime ends the nodes' tasks; the signal lets them stop
        // cleanly first where the runtime still runs.
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            let _ = node.stop.send(());
            node.served.abort();
        }
    }
}
