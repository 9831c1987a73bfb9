//! A cluster of real `aquifer` processes (`--peers`), with helpers to find
//! leaders, isolate nodes and add a joiner.

use std::time::{Duration, Instant};

use crate::pki::{CertFiles, TestCa};
use crate::process::{free_port, ServerOpts, ServerProcess};
use crate::timing::POLL;

/// A `peers` entry: the client port, then the peer port.
fn peer_entry(id: u64, port: u16, peer_port: u16) -> String {
    format!("\"{id}=127.0.0.1:{port}/127.0.0.1:{peer_port}\"")
}

/// A cluster of `aquifer serve` processes on loopback: node ids 1..=n,
/// every group replicated on all, tier-2 in one shared directory (what S3
/// is in production).
pub struct TestCluster {
    pub nodes: Vec<ServerProcess>,
    /// Each node's peer port (node-to-node services), by node id - 1.
    pub peer_ports: Vec<u16>,
    /// The cluster CA: the nodes talk to each other over mutual TLS with
    /// certificates it signed, as in production.
    pub ca: TestCa,
    /// The harness's own peer certificate (fault injection is a peer call).
    harness: CertFiles,
    /// Holds the shared tier-2 directory.
    shared: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` nodes and waits until every one serves. `top` and `tier2`
    /// are extra TOML lines for the top level and the `[tier2]` table.
    pub async fn start(n: usize, top: &str, tier2: &str) -> TestCluster {
        TestCluster::start_with(n, |_| top.to_string(), tier2).await
    }

    /// Like [`start`](Self::start), with top-level TOML lines of each
    /// node's own: `top(id)` (a listener port of its own, say).
    pub async fn start_with(n: usize, top: impl Fn(u64) -> String, tier2: &str) -> TestCluster {
        let shared = tempfile::Builder::new()
            .prefix("aquifer-cluster-")
            .tempdir()
            .expect("temp dir");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers: Vec<String> = (0..n)
            .map(|i| peer_entry(i as u64 + 1, ports[i], peer_ports[i]))
            .collect();
        let ca = TestCa::new("aquifer test cluster CA");
        let mut nodes: Vec<ServerProcess> = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| {
                let config = format!(
                    "node_id = {}\npeers = [{}]\n{}\n[raft]\nfault_injection = true\n\
                     [tier2]\nurl = \"file://{}\"\n{tier2}\n{}",
                    i + 1,
                    peers.join(", "),
                    top(i as u64 + 1),
                    shared.path().join("tier2").display(),
                    ca.peer_tls_toml(&ca.issue(&format!("node-{}", i + 1)))
                );
                ServerProcess::spawn(ServerOpts {
                    config: Some(config),
                    port: Some(port),
                    ..ServerOpts::default()
                })
            })
            .collect();
        for node in &mut nodes {
            node.wait_ready().await;
        }
        let harness = ca.issue("test-harness");
        TestCluster {
            nodes,
            peer_ports,
            ca,
            harness,
            shared,
        }
    }

    /// Starts one more node with `--join` (not yet a member: add it with
    /// `add_node`) and returns its id.
    pub async fn spawn_joiner(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let (port, peer_port) = (free_port(), free_port());
        let mut peers: Vec<String> = self
            .nodes
            .iter()
            .zip(&self.peer_ports)
            .enumerate()
            .map(|(i, (n, &pp))| peer_entry(i as u64 + 1, n.port(), pp))
            .collect();
        peers.push(peer_entry(id, port, peer_port));
        self.peer_ports.push(peer_port);
        let config = format!(
            "node_id = {id}\npeers = [{}]\njoin = true\n[raft]\nfault_injection = true\n\
             [tier2]\nurl = \"file://{}\"\n{}",
            peers.join(", "),
            self.shared.path().join("tier2").display(),
            self.ca.peer_tls_toml(&self.ca.issue(&format!("node-{id}")))
        );
        let mut node = ServerProcess::spawn(ServerOpts {
            config: Some(config),
            port: Some(port),
            ..ServerOpts::default()
        });
        node.wait_ready().await;
        self.nodes.push(node);
        id
    }

    /// The tier-2 directory all nodes share.
    pub fn tier2_dir(&self) -> std::path::PathBuf {
        self.shared.path().join("tier2")
    }

    /// Node `id` (1-based).
    pub fn node(&mut self, id: u64) -> &mut ServerProcess {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Every group's leader as the running nodes report them: group name
    /// → node id (groups without a known leader are missing).
    pub async fn leaders(&self) -> std::collections::HashMap<String, u64> {
        self.leaders_among(&[]).await
    }

    /// Like [`leaders`](Self::leaders), asking only nodes not in `skip`
    /// (an isolated node may still believe it leads).
    pub async fn leaders_among(&self, skip: &[u64]) -> std::collections::HashMap<String, u64> {
        let mut leaders = std::collections::HashMap::new();
        for status in self.statuses().await {
            if skip.contains(&status.node_id) {
                continue;
            }
            for g in status.groups {
                // A node's own word that it leads is the one to trust.
                if g.leader_id == status.node_id {
                    leaders.insert(g.name, g.leader_id);
                }
            }
        }
        leaders
    }

    /// Every running node's own view of the cluster (those that answer).
    pub async fn statuses(&self) -> Vec<aquifer_proto::v1::ClusterStatus> {
        let mut statuses = Vec::new();
        for node in &self.nodes {
            let Ok(channel) =
                tonic::transport::Endpoint::from_shared(format!("http://{}", node.addr()))
                    .expect("endpoint")
                    .connect_timeout(Duration::from_millis(500))
                    .connect()
                    .await
            else {
                continue;
            };
            let mut client = aquifer_proto::v1::cluster_client::ClusterClient::new(channel);
            if let Ok(status) = client
                .status(aquifer_proto::v1::ClusterStatusRequest {})
                .await
            {
                statuses.push(status.into_inner());
            }
        }
        statuses
    }

    /// Cuts node `isolated` off from the others (raft messages both ways;
    /// clients still reach it). Nodes that are down are skipped.
    pub async fn isolate(&self, isolated: u64) {
        let all: Vec<u64> = (1..=self.nodes.len() as u64).collect();
        for id in &all {
            let drop_to: Vec<u64> = if *id == isolated {
                all.iter().copied().filter(|&o| o != isolated).collect()
            } else {
                vec![isolated]
            };
            self.set_faults(
                *id,
                aquifer_proto::v1::Faults {
                    drop_to,
                    ..Default::default()
                },
            )
            .await;
        }
    }

    /// Every other node drops the snapshots it sends to node `to` (and
    /// nothing else).
    pub async fn drop_snapshots_to(&self, to: u64) {
        for id in (1..=self.nodes.len() as u64).filter(|&id| id != to) {
            self.set_faults(
                id,
                aquifer_proto::v1::Faults {
                    drop_snapshots_to: vec![to],
                    ..Default::default()
                },
            )
            .await;
        }
    }

    /// Ends every partition.
    pub async fn heal(&self) {
        for id in 1..=self.nodes.len() as u64 {
            self.set_faults(id, aquifer_proto::v1::Faults::default())
                .await;
        }
    }

    /// Where node `id`'s peer port is (`cluster add-node`'s address takes
    /// `CLIENT/PEER`).
    pub fn address_spec(&self, id: u64) -> String {
        let i = (id - 1) as usize;
        format!("{}/127.0.0.1:{}", self.nodes[i].addr(), self.peer_ports[i])
    }

    /// A channel to node `id`'s peer port trusting the cluster CA and
    /// presenting `cert` (one of the cluster CA's, or a stranger's).
    pub fn peer_endpoint(&self, id: u64, cert: &CertFiles) -> tonic::transport::Endpoint {
        let port = self.peer_ports[(id - 1) as usize];
        let read = |p: &std::path::Path| std::fs::read(p).expect("read PEM");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(
                &self.ca.ca_file,
            )))
            .identity(tonic::transport::Identity::from_pem(
                read(&cert.cert_file),
                read(&cert.key_file),
            ));
        tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .expect("endpoint")
            .tls_config(tls)
            .expect("TLS config")
            .connect_timeout(Duration::from_millis(500))
    }

    /// Fault injection is served on the peer port only (as a peer would).
    async fn set_faults(&self, id: u64, faults: aquifer_proto::v1::Faults) {
        let Ok(channel) = self.peer_endpoint(id, &self.harness).connect().await else {
            return; // down: nothing to cut
        };
        aquifer_proto::v1::cluster_client::ClusterClient::new(channel)
            .set_faults(faults)
            .await
            .unwrap_or_else(|e| panic!("set faults on node {id}: {e}"));
    }

    /// Waits until `group` has a leader among the running nodes.
    pub async fn leader_of(&self, group: &str) -> u64 {
        self.leader_among(group, &[]).await
    }

    /// Waits until `group` has a leader among the running nodes not in `skip`.
    pub async fn leader_among(&self, group: &str, skip: &[u64]) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(&id) = self.leaders_among(skip).await.get(group) {
                return id;
            }
            assert!(Instant::now() < deadline, "no leader for {group} in 30 s");
            tokio::time::sleep(POLL).await;
        }
    }
}
