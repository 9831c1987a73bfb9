//! Writing across scales: the writer's routing table (which segment takes
//! which key, and the append session of each), shared by the writer and its
//! sessions, and the hand-over of a sealed segment's unacknowledged events
//! to its successors.
//!
//! Owns [`Shared`]: every send of an event to a session happens under its
//! table lock, and so does a sealed segment's hand-over (drain what was
//! already sent to it, swap it for its successors in the router, send its
//! events on, in their order). So no later write of a key can overtake that
//! key's events being moved: while a segment is being handed over, writes
//! for it pile up in its command channel and move with the rest.
//!
//! Must never: hold the table lock across an await; move an event before
//! the sealed segment's last applied event number for this writer is known
//! (the events it applied would be written twice); reorder moved events;
//! route a key to a successor while an older segment holding that key is
//! still in the table (see `Router`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::batch::Events;
use crate::conn::Conn;
use crate::routing::Router;
use crate::session::{Cmd, EventToken, Session, SessionConfig};
use crate::{Error, SegmentInfo, StreamName};

/// A flush waiter: answered once the events it covers are resolved.
pub(crate) type FlushReply = oneshot::Sender<Result<(), Error>>;

/// One segment's session, as the writer sees it.
struct SessionHandle {
    cmds: mpsc::UnboundedSender<Cmd>,
    /// Set when the session failed for good.
    failed: Arc<OnceLock<Error>>,
    task: JoinHandle<()>,
}

/// What the lock guards.
struct Table {
    router: Router,
    /// The sessions started so far, by segment id; a handed-over segment's
    /// leaves (its sender with it, so its task ends).
    sessions: HashMap<u64, SessionHandle>,
    /// The writer closed or was dropped: a session started from now on (by
    /// a hand-over) keeps no sender here, so it ends once its events are
    /// resolved.
    closing: bool,
}

/// The state a writer and its sessions share.
pub(crate) struct Shared {
    conn: Arc<Conn>,
    stream: StreamName,
    config: SessionConfig,
    table: Mutex<Table>,
}

impl Shared {
    /// A writer's shared state, routing over `segments` (its active ones).
    pub(crate) fn new(
        conn: Arc<Conn>,
        stream: StreamName,
        config: SessionConfig,
        segments: &[SegmentInfo],
    ) -> Arc<Shared> {
        Arc::new(Shared {
            conn,
            stream,
            config,
            table: Mutex::new(Table {
                router: Router::new(segments),
                sessions: HashMap::new(),
                closing: false,
            }),
        })
    }

    /// The table; a panic elsewhere while it was held leaves it usable (each
    /// change under the lock is a single step that cannot half-happen).
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Routes a run of events by its key position and sends it to its
    /// segment's session, starting the session on demand. The segment's
    /// error if its session failed for good (the token is dropped: its
    /// budget returns).
    pub(crate) fn send_events(
        self: &Arc<Self>,
        events: Events,
        token: EventToken,
    ) -> Result<(), Error> {
        let mut table = self.table();
        let id = table.router.route(token.position).ok_or(Error::Closed)?;
        let handle = self.session(&mut table, id);
        if let Some(e) = handle.failed.get() {
            return Err(e.clone());
        }
        handle
            .cmds
            .send(Cmd::Event { events, token })
            .map_err(|_| Error::Closed)
    }

    /// Sends a flush to every session; one reply each.
    pub(crate) fn flush_all(&self) -> Vec<oneshot::Receiver<Result<(), Error>>> {
        let table = self.table();
        table
            .sessions
            .values()
            .map(|h| {
                let (tx, rx) = oneshot::channel();
                if let Err(mpsc::error::SendError(Cmd::Flush(tx))) = h.cmds.send(Cmd::Flush(tx)) {
                    let _ = tx.send(Err(Error::Closed));
                }
                rx
            })
            .collect()
    }

    /// Ends the table: drops every session's sender (each task ends once
    /// its events are resolved) and returns their tasks.
    pub(crate) fn close(&self) -> Vec<JoinHandle<()>> {
        let mut table = self.table();
        table.closing = true;
        table.sessions.drain().map(|(_, h)| h.task).collect()
    }

    /// After `segment_id` was found sealed: its successors as the stream
    /// lists them, or `sealed` if the whole stream is sealed.
    pub(crate) async fn successors(
        &self,
        segment_id: u64,
        sealed: Error,
    ) -> Result<Vec<SegmentInfo>, Error> {
        let admin = Admin::new(self.conn.clone());
        let info = admin
            .await_successors(&self.stream, segment_id, self.config.retry_timeout)
            .await?
            .ok_or(sealed)?;
        let ids = info
            .segments
            .iter()
            .find(|s| s.segment_id == segment_id)
            .map(|s| s.successors.clone())
            .unwrap_or_default();
        Ok(info
            .segments
            .into_iter()
            .filter(|s| ids.contains(&s.segment_id))
            .collect())
    }

    /// Hands sealed segment `sealed_id` over to `successors`: `events` (its
    /// unacknowledged runs of events, in order, none applied there) and
    /// then whatever was sent to it meanwhile (still in `cmds`) go, in that
    /// order, to the successor owning each key (keyless ones round-robin
    /// over the successors); its pending flushes then wait for the
    /// successors that got events. All under the lock: see the module doc.
    pub(crate) fn hand_over(
        self: &Arc<Self>,
        sealed_id: u64,
        successors: &[SegmentInfo],
        mut events: Vec<(Events, EventToken)>,
        cmds: &mut mpsc::UnboundedReceiver<Cmd>,
        mut flushes: Vec<FlushReply>,
    ) {
        let mut table = self.table();
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::Event { events: run, token } => events.push((run, token)),
                Cmd::Flush(reply) => flushes.push(reply),
            }
        }
        table.router.remove(sealed_id);
        // Dropping the handle drops the sender: nothing more can come.
        table.sessions.remove(&sealed_id);
        for s in successors {
            table.router.add(s);
        }
        let successor_ids: Vec<u64> = successors.iter().map(|s| s.segment_id).collect();
        let mut keyless = 0usize;
        let mut targets = BTreeSet::new();
        for (run, token) in events {
            let id = match token.position {
                Some(_) => table.router.route(token.position),
                None => {
                    keyless += 1;
                    successor_ids
                        .get(keyless % successor_ids.len().max(1))
                        .copied()
                        .or_else(|| table.router.route(None))
                }
            };
            let Some(id) = id else {
                let _ = token.tx.send(Err(Error::Closed));
                continue;
            };
            let handle = self.session(&mut table, id);
            if let Some(e) = handle.failed.get() {
                let _ = token.tx.send(Err(e.clone()));
                continue;
            }
            if let Err(mpsc::error::SendError(Cmd::Event { token, .. })) =
                handle.cmds.send(Cmd::Event { events: run, token })
            {
                let _ = token.tx.send(Err(Error::Closed));
            }
            targets.insert(id);
        }
        if !flushes.is_empty() {
            let waits: Vec<_> = targets
                .iter()
                .filter_map(|id| table.sessions.get(id))
                .map(|h| {
                    let (tx, rx) = oneshot::channel();
                    let _ = h.cmds.send(Cmd::Flush(tx));
                    rx
                })
                .collect();
            tokio::spawn(async move {
                let mut result = Ok(());
                for rx in waits {
                    if let Err(e) = rx.await.unwrap_or(Err(Error::Closed)) {
                        result = result.and(Err(e));
                    }
                }
                for reply in flushes {
                    let _ = reply.send(result.clone());
                }
            });
        }
        if table.closing {
            // The writer is gone: the successors' sessions end once their
            // events are resolved.
            table.sessions.clear();
        }
        tracing::debug!(
            segment_id = sealed_id,
            successors = ?successor_ids,
            moved_to = ?targets,
            "sealed segment handed over"
        );
    }

    /// The session of segment `id`, started if there is none.
    fn session<'t>(self: &Arc<Self>, table: &'t mut Table, id: u64) -> &'t SessionHandle {
        table.sessions.entry(id).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let failed = Arc::new(OnceLock::new());
            let session = Session::new(
                id,
                self.conn.clone(),
                self.config.clone(),
                failed.clone(),
                self.clone(),
            );
            SessionHandle {
                cmds: tx,
                failed,
                task: tokio::spawn(session.run(rx)),
            }
        })
    }
}
