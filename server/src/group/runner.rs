//! The group thread: the raft-rs Ready loop.
//!
//! Messages to other nodes leave through the outbox: `messages()` at once
//! (a leader's appends go out before its own fsync), `persisted_messages()`
//! only after the fsync that made their Ready durable. A snapshot from the
//! leader replaces the log and the state before anything else is applied.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    Command, GroupConfig, GroupStatus, LeaderConf, MemberChange, Outbox, ProposeError, Reply,
    SnapshotSent, StateMachine,
};
use crate::log::{decode_raft, LogError, LogStorage};
use crate::metrics::Metrics;

/// Commands drained per loop turn before handling a Ready: bounds the time
/// between fsyncs under a flood of proposals.
const COMMANDS_PER_TURN_MAX: usize = 1024;
/// Committed bytes handed out per Ready (replay after a restart included).
const COMMITTED_BYTES_PER_READY_MAX: u64 = 16 * 1024 * 1024;

/// raft's `max_size_per_msg`: appends to a follower are cut into messages
/// of about this size.
pub(crate) const RAFT_MSG_BYTES_MAX: u64 = 1024 * 1024;
/// raft's `max_inflight_msgs`: appends sent to a follower and not yet
/// acknowledged.
const RAFT_INFLIGHT_MSGS_MAX: usize = 256;
// A Ready must be able to hand out at least one whole message's entries.
const _: () = assert!(RAFT_MSG_BYTES_MAX <= COMMITTED_BYTES_PER_READY_MAX);

/// ReadIndex requests waiting for the leader's answer, at most.
const READS_PENDING_MAX: usize = 4096;

/// A log write slower than this is logged.
const SLOW_PERSIST: std::time::Duration = std::time::Duration::from_millis(100);

/// An early snapshot (see `maybe_snapshot_early`) needs at least this much
/// log to drop: below it the log costs less than a snapshot write.
const EARLY_SNAPSHOT_LOG_BYTES: u64 = 1024 * 1024;
/// ... and may carry at most 1/this of the log it drops (so while writes go
/// on, early snapshots add at most that much to what the log writes).
const EARLY_SNAPSHOT_RATIO: u64 = 16;
/// How often a group asks its state whether an early snapshot is worth it.
const EARLY_SNAPSHOT_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

type Done<S> = Reply<S>;

struct Runner<S: StateMachine> {
    name: String,
    node: RawNode<LogStorage>,
    state: S,
    /// Proposals waiting for their entry, by raft index, with the term they
    /// were proposed in: another term at that index means the entry was lost.
    pending: BTreeMap<u64, (u64, Done<S>)>,
    /// ReadIndex requests by context, then (once the leader answered) by
    /// the index this replica must apply first.
    /// Read-index requests by id (increasing, so the first is the oldest).
    reads_asked: std::collections::BTreeMap<u64, oneshot::Sender<()>>,
    reads_waiting: Vec<(u64, oneshot::Sender<()>)>,
    next_read: u64,
    ready_tx: watch::Sender<Option<u64>>,
    status: Arc<Mutex<GroupStatus>>,
    outbox: Option<Arc<dyn Outbox>>,
    /// This group's own command queue, for outcomes that come back later.
    commands: mpsc::WeakSender<Command<S>>,
    /// Index of the last applied entry.
    applied: u64,
    /// Entry bytes applied since the last snapshot.
    applied_bytes: u64,
    /// When `maybe_snapshot_early` last asked the state.
    last_early_check: std::time::Instant,
    /// A snapshot being written on its own thread: (index, term) once durable.
    snapshotting: Option<oneshot::Receiver<Result<(u64, u64), LogError>>>,
    snapshot_log_bytes: u64,
    /// Index of the entry (or snapshot) that set the applied membership.
    conf_index: u64,
    /// How the group was started: a destroyed replica starts over with it.
    config: GroupConfig,
    gauges: RaftGauges,
}

/// This group's raft series (handles into the metrics registry).
struct RaftGauges {
    term: Gauge,
    leader: Gauge,
    commit: Gauge,
    applied: Gauge,
}

impl RaftGauges {
    fn new(m: &Metrics, group: &str) -> Self {
        let labels = m.group(group);
        RaftGauges {
            term: m.raft_term.get_or_create(&labels).clone(),
            leader: m.raft_leader.get_or_create(&labels).clone(),
            commit: m.raft_commit_index.get_or_create(&labels).clone(),
            applied: m.raft_applied_index.get_or_create(&labels).clone(),
        }
    }
}

fn raft_config(config: &GroupConfig, applied: u64) -> raft::Config {
    raft::Config {
        id: config.node_id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied,
        max_size_per_msg: RAFT_MSG_BYTES_MAX,
        max_inflight_msgs: RAFT_INFLIGHT_MSGS_MAX,
        check_quorum: true,
        pre_vote: true,
        batch_append: true,
        max_uncommitted_size: config.uncommitted_bytes_max,
        max_committed_size_per_ready: COMMITTED_BYTES_PER_READY_MAX,
        ..Default::default()
    }
}

/// Resolves when the snapshot in progress is written; never without one.
async fn snapshot_written(
    pending: &mut Option<oneshot::Receiver<Result<(u64, u64), LogError>>>,
) -> Result<(u64, u64), LogError> {
    match pending {
        Some(rx) => match rx.await {
            Ok(written) => written,
            Err(_) => Err(LogError::Io {
                path: std::path::PathBuf::from("snapshot"),
                source: std::io::Error::other("the snapshot thread died"),
            }),
        },
        None => std::future::pending().await,
    }
}

/// Stops the process: the log could not persist, so nothing more may be
/// acknowledged, and continuing as if it had been written would lose data.
fn fatal(group: &str, what: &str, err: &dyn std::fmt::Display) -> ! {
    tracing::error!(group, error = %err, "{what}; stopping the process");
    eprintln!("error: group {group}: {what}: {err}");
    std::process::exit(2);
}

fn raw_node(config: &GroupConfig, applied: u64, storage: LogStorage) -> RawNode<LogStorage> {
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    match RawNode::new(&raft_config(config, applied), storage, &logger) {
        Ok(n) => n,
        Err(e) => fatal(&config.name, "cannot start raft", &e),
    }
}

/// What the thread shares with its [`super::Group`] handle.
pub(super) struct Shared<S: StateMachine> {
    pub ready: watch::Sender<Option<u64>>,
    pub status: Arc<Mutex<GroupStatus>>,
    pub commands: mpsc::WeakSender<Command<S>>,
}

pub(super) fn run<S: StateMachine>(
    config: GroupConfig,
    storage: LogStorage,
    state: S,
    applied: u64,
    mut rx: mpsc::Receiver<Command<S>>,
    shared: Shared<S>,
) {
    let name = config.name.clone();
    let node = raw_node(&config, applied, storage);
    let mut runner = Runner {
        name,
        node,
        state,
        pending: BTreeMap::new(),
        reads_asked: std::collections::BTreeMap::new(),
        reads_waiting: Vec::new(),
        next_read: 0,
        ready_tx: shared.ready,
        status: shared.status,
        outbox: config.outbox.clone(),
        commands: shared.commands,
        applied,
        applied_bytes: 0,
        last_early_check: std::time::Instant::now(),
        snapshotting: None,
        snapshot_log_bytes: config.snapshot_log_bytes,
        conf_index: applied,
        gauges: RaftGauges::new(&config.metrics, &config.name),
        config: config.clone(),
    };
    // The membership replayed from the log, before the first Ready (which
    // may be an election timeout away): status must not show it blank.
    runner.publish_status();
    if runner.node.raft.prs().conf().voters().ids().len() == 1 {
        // A single voter need not wait out an election timeout.
        if let Err(e) = runner.node.campaign() {
            fatal(&runner.name, "cannot campaign", &e);
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(&runner.name, "cannot build the group runtime", &e),
    };
    rt.block_on(async move {
        let mut ticker = tokio::time::interval(config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    runner.node.tick();
                    runner.maybe_snapshot_early();
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => runner.handle(cmd),
                    None => break,
                },
                written = snapshot_written(&mut runner.snapshotting) => runner.on_snapshot_written(written),
            }
            for _ in 0..COMMANDS_PER_TURN_MAX {
                match rx.try_recv() {
                    Ok(cmd) => runner.handle(cmd),
                    Err(_) => break,
                }
            }
            runner.on_ready();
        }
        runner.fail_pending();
    });
}

impl<S: StateMachine> Runner<S> {
    fn handle(&mut self, cmd: Command<S>) {
        match cmd {
            Command::Query(q) => q(&mut self.state),
            Command::Step(msg) => {
                let vote = matches!(
                    msg.get_msg_type(),
                    MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                );
                if vote && self.is_blank() {
                    // A blank replica (never given state, or destroyed) must
                    // not vote: a removed node's stale peers could otherwise
                    // win with its vote and lose what it had acknowledged.
                    return;
                }
                // Stale or foreign messages are refused by raft; nothing to do.
                let _ = self.node.step(msg);
            }
            Command::Destroy { leader_view, done } => {
                let destroyed = self.may_destroy(leader_view.as_ref());
                if destroyed {
                    self.destroy();
                }
                let _ = done.send(destroyed);
            }
            Command::ReadIndex(done) => {
                // Unanswered requests (no leader yet) time out at the caller;
                // drop the oldest so the map stays bounded.
                if self.reads_asked.len() >= READS_PENDING_MAX {
                    self.reads_asked.pop_first();
                }
                self.next_read += 1;
                self.reads_asked.insert(self.next_read, done);
                self.node.read_index(self.next_read.to_le_bytes().to_vec());
            }
            Command::ChangeMember { node, change } => self.change_member(node, change),
            Command::SnapshotSent { to, arrived } => {
                let status = if arrived {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.node.report_snapshot(to, status);
            }
            Command::TransferLeader(to) => {
                let raft = &self.node.raft;
                let caught_up = raft
                    .prs()
                    .get(to)
                    .is_some_and(|p| p.recent_active && p.matched == raft.raft_log.last_index());
                if raft.state == StateRole::Leader && to != raft.id && caught_up {
                    tracing::info!(group = %self.name, to, "transferring leadership (rebalancing)");
                    self.node.transfer_leader(to);
                }
            }
            Command::Propose { data, done } => {
                if self.node.raft.state != StateRole::Leader {
                    let leader = Some(self.node.raft.leader_id).filter(|&id| id != 0);
                    done.send(Err(super::not_leader(
                        &self.name,
                        leader,
                        &self.config.addresses,
                    )));
                    return;
                }
                match self.node.propose(Vec::new(), data) {
                    Ok(()) => {
                        let index = self.node.raft.raft_log.last_index();
                        self.pending.insert(index, (self.node.raft.term, done));
                    }
                    Err(_) => {
                        done.send(Err(ProposeError::Dropped {
                            group: self.name.clone(),
                        }));
                    }
                }
            }
        }
    }

    /// One membership change, if this node leads and none is pending (raft
    /// turns a second one proposed before the first applied into an empty
    /// entry). A learner is promoted only once it has every committed entry.
    fn change_member(&mut self, node: u64, change: MemberChange) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader || raft.has_pending_conf() {
            return;
        }
        let change_type = match change {
            MemberChange::AddLearner => ConfChangeType::AddLearnerNode,
            MemberChange::Remove => ConfChangeType::RemoveNode,
            MemberChange::Promote => {
                let caught_up = raft
                    .prs()
                    .get(node)
                    .is_some_and(|p| p.recent_active && p.matched >= raft.raft_log.committed);
                if !caught_up {
                    return;
                }
                ConfChangeType::AddNode
            }
        };
        let mut cc = ConfChange {
            node_id: node,
            ..Default::default()
        };
        cc.set_change_type(change_type);
        tracing::info!(group = %self.name, node, ?change, "proposing a membership change");
        if let Err(e) = self.node.propose_conf_change(Vec::new(), cc) {
            tracing::warn!(group = %self.name, node, error = %e, "membership change not proposed");
        }
    }

    /// Whether this replica holds no membership at all.
    fn is_blank(&self) -> bool {
        let conf = self.node.raft.prs().conf();
        conf.voters().ids().is_empty() && conf.learners().is_empty()
    }

    /// See [`super::Group::destroy`].
    fn may_destroy(&self, leader_view: Option<&LeaderConf>) -> bool {
        let raft = &self.node.raft;
        if self.is_blank() || raft.state == StateRole::Leader || self.snapshotting.is_some() {
            return false;
        }
        let unapplied = raft
            .raft_log
            .entries(
                self.applied + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )
            .unwrap_or_default();
        if unapplied.iter().any(|e| {
            matches!(
                e.get_entry_type(),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2
            )
        }) {
            return false;
        }
        if !raft.prs().conf().voters().contains(raft.id) {
            return true;
        }
        // Still a voter as far as this replica knows: only a newer
        // membership applied by the leader can say it is not.
        leader_view.is_some_and(|v| v.conf_index > self.conf_index && !v.members.contains(&raft.id))
    }

    /// Moves the log aside for good and starts over blank, as a node that
    /// never held this group: a leader that wants it back sends a snapshot.
    fn destroy(&mut self) {
        if let Err(e) =
            LogStorage::destroy(&self.config.log_dir, &self.config.log_context.reclaimer)
        {
            fatal(
                &self.name,
                "cannot remove the log of a destroyed replica",
                &e,
            );
        }
        let storage = match LogStorage::open(&self.config.log_dir, &self.config.log_context) {
            Ok(s) => s.with_file_bytes_max(self.config.snapshot_log_bytes / 4),
            Err(e) => fatal(&self.name, "cannot start an empty log", &e),
        };
        if let Err(why) = self.state.restore(bytes::Bytes::new()) {
            fatal(&self.name, "cannot empty the state", &why);
        }
        self.node = raw_node(&self.config, 0, storage);
        self.fail_pending();
        self.reads_asked.clear();
        self.reads_waiting.clear();
        self.ready_tx.send_replace(None);
        self.applied = 0;
        self.applied_bytes = 0;
        self.conf_index = 0;
        tracing::info!(group = %self.name, "replica destroyed: this node no longer holds the group");
        self.publish_status();
    }

    fn on_ready(&mut self) {
        if !self.node.has_ready() {
            return;
        }
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            if ss.raft_state != StateRole::Leader {
                self.ready_tx.send_replace(None);
                self.fail_pending();
            }
        }
        self.send(rd.take_messages());
        for rs in rd.take_read_states() {
            let ctx = rs.request_ctx.get(..8).map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            });
            if let Some(done) = ctx.and_then(|c| self.reads_asked.remove(&c)) {
                self.reads_waiting.push((rs.index, done));
            }
        }
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone());
        }
        self.apply(rd.take_committed_entries());
        let hs = rd.hs().cloned();
        let started = std::time::Instant::now();
        if let Err(e) = self.node.mut_store().persist(rd.entries(), hs.as_ref()) {
            fatal(&self.name, "cannot persist the log", &e);
        }
        let took = started.elapsed();
        if !rd.entries().is_empty() {
            let m = &self.config.metrics;
            m.log_write_seconds.observe(took.as_secs_f64());
            m.log_write_entries.observe(rd.entries().len() as f64);
        }
        if took >= SLOW_PERSIST {
            let bytes: usize = rd.entries().iter().map(|e| e.data.len()).sum();
            tracing::warn!(group = %self.name, took_ms = took.as_millis() as u64, entries = rd.entries().len(), bytes, "slow log write");
        }
        self.send(rd.take_persisted_messages());
        let mut light = self.node.advance(rd);
        self.send(light.take_messages());
        self.apply(light.take_committed_entries());
        self.node.advance_apply();
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_waiting)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_waiting = waiting;
        for (_, done) in ready {
            let _ = done.send(());
        }
        if self.applied_bytes >= self.snapshot_log_bytes {
            self.snapshot();
        }
        self.publish_status();
    }

    fn publish_status(&self) {
        let raft = &self.node.raft;
        {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            s.leader = raft.leader_id;
            s.term = raft.term;
            s.commit = raft.raft_log.committed;
            s.applied = self.applied;
            let conf = raft.prs().conf();
            let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
            voters.sort_unstable();
            s.voters = voters;
            s.learners = conf.learners().iter().copied().collect();
            s.learners.sort_unstable();
            s.conf_index = self.conf_index;
        }
        self.gauges.term.set(raft.term as i64);
        self.gauges
            .leader
            .set(i64::from(raft.state == StateRole::Leader));
        self.gauges.commit.set(raft.raft_log.committed as i64);
        self.gauges.applied.set(self.applied as i64);
    }

    fn send(&self, msgs: Vec<Message>) {
        let Some(outbox) = &self.outbox else {
            return; // a single voter sends none
        };
        for msg in msgs {
            if msg.get_msg_type() != MessageType::MsgSnapshot {
                outbox.send(&self.name, msg);
                continue;
            }
            let (to, commands) = (msg.to, self.commands.clone());
            let sent: SnapshotSent = Box::new(move |arrived| {
                if let Some(tx) = commands.upgrade() {
                    // Called on the transport's runtime; the queue may be full.
                    tokio::spawn(async move {
                        let _ = tx.send(Command::SnapshotSent { to, arrived }).await;
                    });
                }
            });
            outbox.send_snapshot(&self.name, msg, sent);
        }
    }

    /// A snapshot from the leader: this replica was too far behind for the
    /// log. It replaces the log and the state machine's state.
    fn install_snapshot(&mut self, snap: Snapshot) {
        let index = snap.get_metadata().index;
        if let Err(e) = self.node.mut_store().apply_snapshot(&snap) {
            fatal(&self.name, "cannot save a snapshot from the leader", &e);
        }
        if let Err(why) = self.state.restore(snap.data.clone()) {
            fatal(
                &self.name,
                "cannot restore a snapshot from the leader",
                &why,
            );
        }
        self.applied = index;
        self.applied_bytes = 0;
        self.conf_index = index;
        self.fail_pending();
        tracing::info!(group = %self.name, index, "installed a snapshot from the leader");
    }

    /// Snapshots before `snapshot_log_bytes` once the log holds at least
    /// `EARLY_SNAPSHOT_LOG_BYTES` and the snapshot would carry at most
    /// 1/`EARLY_SNAPSHOT_RATIO` of it: after a flush to tier-2 (or a seal and
    /// flush) the log goes within a check interval, not 256 MiB later.
    /// Checked once per `EARLY_SNAPSHOT_CHECK`, on the group's own thread.
    fn maybe_snapshot_early(&mut self) {
        if self.applied_bytes < EARLY_SNAPSHOT_LOG_BYTES
            || self.snapshotting.is_some()
            || self.last_early_check.elapsed() < EARLY_SNAPSHOT_CHECK
        {
            return;
        }
        self.last_early_check = std::time::Instant::now();
        if let Some(data) = self.state.snapshot_data_bytes() {
            if data.saturating_mul(EARLY_SNAPSHOT_RATIO) <= self.applied_bytes {
                tracing::debug!(group = %self.name, log_bytes = self.applied_bytes, data, "early snapshot: the log is mostly in tier-2");
                self.snapshot();
            }
        }
    }

    /// Takes the state (cheap) and writes it on a thread of its own, so the
    /// group keeps committing meanwhile; the log is compacted when it is done.
    fn snapshot(&mut self) {
        if self.snapshotting.is_some() {
            return;
        }
        let writer = match self.node.store().snapshot_writer(self.applied) {
            Ok(w) => w,
            Err(e) => fatal(&self.name, "cannot start a snapshot", &e),
        };
        let state = self.state.snapshot();
        let (tx, rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("snap-{}", self.name))
            .spawn(move || {
                let _ = tx.send(writer.write(&state));
            });
        if let Err(e) = spawned {
            fatal(&self.name, "cannot start the snapshot thread", &e);
        }
        self.snapshotting = Some(rx);
        self.applied_bytes = 0;
    }

    fn on_snapshot_written(&mut self, written: Result<(u64, u64), LogError>) {
        self.snapshotting = None;
        let (index, term) = match written {
            Ok(it) => it,
            Err(e) => fatal(&self.name, "cannot save a snapshot", &e),
        };
        if let Err(e) = self.node.mut_store().compact(index, term) {
            fatal(&self.name, "cannot drop the log below a snapshot", &e);
        }
        tracing::info!(group = %self.name, index, "snapshot saved; log truncated");
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for e in entries {
            self.applied = e.index;
            self.applied_bytes += e.data.len() as u64;
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {
                    // A new leader's empty entry: everything before it is applied.
                    if e.term == self.node.raft.term && self.node.raft.state == StateRole::Leader {
                        self.ready_tx.send_replace(Some(e.term));
                        tracing::info!(group = %self.name, term = e.term, index = e.index, "group ready");
                    }
                }
                EntryType::EntryNormal => {
                    let out = self.state.apply(e.index, e.data.clone());
                    self.answer(e.index, e.term, out);
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&e)
                }
            }
        }
    }

    fn apply_conf_change(&mut self, e: &Entry) {
        let applied = if e.get_entry_type() == EntryType::EntryConfChange {
            decode_raft::<ConfChange>(&e.data).map(|cc| self.node.apply_conf_change(&cc))
        } else {
            decode_raft::<ConfChangeV2>(&e.data).map(|cc| self.node.apply_conf_change(&cc))
        };
        match applied {
            Ok(Ok(cs)) => {
                if let Err(err) = self.node.mut_store().set_conf_state(cs) {
                    fatal(&self.name, "cannot persist the conf state", &err);
                }
                self.conf_index = e.index;
            }
            Ok(Err(err)) => fatal(&self.name, "cannot apply a committed conf change", &err),
            Err(err) => fatal(&self.name, "committed conf change does not decode", &err),
        }
    }

    fn answer(&mut self, index: u64, term: u64, out: S::Output) {
        // Proposals at lower indexes whose entries never came were lost.
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= index {
                break;
            }
            let (_, done) = entry.remove();
            done.send(Err(ProposeError::Lost {
                group: self.name.clone(),
            }));
        }
        if let Some((proposed_term, done)) = self.pending.remove(&index) {
            let reply = if proposed_term == term {
                Ok(out)
            } else {
                Err(ProposeError::Lost {
                    group: self.name.clone(),
                })
            };
            done.send(reply);
        }
    }

    fn fail_pending(&mut self) {
        for (_, (_, done)) in std::mem::take(&mut self.pending) {
            done.send(Err(ProposeError::Lost {
                group: self.name.clone(),
            }));
        }
    }
}
