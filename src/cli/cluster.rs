//! `aquifer cluster ...`: status, add-node, remove-node, and the two tables
//! (nodes, groups) all three print.
//!
//! Owns the membership commands' flags and output; it must never change
//! membership without the user asking for exactly that node.

use std::io::Write;

use aquifer_client::ClusterStatus;
use clap::Subcommand;

use super::{header, write_table};

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// The nodes (health as the node at --addr sees them), and every raft
    /// group (the metadata group `meta` and each container) as its leader
    /// sees it: voters, learners (replicas catching up, and followers of
    /// `meta`), the nodes the placement puts it on (PLACED), term, and how
    /// far the leader has applied what is committed (LAG).
    Status,
    /// Add a node to a running cluster: start it first with
    /// `aquifer serve --join --node-id ID --listen ADDR --peers ...`; the
    /// placement then moves its share of container replicas to it (each
    /// joins as a learner, catches up from a snapshot, then votes) and it
    /// follows `meta`.
    AddNode {
        /// The new node's id (above 0, not used before).
        id: u64,
        /// HOST:PORT where clients reach it, then /HOST:PEER_PORT where the
        /// other nodes do (its --peer-listen; default: PORT + 1).
        address: String,
    },
    /// Remove a node: its container replicas move to the other nodes (new
    /// ones catch up before it is dropped) and groups move their leadership
    /// away (watch `cluster status`); stop the node after that.
    RemoveNode {
        /// The node's id.
        id: u64,
    },
}

pub async fn run(addr: &str, cmd: ClusterCommand) -> anyhow::Result<()> {
    let client = super::connect(addr).await?;
    let status = match cmd {
        ClusterCommand::Status => client.cluster_view().await?,
        ClusterCommand::AddNode { id, address } => {
            let status = client.admin().add_node(id, &address).await?;
            eprintln!("node {id} at {address} added; its replicas catch up now");
            status
        }
        ClusterCommand::RemoveNode { id } => {
            let status = client.admin().remove_node(id).await?;
            eprintln!("node {id} is being removed; stop it once no group lists it as a replica");
            status
        }
    };
    let mut out = std::io::stdout().lock();
    print_status(&mut out, &status)?;
    out.flush()?;
    Ok(())
}

fn print_status(out: &mut impl Write, status: &ClusterStatus) -> std::io::Result<()> {
    writeln!(out, "answered by node {}", status.node_id)?;
    let mut rows = vec![header(&["NODE", "ADDRESS", "HEALTH"])];
    for n in &status.nodes {
        rows.push(vec![
            n.node_id.to_string(),
            n.address.clone(),
            n.health.to_string(),
        ]);
    }
    write_table(out, &rows)?;
    writeln!(out)?;
    let mut rows = vec![header(&[
        "GROUP", "LEADER", "VOTERS", "LEARNERS", "PLACED", "TERM", "COMMIT", "APPLIED", "LAG",
    ])];
    let ids = |ids: &[u64]| {
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        if ids.is_empty() {
            "-".to_string()
        } else {
            ids.join(",")
        }
    };
    for g in &status.groups {
        rows.push(vec![
            g.name.clone(),
            g.leader_id
                .map_or_else(|| "none".into(), |id| id.to_string()),
            ids(&g.replicas),
            ids(&g.learners),
            ids(&g.placement),
            g.term.to_string(),
            g.commit_index.to_string(),
            g.applied_index.to_string(),
            g.commit_index.saturating_sub(g.applied_index).to_string(),
        ]);
    }
    write_table(out, &rows)
}
