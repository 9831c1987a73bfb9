//! Reader groups: [`ReaderGroup`] (create, describe, checkpoint, reset,
//! delete a group) and [`GroupReader`], one reader of a group: a
//! [`futures::Stream`] of [`GroupEvent`]s (events, and checkpoint markers)
//! over the segments the group gives it.
//!
//! Owns the reader's side of the protocol in `groups.proto`. A segment's
//! position is advanced only when the application takes an event (in
//! `poll_next`), so what is reported is what was handed on: a reader that
//! dies loses nothing, and what it re-reads comes only from its unreported
//! tail. A checkpoint marker is handed on in the event stream; the
//! positions at that moment are the reader's part of the checkpoint.
//!
//! Must never: report a position past what the application took; read a
//! segment after reporting it released or completed; hand on an event of
//! a segment it no longer owns (items of an older assignment are dropped).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::conn::Conn;
use crate::proto::reader_groups_client::ReaderGroupsClient;
use crate::proto::{self as pb};
use crate::reader::{Event, SegmentReader};
use crate::{Error, Position, StreamCut, StreamName};

/// Items buffered between the segment tasks and the application.
const CHANNEL_ITEMS: usize = 64;
/// Events a segment task sends in one item, at most (those already read).
const ITEM_EVENTS_MAX: usize = 256;
/// How long a segment task waits before resuming a read that gave up.
const READ_RESUME_DELAY: Duration = Duration::from_secs(1);

/// Where a new group starts reading.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum GroupStart {
    /// The first readable event of every stream.
    #[default]
    Head,
    /// Only what is written after the group is created.
    Tail,
    /// A stream cut (e.g. from `stream cut`, or a checkpoint).
    Cut(StreamCut),
}

/// How a group is created.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReaderGroupConfig {
    /// Where reading starts. Default: the head.
    pub start: GroupStart,
    /// A reader silent this long loses its segments. Default 30 s.
    pub reader_timeout: Duration,
    /// Retention by consumption: the streams keep what this group has not
    /// checkpointed past.
    pub subscribe: bool,
}

impl Default for ReaderGroupConfig {
    fn default() -> Self {
        ReaderGroupConfig {
            start: GroupStart::Head,
            reader_timeout: Duration::from_secs(30),
            subscribe: false,
        }
    }
}

impl ReaderGroupConfig {
    /// Sets [`start`](Self::start).
    pub fn start(mut self, start: GroupStart) -> Self {
        self.start = start;
        self
    }

    /// Sets [`reader_timeout`](Self::reader_timeout) (200 ms to 1 h).
    pub fn reader_timeout(mut self, timeout: Duration) -> Self {
        self.reader_timeout = timeout;
        self
    }

    /// Sets [`subscribe`](Self::subscribe).
    pub fn subscribe(mut self, subscribe: bool) -> Self {
        self.subscribe = subscribe;
        self
    }
}

/// A segment's position in a group, with how far behind its length it is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentLag {
    /// The segment.
    pub segment_id: u64,
    /// Where reading resumes in it.
    pub offset: u64,
    /// Bytes between `offset` and the segment's length now.
    pub lag_bytes: u64,
}

/// One reader of a group and what it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupReaderInfo {
    /// The reader's id.
    pub reader_id: String,
    /// The segments it owns, with its last reported offsets.
    pub segments: Vec<SegmentLag>,
    /// Segments it was asked to give up.
    pub releasing: Vec<u64>,
}

/// Where a checkpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointState {
    /// Waiting for some readers' markers.
    Pending,
    /// Every reader reached its marker: the cut is final.
    Complete,
    /// A reader left or timed out first, or the group was reset.
    Failed,
}

/// A checkpoint of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointInfo {
    /// Its name.
    pub name: String,
    /// Where it stands.
    pub state: CheckpointState,
    /// When it was started (ms since the Unix epoch, the server's clock).
    pub created_ms: u64,
    /// Readers whose marker is still to come.
    pub pending: Vec<String>,
    /// The cut (once complete).
    pub cut: StreamCut,
    /// Why it failed.
    pub failure: String,
}

/// A reader group as the server describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderGroupInfo {
    /// The group's scope.
    pub scope: String,
    /// The group's name.
    pub group: String,
    /// The streams it reads.
    pub streams: Vec<StreamName>,
    /// One more per reset.
    pub generation: u64,
    /// A reader silent this long loses its segments.
    pub reader_timeout: Duration,
    /// Whether the streams' retention waits for this group.
    pub subscribed: bool,
    /// Its readers.
    pub readers: Vec<GroupReaderInfo>,
    /// Segments no reader owns yet.
    pub unassigned: Vec<SegmentLag>,
    /// Outstanding checkpoints, then the last finished ones.
    pub checkpoints: Vec<CheckpointInfo>,
}

impl ReaderGroupInfo {
    /// The checkpoint named `name`, if the group keeps it.
    pub fn checkpoint(&self, name: &str) -> Option<&CheckpointInfo> {
        self.checkpoints.iter().find(|c| c.name == name)
    }
}

fn lags(v: Vec<pb::SegmentLag>) -> Vec<SegmentLag> {
    v.into_iter()
        .map(|l| SegmentLag {
            segment_id: l.segment_id,
            offset: l.offset,
            lag_bytes: l.lag_bytes,
        })
        .collect()
}

fn cut_of(p: Vec<pb::SegmentPosition>) -> StreamCut {
    StreamCut::new(
        p.into_iter()
            .map(|x| Position::new(x.segment_id, x.offset))
            .collect(),
    )
}

fn positions(m: &BTreeMap<u64, u64>) -> Vec<pb::SegmentPosition> {
    m.iter()
        .map(|(&segment_id, &offset)| pb::SegmentPosition { segment_id, offset })
        .collect()
}

impl From<pb::ReaderGroupInfo> for ReaderGroupInfo {
    fn from(g: pb::ReaderGroupInfo) -> Self {
        let name = g.group.unwrap_or_default();
        ReaderGroupInfo {
            scope: name.scope,
            group: name.group,
            streams: g
                .streams
                .into_iter()
                .filter_map(|s| StreamName::new(&s.scope, &s.stream).ok())
                .collect(),
            generation: g.generation,
            reader_timeout: Duration::from_millis(g.reader_timeout_ms),
            subscribed: g.subscribed,
            readers: g
                .readers
                .into_iter()
                .map(|r| GroupReaderInfo {
                    reader_id: r.reader_id,
                    segments: lags(r.segments),
                    releasing: r.releasing,
                })
                .collect(),
            unassigned: lags(g.unassigned),
            checkpoints: g
                .checkpoints
                .into_iter()
                .map(|c| CheckpointInfo {
                    state: match pb::checkpoint_info::State::try_from(c.state) {
                        Ok(pb::checkpoint_info::State::Pending) => CheckpointState::Pending,
                        Ok(pb::checkpoint_info::State::Complete) => CheckpointState::Complete,
                        _ => CheckpointState::Failed,
                    },
                    name: c.name,
                    created_ms: c.created_ms,
                    pending: c.pending,
                    cut: cut_of(c.positions),
                    failure: c.failure,
                })
                .collect(),
        }
    }
}

/// A reader group by name: `scope/group`.
#[derive(Clone, Debug)]
pub struct ReaderGroup {
    conn: Arc<Conn>,
    scope: String,
    group: String,
}

fn client(c: &Conn) -> ReaderGroupsClient<crate::conn::Transport> {
    ReaderGroupsClient::new(c.channel().1)
}

impl ReaderGroup {
    pub(crate) fn new(conn: Arc<Conn>, scope: &str, group: &str) -> ReaderGroup {
        ReaderGroup {
            conn,
            scope: scope.to_string(),
            group: group.to_string(),
        }
    }

    fn name(&self) -> pb::ReaderGroupRef {
        pb::ReaderGroupRef {
            scope: self.scope.clone(),
            group: self.group.clone(),
        }
    }

    /// One `ReaderGroups` call on the metadata leader, with the admin
    /// calls' redirects, retries and request timeout.
    async fn rpc<Q, R, F, Fut>(&self, req: &Q, call: F) -> Result<R, Error>
    where
        Q: Clone,
        F: Fn(ReaderGroupsClient<crate::conn::Transport>, tonic::Request<Q>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        Admin::new(self.conn.clone())
            .call(|c| call(client(&c), c.request(req.clone())))
            .await
    }

    /// Creates the group over `streams`.
    pub async fn create(
        &self,
        streams: &[StreamName],
        config: &ReaderGroupConfig,
    ) -> Result<ReaderGroupInfo, Error> {
        use pb::create_group_request::Start;
        let req = pb::CreateGroupRequest {
            group: Some(self.name()),
            streams: streams.iter().map(StreamName::to_proto).collect(),
            start: Some(match &config.start {
                GroupStart::Head => Start::FromHead(true),
                GroupStart::Tail => Start::FromTail(true),
                GroupStart::Cut(c) => Start::FromCut(pb::Cut {
                    positions: cut_positions(c),
                }),
            }),
            reader_timeout_ms: u64::try_from(config.reader_timeout.as_millis()).unwrap_or(u64::MAX),
            subscribe: config.subscribe,
        };
        self.rpc(&req, |mut c, r| async move { c.create_group(r).await })
            .await
            .map(Into::into)
    }

    /// The group: readers, their segments and lag, checkpoints.
    pub async fn describe(&self) -> Result<ReaderGroupInfo, Error> {
        let req = self.name();
        self.rpc(&req, |mut c, r| async move { c.describe_group(r).await })
            .await
            .map(Into::into)
    }

    /// Deletes the group (its readers get `NotFound`); the group as it was.
    pub async fn delete(&self) -> Result<ReaderGroupInfo, Error> {
        let req = self.name();
        self.rpc(&req, |mut c, r| async move { c.delete_group(r).await })
            .await
            .map(Into::into)
    }

    /// Starts checkpoint `name`: every reader hands on a marker, and once
    /// all did the checkpoint is complete (see [`Self::await_checkpoint`]).
    pub async fn checkpoint(&self, name: &str) -> Result<ReaderGroupInfo, Error> {
        let req = pb::CheckpointRequest {
            group: Some(self.name()),
            name: name.to_string(),
        };
        self.rpc(&req, |mut c, r| async move { c.checkpoint(r).await })
            .await
            .map(Into::into)
    }

    /// Waits up to `timeout` for checkpoint `name` to complete; its cut.
    pub async fn await_checkpoint(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<StreamCut, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let info = self.describe().await?;
            match info.checkpoint(name) {
                Some(c) if c.state == CheckpointState::Complete => return Ok(c.cut.clone()),
                Some(c) if c.state == CheckpointState::Failed => {
                    return Err(Error::FailedPrecondition(format!(
                        "checkpoint {name} failed: {}",
                        c.failure
                    )))
                }
                Some(c) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::unavailable(format!(
                        "checkpoint {name} is not complete after {} s; still waiting for readers {:?}",
                        timeout.as_secs_f64(),
                        c.pending
                    )))
                }
                Some(_) => {}
                None => {
                    return Err(Error::NotFound(format!(
                        "group {}/{} has no checkpoint named {name}",
                        self.scope, self.group
                    )))
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resets the group to completed checkpoint `name`.
    pub async fn reset_to_checkpoint(&self, name: &str) -> Result<ReaderGroupInfo, Error> {
        self.reset(pb::reset_group_request::To::Checkpoint(name.to_string()))
            .await
    }

    /// Resets the group to `cut`.
    pub async fn reset_to_cut(&self, cut: &StreamCut) -> Result<ReaderGroupInfo, Error> {
        self.reset(pb::reset_group_request::To::Cut(pb::Cut {
            positions: cut_positions(cut),
        }))
        .await
    }

    async fn reset(&self, to: pb::reset_group_request::To) -> Result<ReaderGroupInfo, Error> {
        let req = pb::ResetGroupRequest {
            group: Some(self.name()),
            to: Some(to),
        };
        self.rpc(&req, |mut c, r| async move { c.reset_group(r).await })
            .await
            .map(Into::into)
    }

    /// Joins the group as `reader_id` (a reader already in it resumes its
    /// segments where it last reported) and starts reading.
    pub async fn reader(&self, reader_id: &str) -> Result<GroupReader, Error> {
        let first = self.join(reader_id).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_ITEMS);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        let driver = Driver {
            group: self.clone(),
            reader_id: reader_id.to_string(),
            shared: shared.clone(),
            tx,
            pumps: HashMap::new(),
            heartbeat: Duration::from_millis(first.heartbeat_ms.max(10)),
            marked: BTreeSet::new(),
            releasing: BTreeSet::new(),
        };
        let task = tokio::spawn(driver.run(first));
        Ok(GroupReader {
            group: self.clone(),
            reader_id: reader_id.to_string(),
            shared,
            rx,
            ready: std::collections::VecDeque::new(),
            ready_epoch: 0,
            task: Some(task),
        })
    }

    async fn join(&self, reader_id: &str) -> Result<pb::ReaderAssignment, Error> {
        let req = pb::JoinGroupRequest {
            group: Some(self.name()),
            reader_id: reader_id.to_string(),
        };
        self.rpc(&req, |mut c, r| async move { c.join_group(r).await })
            .await
    }
}

fn cut_positions(c: &StreamCut) -> Vec<pb::SegmentPosition> {
    c.positions
        .iter()
        .map(|p| pb::SegmentPosition {
            segment_id: p.segment_id,
            offset: p.offset,
        })
        .collect()
}

/// What a group reader hands on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupEvent {
    /// The next event of one of the reader's segments.
    Event(Event),
    /// Checkpoint `name`: everything before this was handed on, nothing
    /// after. Save the application's state for it now.
    Checkpoint(String),
}

/// What the segment tasks and the driver send the application side.
enum Item {
    /// Consecutive events of one segment.
    Events {
        epoch: u64,
        events: Vec<Event>,
    },
    /// The segment is read to its end (`end`).
    Completed {
        epoch: u64,
        segment_id: u64,
        end: u64,
    },
    /// The segment's task is stopped (as asked): report where it stopped.
    Released {
        epoch: u64,
        segment_id: u64,
    },
    Marker {
        epoch: u64,
        name: String,
    },
    Failed(Error),
}

/// What the application side and the driver share.
#[derive(Default)]
struct State {
    /// One more per whole new assignment (reset, rejoin): older items drop.
    epoch: u64,
    generation: u64,
    /// Owned segments: the offset after the last event handed on.
    owned: BTreeMap<u64, u64>,
    completed: BTreeMap<u64, u64>,
    released: BTreeMap<u64, u64>,
    acks: Vec<(String, BTreeMap<u64, u64>)>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the driver to report at once.
    wake: Notify,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One reader of a group; a [`Stream`] of [`GroupEvent`]s. [`Self::close`]
/// leaves the group with its positions; dropping it without closing leaves
/// its segments to be taken over after the group's reader timeout.
pub struct GroupReader {
    group: ReaderGroup,
    reader_id: String,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Item>,
    /// Events of the item being handed out, with its epoch.
    ready: std::collections::VecDeque<Event>,
    ready_epoch: u64,
    task: Option<JoinHandle<()>>,
}

impl GroupReader {
    /// Leaves the group: its segments go to the other readers from where
    /// this one stopped.
    pub async fn close(mut self) -> Result<(), Error> {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        let owned = self.shared.state().owned.clone();
        let req = pb::LeaveGroupRequest {
            group: Some(self.group.name()),
            reader_id: self.reader_id.clone(),
            positions: positions(&owned),
        };
        self.group
            .rpc(&req, |mut c, r| async move { c.leave_group(r).await })
            .await
            .map(|_| ())
    }

    /// The segments this reader owns, with the offset after the last event
    /// it handed on in each.
    pub fn positions(&self) -> Vec<Position> {
        self.shared
            .state()
            .owned
            .iter()
            .map(|(&s, &o)| Position::new(s, o))
            .collect()
    }
}

impl Drop for GroupReader {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Stream for GroupReader {
    type Item = Result<GroupEvent, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.ready.pop_front() {
                let mut s = this.shared.state();
                if this.ready_epoch != s.epoch {
                    this.ready.clear();
                    continue;
                }
                let seg = event.position.segment_id;
                if let Some(at) = s.owned.get_mut(&seg) {
                    *at = event.next_offset;
                    return Poll::Ready(Some(Ok(GroupEvent::Event(event))));
                }
                continue;
            }
            let item = match this.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => item,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let mut s = this.shared.state();
            match item {
                Item::Events { epoch, events } if epoch == s.epoch => {
                    this.ready = events.into();
                    this.ready_epoch = epoch;
                }
                Item::Completed {
                    epoch,
                    segment_id,
                    end,
                } if epoch == s.epoch && s.owned.remove(&segment_id).is_some() => {
                    s.completed.insert(segment_id, end);
                    this.shared.wake.notify_one();
                }
                Item::Released { epoch, segment_id } if epoch == s.epoch => {
                    if let Some(at) = s.owned.remove(&segment_id) {
                        s.released.insert(segment_id, at);
                        this.shared.wake.notify_one();
                    }
                }
                Item::Marker { epoch, name } if epoch == s.epoch => {
                    let at = s.owned.clone();
                    s.acks.push((name.clone(), at));
                    this.shared.wake.notify_one();
                    return Poll::Ready(Some(Ok(GroupEvent::Checkpoint(name))));
                }
                Item::Failed(e) => return Poll::Ready(Some(Err(e))),
                // An item of an older assignment.
                _ => {}
            }
        }
    }
}

/// The reader's background task: heart-beats, and starts and stops the
/// segment tasks as the assignment says.
struct Driver {
    group: ReaderGroup,
    reader_id: String,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Item>,
    /// The running (or finished, not yet reported) segment tasks.
    pumps: HashMap<u64, JoinHandle<()>>,
    heartbeat: Duration,
    /// Checkpoints whose marker was sent in this assignment.
    marked: BTreeSet<String>,
    /// Segments given up, whose release the server has not taken yet.
    releasing: BTreeSet<u64>,
}

/// A driver that ends (the reader closed or dropped, or the group gone)
/// stops its segment tasks: nothing reads for a reader that is not there.
impl Drop for Driver {
    fn drop(&mut self) {
        for p in self.pumps.values() {
            p.abort();
        }
    }
}

impl Driver {
    async fn run(mut self, first: pb::ReaderAssignment) {
        self.take_all(first);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.heartbeat) => {}
                _ = self.shared.wake.notified() => {}
            }
            let (generation, report) = {
                let s = self.shared.state();
                (
                    s.generation,
                    (
                        s.owned.clone(),
                        s.completed.clone(),
                        s.released.clone(),
                        s.acks.clone(),
                    ),
                )
            };
            let (owned, completed, released, acks) = report;
            let req = pb::HeartbeatRequest {
                group: Some(self.group.name()),
                reader_id: self.reader_id.clone(),
                generation,
                positions: positions(&owned),
                completed: positions(&completed),
                released: positions(&released),
                checkpoints: acks
                    .iter()
                    .map(|(name, at)| pb::CheckpointReached {
                        name: name.clone(),
                        positions: positions(at),
                    })
                    .collect(),
            };
            tracing::trace!(reader = self.reader_id, acks = acks.len(), "heartbeat");
            let answer = self
                .group
                .rpc(&req, |mut c, r| async move { c.heartbeat(r).await })
                .await;
            tracing::trace!(reader = self.reader_id, answer = ?answer.as_ref().map(|a| (a.generation, a.segments.len(), a.checkpoint.clone())), "heartbeat answered");
            let assignment = match answer {
                Ok(a) => {
                    // Reported: forget what the server now has.
                    let mut s = self.shared.state();
                    s.completed.retain(|k, _| !completed.contains_key(k));
                    s.released.retain(|k, _| !released.contains_key(k));
                    s.acks.retain(|(n, _)| !acks.iter().any(|(m, _)| m == n));
                    drop(s);
                    // A release the server took is over: if it lists the
                    // segment again, it gave it back (read it afresh).
                    self.releasing.retain(|id| !released.contains_key(id));
                    a
                }
                Err(Error::ReaderUnknown(_)) => {
                    tracing::info!(
                        reader = self.reader_id,
                        "reader was timed out of its group; joining again"
                    );
                    match self.group.join(&self.reader_id).await {
                        Ok(a) => {
                            self.take_all(a);
                            continue;
                        }
                        Err(e) if e.is_retryable() => {
                            tracing::debug!(error = %e, "rejoin failed; will retry");
                            continue;
                        }
                        Err(e) => {
                            let _ = self.tx.send(Item::Failed(e)).await;
                            return;
                        }
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::debug!(reader = self.reader_id, error = %e, "heartbeat failed; will retry");
                    continue;
                }
                Err(e) => {
                    let _ = self.tx.send(Item::Failed(e)).await;
                    return;
                }
            };
            self.heartbeat = Duration::from_millis(assignment.heartbeat_ms.max(10));
            if assignment.generation != self.shared.state().generation {
                self.take_all(assignment);
                continue;
            }
            self.apply(assignment);
        }
    }

    /// A whole new assignment (the first, a reset, a rejoin): every segment
    /// task stops and items already sent are dropped.
    fn take_all(&mut self, a: pb::ReaderAssignment) {
        for (_, p) in self.pumps.drain() {
            p.abort();
        }
        self.releasing.clear();
        let epoch = {
            let mut s = self.shared.state();
            s.epoch += 1;
            s.generation = a.generation;
            s.owned = a
                .segments
                .iter()
                .map(|p| (p.segment_id, p.offset))
                .collect();
            s.completed.clear();
            s.released.clear();
            s.acks.clear();
            s.epoch
        };
        for p in &a.segments {
            self.start(epoch, p.segment_id, p.offset);
        }
        self.marked.clear();
        self.mark(epoch, a.checkpoint);
    }

    /// An assignment of the same generation: new segments start, released
    /// ones stop, a checkpoint gets its marker once.
    fn apply(&mut self, a: pb::ReaderAssignment) {
        let epoch = self.shared.state().epoch;
        let listed: BTreeSet<u64> = a.segments.iter().map(|p| p.segment_id).collect();
        // A segment given up stays unread while it is listed, until its
        // release is reported (`run`) or the server stops listing it.
        self.releasing.retain(|id| listed.contains(id));
        for p in &a.segments {
            let id = p.segment_id;
            if self.pumps.contains_key(&id) || self.releasing.contains(&id) {
                continue;
            }
            self.shared.state().owned.insert(id, p.offset);
            if a.release.contains(&id) {
                // Given and taken back before it was read: give it up at
                // once, where the group holds it.
                self.releasing.insert(id);
                self.report_released(epoch, id, None);
            } else {
                self.start(epoch, id, p.offset);
            }
        }
        // Segments the server no longer lists for this reader (reported
        // completed or released): their tasks are done.
        self.pumps.retain(|id, p| {
            let keep = listed.contains(id);
            if !keep {
                p.abort();
            }
            keep
        });
        for id in a.release {
            if let Some(p) = self.pumps.remove(&id) {
                self.releasing.insert(id);
                self.report_released(epoch, id, Some(p));
            }
        }
        self.mark(epoch, a.checkpoint);
    }

    /// Stops segment `id`'s task (awaited: nothing of it can follow), then
    /// hands the application side the release, behind every event sent.
    fn report_released(&self, epoch: u64, id: u64, task: Option<JoinHandle<()>>) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            if let Some(p) = task {
                p.abort();
                let _ = p.await;
            }
            let _ = tx
                .send(Item::Released {
                    epoch,
                    segment_id: id,
                })
                .await;
        });
    }

    /// Sends checkpoint `name`'s marker, once per assignment.
    fn mark(&mut self, epoch: u64, name: String) {
        if name.is_empty() || !self.marked.insert(name.clone()) {
            return;
        }
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Item::Marker { epoch, name }).await;
        });
    }

    /// Starts reading `segment_id` at `offset` until its end. A read that
    /// gives up on a retryable error is reported, then resumed after the
    /// last event sent (the segment stays this reader's: nobody else would
    /// read it).
    fn start(&mut self, epoch: u64, segment_id: u64, offset: u64) {
        let tx = self.tx.clone();
        let conn = self.group.conn.clone();
        let task = tokio::spawn(async move {
            let mut end = offset;
            loop {
                let mut reader = SegmentReader::new(&conn, segment_id, end, true);
                let mut failed = None;
                let mut ended = false;
                while let Some(next) = reader.next().await {
                    // With the events already read: one item for them all.
                    let mut events = Vec::new();
                    let mut next = Some(next);
                    while let Some(n) = next.take() {
                        match n {
                            Ok(event) => {
                                end = event.next_offset;
                                events.push(event);
                                if events.len() < ITEM_EVENTS_MAX {
                                    // Ready now, or not; the end of the
                                    // segment must not be lost here (the
                                    // reader is not polled again after it).
                                    match reader.next().now_or_never() {
                                        Some(Some(n)) => next = Some(n),
                                        Some(None) => ended = true,
                                        None => {}
                                    }
                                }
                            }
                            Err(e) => failed = Some(e),
                        }
                    }
                    if !events.is_empty() && tx.send(Item::Events { epoch, events }).await.is_err()
                    {
                        return;
                    }
                    if failed.is_some() || ended {
                        break;
                    }
                }
                let Some(e) = failed else { break };
                let again = e.is_retryable();
                if tx.send(Item::Failed(e)).await.is_err() || !again {
                    return;
                }
                tokio::time::sleep(READ_RESUME_DELAY).await;
            }
            let _ = tx
                .send(Item::Completed {
                    epoch,
                    segment_id,
                    end,
                })
                .await;
        });
        self.pumps.insert(segment_id, task);
    }
}
