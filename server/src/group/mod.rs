//! A raft group: one OS thread owns a raft-rs `RawNode` over a [`LogStorage`]
//! and a [`StateMachine`]; everyone else talks to it through a bounded
//! channel ([`Group`]).
//!
//! The thread's loop: wait for a command or a tick, drain every command that
//! is queued (so all proposals that arrived during the last fsync share the
//! next one: group commit), handle the `Ready` (persist with one fdatasync,
//! advance, apply committed entries in order) and answer proposers once their
//! entry is applied. Both the metadata group and every segment container run
//! on it; they differ only in their state machine.
//!
//! It must never acknowledge a proposal before its entry is committed and
//! applied, and never keep running after the log failed to persist.

mod runner;

pub(crate) use runner::RAFT_MSG_BYTES_MAX;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::prelude::Message;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};

use crate::addresses::NodeAddresses;
use crate::log::{LogContext, LogError, LogStorage};
use crate::metrics::Metrics;

/// Commands waiting for a group's thread; senders wait when it is full.
const COMMAND_QUEUE_MAX: usize = 4096;

/// The replicated state a group applies its committed entries to.
pub trait StateMachine: Send + 'static {
    /// What applying one command answers to its proposer.
    type Output: Send + 'static;

    /// Applies the committed command at raft `index`. Must be deterministic:
    /// the same log always yields the same state (it is replayed on restart).
    fn apply(&mut self, index: u64, command: bytes::Bytes) -> Self::Output;

    /// The whole applied state as a value that is cheap to take (handles to
    /// shared bytes, not copies): the group encodes and writes it on another
    /// thread, then drops its log up to the applied index.
    type Snapshot: prost::Message + Send + 'static;

    fn snapshot(&self) -> Self::Snapshot;

    /// Replaces the state with a snapshot's (at start-up, before replay).
    fn restore(&mut self, snapshot: bytes::Bytes) -> Result<(), String>;

    /// The bytes of data a snapshot taken now would carry (a container's
    /// tail not yet in tier-2), if the state knows. When it is small beside
    /// the log a snapshot would drop, the group snapshots early, so local
    /// disk follows tier-2 instead of waiting for `snapshot_log_bytes`.
    /// `None` (the default): snapshot by log size only.
    fn snapshot_data_bytes(&self) -> Option<u64> {
        None
    }
}

/// Why a proposal did not produce an output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the leader of group {group}")]
    NotLeader {
        group: String,
        /// The leader this node knows of (raft node id), if any.
        leader: Option<u64>,
        /// The address clients reach that leader at, if known.
        leader_address: Option<String>,
    },
    /// No linearizable read point within the time allowed (no leader, or
    /// this replica is cut off from it).
    #[error("group {group} gave no read point in time (no leader reachable); retry")]
    TimedOut { group: String },
    #[error("group {group} is over its limit of uncommitted bytes; retry")]
    Dropped { group: String },
    #[error("leadership of group {group} changed before the proposal committed; retry")]
    Lost { group: String },
    #[error("group {group} is shutting down")]
    Stopped { group: String },
}

/// [`ProposeError::NotLeader`] for `group`, whose leader is `leader` if known.
fn not_leader(group: &str, leader: Option<u64>, addresses: &NodeAddresses) -> ProposeError {
    ProposeError::NotLeader {
        group: group.to_string(),
        leader,
        leader_address: leader.and_then(|id| addresses.get(id)),
    }
}

pub(crate) type Query<S> = Box<dyn FnOnce(&mut S) + Send>;

/// Where a proposal's outcome goes, with the budget it holds until the
/// outcome is known. The runner drops both when it answers, whether or not
/// anyone polls the answer: a proposer blocked on the same budget for its
/// next proposal must not keep its applied ones' budget.
pub(crate) struct Reply<S: StateMachine> {
    tx: oneshot::Sender<Result<S::Output, ProposeError>>,
    _held: Option<OwnedSemaphorePermit>,
}

impl<S: StateMachine> Reply<S> {
    pub(crate) fn send(self, outcome: Result<S::Output, ProposeError>) {
        // The proposer may be gone; the outcome is then nobody's concern.
        let _ = self.tx.send(outcome);
    }
}

pub(crate) enum Command<S: StateMachine> {
    Propose {
        data: Vec<u8>,
        done: Reply<S>,
    },
    Query(Query<S>),
    /// A raft message from another node.
    Step(Message),
    /// Hand leadership to this node, if this node leads and it is caught up.
    TransferLeader(u64),
    /// Change one member, if this node leads and no change is pending.
    ChangeMember {
        node: u64,
        change: MemberChange,
    },
    /// Drop this replica's log and state and start over empty, if that is
    /// safe (see [`Group::destroy`]); answers whether it did.
    Destroy {
        leader_view: Option<LeaderConf>,
        done: oneshot::Sender<bool>,
    },
    /// Answer once this replica has applied everything committed when the
    /// request was made (raft ReadIndex, confirmed by the leader).
    ReadIndex(oneshot::Sender<()>),
    /// Whether a snapshot this node sent reached node `to`.
    SnapshotSent {
        to: u64,
        arrived: bool,
    },
}

/// One step of moving a group's replicas (raft simple conf changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a node as a learner: it is sent the log (or a snapshot) but
    /// neither votes nor counts for commit. On a voter: demote it.
    AddLearner,
    /// Make a caught-up learner a voter (ignored while it lags).
    Promote,
    /// Drop a voter or learner.
    Remove,
}

/// A group's membership as its leader applied it: what a removed replica
/// that never heard of its removal needs to let go of its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConf {
    /// Index of the entry (or snapshot) that set this membership.
    pub conf_index: u64,
    /// Voters and learners.
    pub members: Vec<u64>,
}

/// Where a group's raft messages to other nodes go (the cluster transport).
pub trait Outbox: Send + Sync + 'static {
    /// Queues `msg` (anything but a snapshot) for node `msg.to`. False when
    /// it cannot (unknown node, queue full): raft sends again, so dropping
    /// is safe.
    fn send(&self, group: &str, msg: Message) -> bool;

    /// Sends a snapshot message to node `msg.to` and calls `sent` with
    /// whether it arrived. Raft must hear either way: until it does, it
    /// sends that follower nothing else.
    fn send_snapshot(&self, group: &str, msg: Message, sent: SnapshotSent);
}

/// Tells a group whether its snapshot reached the follower.
pub type SnapshotSent = Box<dyn FnOnce(bool) + Send>;

/// How to run one group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `meta` or `container-N`: names the log directory and log lines.
    pub name: String,
    pub log_dir: PathBuf,
    pub node_id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// raft's `max_uncommitted_size`: proposals past it are dropped
    /// (back-pressure).
    pub uncommitted_bytes_max: u64,
    /// Snapshot and drop the log once this many entry bytes were applied
    /// since the last snapshot.
    pub snapshot_log_bytes: u64,
    /// The group's voters when it is first created (every node of the
    /// cluster, or just this one).
    pub voters: Vec<u64>,
    /// Messages to other nodes; None on a single node.
    pub outbox: Option<Arc<dyn Outbox>>,
    /// Where the node's nodes are, to tell clients where the leader is.
    pub addresses: NodeAddresses,
    /// The node's reclaim thread and snapshot-send limit.
    pub log_context: LogContext,
    /// The node's metrics registry.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for dyn Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

/// A group's raft state as one node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// 0: no leader known.
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Index of the entry (or snapshot) that set this membership.
    pub conf_index: u64,
}

impl GroupStatus {
    /// Whether this replica holds nothing: never bootstrapped, or destroyed,
    /// and not (yet) sent a snapshot.
    pub fn is_blank(&self) -> bool {
        self.voters.is_empty() && self.learners.is_empty()
    }
}

/// A handle to a running group. Dropping every handle stops the thread.
pub struct Group<S: StateMachine> {
    name: String,
    addresses: NodeAddresses,
    tx: mpsc::Sender<Command<S>>,
    ready: watch::Receiver<Option<u64>>,
    status: Arc<Mutex<GroupStatus>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<S: StateMachine> Group<S> {
    /// Opens the group's log (replaying it; corruption is an error here) and
    /// starts its thread. The state machine is rebuilt by re-applying the log.
    pub fn start(config: GroupConfig, mut state: S) -> Result<Self, LogError> {
        // Files of a quarter of the snapshot interval: the log on disk stays
        // within about 1.5 intervals.
        let mut storage = LogStorage::open(&config.log_dir, &config.log_context)?
            .with_file_bytes_max(config.snapshot_log_bytes / 4);
        if storage.is_fresh() && !config.voters.is_empty() {
            // First start. A node joining a running cluster has no voters
            // here: it waits for a leader to send it a snapshot.
            storage.bootstrap(&config.voters)?;
        }
        let mut applied = 0;
        if let Some((index, data)) = storage.load_snapshot()? {
            state.restore(data).map_err(|why| LogError::Corrupt {
                path: config.log_dir.clone(),
                offset: 0,
                why,
            })?;
            applied = index;
        }
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE_MAX);
        let (ready_tx, ready) = watch::channel(None);
        let status = Arc::new(Mutex::new(GroupStatus::default()));
        let name = config.name.clone();
        let addresses = config.addresses.clone();
        let shared = runner::Shared {
            ready: ready_tx,
            status: status.clone(),
            // Weak: dropping every handle must still close the channel.
            commands: tx.downgrade(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-{name}"))
            .spawn(move || runner::run(config, storage, state, applied, rx, shared))
            .map_err(|source| LogError::Io {
                path: PathBuf::from(&name),
                source,
            })?;
        Ok(Group {
            name,
            addresses,
            tx,
            ready,
            status,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hands a raft message from another node to the group; false when its
    /// queue is full (the message is dropped; raft sends again).
    pub fn step(&self, msg: Message) -> bool {
        self.tx.try_send(Command::Step(msg)).is_ok()
    }

    /// Waits until this replica has applied every entry committed before
    /// the call (a linearizable read point: raft ReadIndex through the
    /// leader). Fails after `timeout` (no leader, partitioned away).
    pub async fn read_index(&self, timeout: Duration) -> Result<(), ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::ReadIndex(tx))
            .await
            .map_err(|_| self.stopped())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(ProposeError::TimedOut {
                group: self.name.clone(),
            }),
        }
    }

    /// Asks the group to change member `node`. Ignored unless this node
    /// leads and no other membership change is pending: callers check the
    /// applied membership ([`GroupStatus`]) and ask again.
    pub fn change_member(&self, node: u64, change: MemberChange) {
        let _ = self.tx.try_send(Command::ChangeMember { node, change });
    }

    /// Drops this replica (log and state) and leaves it blank, when this
    /// node is no longer one of the group's voters: its applied membership
    /// says so, or `leader_view` (the leader's applied membership, newer
    /// than this replica's) leaves it out. Refused while its log holds a
    /// membership change it has not applied (it may be a voter again), and
    /// while it leads or writes a snapshot. A blank replica refuses votes,
    /// so a destroyed one can never elect a leader that lacks entries it
    /// had acknowledged. Answers whether it destroyed the replica.
    pub async fn destroy(&self, leader_view: Option<LeaderConf>) -> bool {
        let (done, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::Destroy { leader_view, done })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Asks the group to hand its leadership to node `to` (rebalancing).
    /// Ignored unless this node leads and `to` is caught up and active.
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.tx.try_send(Command::TransferLeader(to));
    }

    /// The leader's node id as this node knows it.
    pub fn leader_id(&self) -> Option<u64> {
        Some(self.status().leader).filter(|&id| id != 0)
    }

    /// The group's raft state as this node sees it now.
    pub fn status(&self) -> GroupStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Proposes `data`; resolves with the state machine's output once the
    /// entry is committed and applied.
    pub async fn propose(&self, data: Vec<u8>) -> Result<S::Output, ProposeError> {
        self.submit(data, None).await?.await
    }

    /// Queues `data` for proposal and returns a future of its output. Entries
    /// enter the log in the order `submit` calls return, which is what keeps
    /// one writer's pipelined batches in order. `held` is released as soon
    /// as the outcome is known.
    pub async fn submit(
        &self,
        data: Vec<u8>,
        held: Option<OwnedSemaphorePermit>,
    ) -> Result<
        impl std::future::Future<Output = Result<S::Output, ProposeError>> + Send + 'static,
        ProposeError,
    > {
        let (tx, rx) = oneshot::channel();
        let done = Reply { tx, _held: held };
        self.tx
            .send(Command::Propose { data, done })
            .await
            .map_err(|_| self.stopped())?;
        let stopped = self.stopped();
        Ok(async move { rx.await.map_err(|_| stopped)? })
    }

    /// Runs `f` on the group's thread against the applied state.
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> R + Send + 'static,
    ) -> Result<R, ProposeError> {
        let (tx, rx) = oneshot::channel();
        let q: Query<S> = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        self.tx
            .send(Command::Query(q))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())
    }

    /// Waits until this node leads the group and has applied every entry
    /// committed before its term began.
    pub async fn wait_ready(&self) -> Result<(), ProposeError> {
        let mut ready = self.ready.clone();
        ready
            .wait_for(Option::is_some)
            .await
            .map_err(|_| self.stopped())?;
        Ok(())
    }

    /// The raft term this node leads the group in, once ready; None while
    /// it is not the (caught-up) leader.
    pub fn leader_term(&self) -> Option<u64> {
        *self.ready.borrow()
    }

    /// The refusal of a proposal (or a leader-only call) by a replica that
    /// does not lead: it names the leader it knows of, and its address.
    pub fn not_leader(&self) -> ProposeError {
        not_leader(&self.name, self.leader_id(), &self.addresses)
    }

    fn stopped(&self) -> ProposeError {
        ProposeError::Stopped {
            group: self.name.clone(),
        }
    }
}

/// Membership controls of a group, whatever its state machine.
pub trait GroupControl {
    fn status(&self) -> GroupStatus;
    fn change_member(&self, node: u64, change: MemberChange);
    fn transfer_leader(&self, to: u64);
}

impl<S: StateMachine> GroupControl for Group<S> {
    fn status(&self) -> GroupStatus {
        Group::status(self)
    }

    fn change_member(&self, node: u64, change: MemberChange) {
        Group::change_member(self, node, change);
    }

    fn transfer_leader(&self, to: u64) {
        Group::transfer_leader(self, to);
    }
}

impl<S: StateMachine> Drop for Group<S> {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop after its current Ready.
        let (closed_tx, _) = mpsc::channel(1);
        self.tx = closed_tx;
        if let Ok(mut t) = self.thread.lock() {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests;
