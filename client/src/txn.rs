//! Transactions: events written over the segments of one stream that
//! become visible all at once on commit, or never.
//!
//! Owns [`TransactionalWriter`] (begins transactions as one writer id),
//! [`Transaction`] (writes, flush, commit, abort, ping, status) and what a
//! transaction looks like ([`TransactionInfo`], [`TransactionState`]).
//! A transaction's events go through an [`EventWriter`] whose sessions
//! write into the transaction's hidden parts, so batching, back-pressure,
//! retries and exactly-once are the writer's. Begin, commit, abort, ping
//! and status are calls to the metadata leader, with the admin calls'
//! redirects and retries; commit and abort are idempotent on the server,
//! so a retried call after a lost answer is safe.
//!
//! Must never: commit before every event written so far is acknowledged
//! (`commit` flushes first, and refuses if the flush failed).

use std::time::Duration;

use aquifer_proto::v1 as pb;
use aquifer_proto::v1::transactions_client::TransactionsClient;
use bytes::Bytes;

use crate::admin::Admin;
use crate::conn::Conn;
use crate::{
    Error, EventWriter, PendingBatch, PendingWrite, SegmentInfo, StreamName, WriterConfig,
};

use std::sync::Arc;

/// A transaction's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransactionState {
    /// Takes events; invisible until committed.
    Open,
    /// The commit is decided (durably); its parts are being merged.
    Committing,
    /// Every event is visible.
    Committed,
    /// The abort is decided; its parts are being dropped.
    Aborting,
    /// No event will ever be visible.
    Aborted,
}

impl TransactionState {
    fn from_proto(v: i32) -> Result<TransactionState, Error> {
        use pb::TransactionState as S;
        Ok(match S::try_from(v) {
            Ok(S::Open) => TransactionState::Open,
            Ok(S::Committing) => TransactionState::Committing,
            Ok(S::Committed) => TransactionState::Committed,
            Ok(S::Aborting) => TransactionState::Aborting,
            Ok(S::Aborted) => TransactionState::Aborted,
            _ => return Err(Error::Server(format!("unknown transaction state {v}"))),
        })
    }

    /// Lowercase, as the CLI prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionState::Open => "open",
            TransactionState::Committing => "committing",
            TransactionState::Committed => "committed",
            TransactionState::Aborting => "aborting",
            TransactionState::Aborted => "aborted",
        }
    }
}

impl std::fmt::Display for TransactionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One part of a transaction: its events for one segment.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TransactionPart {
    /// The stream segment the events join on commit.
    pub segment_id: u64,
    /// The hidden segment holding them until then.
    pub transaction_segment_id: u64,
    /// The segment's key range `[key_low, key_high)`.
    pub key_low: f64,
    /// See `key_low`.
    pub key_high: f64,
}

/// A transaction as the server knows it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TransactionInfo {
    /// The stream it writes to.
    pub stream: StreamName,
    /// 32 lowercase hex digits.
    pub id: String,
    /// Open, committing, committed, aborting or aborted.
    pub state: TransactionState,
    /// It times out this long after its last ping (or its begin).
    pub timeout: Duration,
    /// When it began (ms since the epoch).
    pub begun_ms: u64,
    /// When it was committed or aborted (ms since the epoch; 0: not yet).
    pub finished_ms: u64,
    /// Why it aborted ("aborted", "timed out", "stream sealed", ...).
    pub reason: String,
    /// One per segment active when it began.
    pub parts: Vec<TransactionPart>,
    /// For an open transaction: how long before it times out.
    pub lease_left: Duration,
    /// The label it was begun with ([`TransactionalWriter::owner`]; empty:
    /// none).
    pub owner: String,
}

impl TransactionInfo {
    fn from_proto(i: pb::TransactionInfo) -> Result<TransactionInfo, Error> {
        Ok(TransactionInfo {
            stream: StreamName::new(&i.scope, &i.stream)?,
            state: TransactionState::from_proto(i.state)?,
            id: i.transaction_id,
            timeout: Duration::from_millis(i.timeout_ms),
            begun_ms: i.begun_ms,
            finished_ms: i.finished_ms,
            reason: i.reason,
            parts: i
                .parts
                .into_iter()
                .map(|p| TransactionPart {
                    segment_id: p.segment_id,
                    transaction_segment_id: p.transaction_segment_id,
                    key_low: p.key_low,
                    key_high: p.key_high,
                })
                .collect(),
            lease_left: Duration::from_millis(i.lease_left_ms),
            owner: i.owner,
        })
    }
}

/// Pause before asking again about a commit the server still carries out.
const COMMIT_POLL: Duration = Duration::from_millis(100);

/// The `Transactions` calls of one stream, on the metadata leader.
#[derive(Clone)]
pub(crate) struct TxnCalls {
    conn: Arc<Conn>,
    stream: StreamName,
}

impl TxnCalls {
    pub(crate) fn new(conn: Arc<Conn>, stream: StreamName) -> TxnCalls {
        TxnCalls { conn, stream }
    }

    async fn rpc<Q, R, F, Fut>(&self, req: &Q, call: F) -> Result<R, Error>
    where
        Q: Clone,
        F: Fn(TransactionsClient<crate::conn::Transport>, tonic::Request<Q>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        Admin::new(self.conn.clone())
            .call(|c| {
                call(
                    TransactionsClient::new(c.channel().1),
                    c.request(req.clone()),
                )
            })
            .await
    }

    fn request(&self, id: &str, wait: bool) -> pb::TransactionRequest {
        pb::TransactionRequest {
            scope: self.stream.scope.clone(),
            stream: self.stream.stream.clone(),
            transaction_id: id.to_string(),
            wait,
        }
    }

    async fn begin(&self, timeout: Duration, owner: &str) -> Result<TransactionInfo, Error> {
        let req = pb::BeginTransactionRequest {
            scope: self.stream.scope.clone(),
            stream: self.stream.stream.clone(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            owner: owner.to_string(),
        };
        let info = self
            .rpc(&req, |mut c, r| async move { c.begin_transaction(r).await })
            .await?;
        TransactionInfo::from_proto(info)
    }

    /// Commits and waits until every part is merged (the server answers
    /// "committing" when that takes it long: a container without a leader
    /// for a while; then this asks again, within the request timeout).
    pub(crate) async fn commit(&self, id: &str) -> Result<TransactionInfo, Error> {
        let req = self.request(id, true);
        let deadline = tokio::time::Instant::now() + self.conn.settings().request_timeout;
        loop {
            let info = self
                .rpc(
                    &req,
                    |mut c, r| async move { c.commit_transaction(r).await },
                )
                .await?;
            let info = TransactionInfo::from_proto(info)?;
            if info.state != TransactionState::Committing || tokio::time::Instant::now() >= deadline
            {
                return Ok(info);
            }
            tokio::time::sleep(COMMIT_POLL).await;
        }
    }

    pub(crate) async fn abort(&self, id: &str) -> Result<TransactionInfo, Error> {
        let req = self.request(id, false);
        let info = self
            .rpc(&req, |mut c, r| async move { c.abort_transaction(r).await })
            .await?;
        TransactionInfo::from_proto(info)
    }

    pub(crate) async fn ping(&self, id: &str) -> Result<TransactionInfo, Error> {
        let req = self.request(id, false);
        let info = self
            .rpc(&req, |mut c, r| async move { c.ping_transaction(r).await })
            .await?;
        TransactionInfo::from_proto(info)
    }

    pub(crate) async fn status(&self, id: &str) -> Result<TransactionInfo, Error> {
        let req = self.request(id, false);
        let info = self
            .rpc(
                &req,
                |mut c, r| async move { c.transaction_status(r).await },
            )
            .await?;
        TransactionInfo::from_proto(info)
    }

    pub(crate) async fn list(&self) -> Result<Vec<TransactionInfo>, Error> {
        let req = pb::ListTransactionsRequest {
            scope: self.stream.scope.clone(),
            stream: self.stream.stream.clone(),
        };
        let answer = self
            .rpc(&req, |mut c, r| async move { c.list_transactions(r).await })
            .await?;
        answer
            .transactions
            .into_iter()
            .map(TransactionInfo::from_proto)
            .collect()
    }
}

/// Begins transactions on one stream as one writer id
/// ([`Client::transactional_writer`](crate::Client::transactional_writer)).
///
/// ```no_run
/// # async fn example() -> Result<(), aquifer_client::Error> {
/// use aquifer_client::{Client, StreamName};
///
/// let client = Client::connect("127.0.0.1:7070").await?;
/// let stream: StreamName = "shop/orders".parse()?;
/// let writer = client.transactional_writer(&stream, "orders-loader-1")?;
/// let txn = writer.begin().await?;
/// for i in 0..100 {
///     txn.write(Some("customer-7"), format!("order {i}")).await?;
/// }
/// txn.commit().await?; // all 100 visible now, or none if this fails
/// # Ok(())
/// # }
/// ```
pub struct TransactionalWriter {
    calls: TxnCalls,
    config: WriterConfig,
    timeout: Duration,
    owner: String,
}

/// A new transaction's timeout unless [`TransactionalWriter::timeout`] says
/// otherwise: 10 minutes without a ping.
pub const TRANSACTION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(600);

impl TransactionalWriter {
    pub(crate) fn new(
        conn: Arc<Conn>,
        stream: StreamName,
        config: WriterConfig,
    ) -> Result<TransactionalWriter, Error> {
        crate::writer::check_writer_id(&config.writer_id)?;
        Ok(TransactionalWriter {
            calls: TxnCalls::new(conn, stream),
            config,
            timeout: TRANSACTION_TIMEOUT_DEFAULT,
            owner: String::new(),
        })
    }

    /// Transactions begun from now on time out this long after their last
    /// ping (1 s to 24 h).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Transactions begun from now on carry this opaque label (at most
    /// 255 bytes; the server refuses a longer one with
    /// [`Error::InvalidArgument`]), e.g. which sink subtask began them.
    /// [`list`](Self::list) reports it, so a restarted process finds the
    /// transactions an earlier run of it left open and aborts or commits
    /// them. Default: none.
    pub fn owner(mut self, label: impl Into<String>) -> Self {
        self.owner = label.into();
        self
    }

    /// Begins a transaction: one part per segment active now.
    pub async fn begin(&self) -> Result<Transaction, Error> {
        let info = self.calls.begin(self.timeout, &self.owner).await?;
        Transaction::open(self.calls.clone(), info, self.config.clone())
    }

    /// Transaction `id` of this stream, to write more to it (as this
    /// writer id), commit or abort it: after a restart, or from another
    /// process than the one that began it.
    pub async fn resume(&self, id: &str) -> Result<Transaction, Error> {
        let info = self.calls.status(id).await?;
        Transaction::open(self.calls.clone(), info, self.config.clone())
    }

    /// The stream's open and recently finished transactions.
    pub async fn list(&self) -> Result<Vec<TransactionInfo>, Error> {
        self.calls.list().await
    }
}

/// One transaction. Write to it, then [`commit`](Self::commit) or
/// [`abort`](Self::abort); call [`ping`](Self::ping) more often than its
/// timeout while it stays open. Dropping it leaves it open on the server
/// (it times out, unless another process commits or aborts it by id).
pub struct Transaction {
    calls: TxnCalls,
    info: TransactionInfo,
    writer: EventWriter,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("stream", &self.info.stream)
            .field("id", &self.info.id)
            .finish_non_exhaustive()
    }
}

impl Transaction {
    pub(crate) fn open(
        calls: TxnCalls,
        info: TransactionInfo,
        config: WriterConfig,
    ) -> Result<Transaction, Error> {
        // The parts route keys like the stream's segments did when it
        // began: each part takes its parent's key range.
        let parts = info
            .parts
            .iter()
            .map(|p| SegmentInfo {
                segment_id: p.transaction_segment_id,
                key_low: p.key_low,
                key_high: p.key_high,
                ..SegmentInfo::default()
            })
            .collect();
        let writer = EventWriter::for_transaction(
            calls.conn.clone(),
            info.stream.clone(),
            parts,
            config,
            info.id.clone(),
        )?;
        Ok(Transaction {
            calls,
            info,
            writer,
        })
    }

    /// The transaction's id (32 hex digits): commit or abort it by this
    /// from anywhere.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// The transaction as it was when begun or resumed.
    pub fn info(&self) -> &TransactionInfo {
        &self.info
    }

    /// Queues one event of the transaction (routed by key like any other;
    /// see [`EventWriter::write_event`]). Await the returned write for its
    /// acknowledgement: the event is then durable, though still invisible.
    pub async fn write(
        &self,
        routing_key: Option<&str>,
        payload: impl Into<Bytes>,
    ) -> Result<PendingWrite, Error> {
        self.writer.write_event(routing_key, payload).await
    }

    /// Queues events of one key as batches (see
    /// [`EventWriter::write_batch`]): durable once the returned batch
    /// resolves, visible at commit.
    pub async fn write_batch<P: AsRef<[u8]>>(
        &self,
        routing_key: Option<&str>,
        payloads: &[P],
    ) -> Result<PendingBatch, Error> {
        self.writer.write_batch(routing_key, payloads).await
    }

    /// Waits until every event written so far is acknowledged.
    pub async fn flush(&self) -> Result<(), Error> {
        self.writer.flush().await
    }

    /// Flushes, then commits: when this returns Ok in state `Committed`,
    /// every event written is visible (in each segment contiguously, in
    /// write order per key). `Committing` (rare: a container without a
    /// leader past the request timeout) means the commit is decided and
    /// durable and the server finishes it by itself. After an error other
    /// than a refused commit, the outcome may be unknown: ask
    /// [`TransactionalWriter::resume`] and `status`, or commit again
    /// (idempotent).
    pub async fn commit(self) -> Result<TransactionInfo, Error> {
        self.writer.flush().await?;
        let info = self.calls.commit(&self.info.id).await;
        let _ = self.writer.close().await;
        info
    }

    /// Aborts: no event of it will ever be visible.
    pub async fn abort(self) -> Result<TransactionInfo, Error> {
        // Nothing to wait for: whatever is in flight is discarded with it.
        drop(self.writer);
        self.calls.abort(&self.info.id).await
    }

    /// Renews the transaction's lease for its timeout.
    pub async fn ping(&self) -> Result<TransactionInfo, Error> {
        self.calls.ping(&self.info.id).await
    }

    /// The transaction as the server knows it now.
    pub async fn status(&self) -> Result<TransactionInfo, Error> {
        self.calls.status(&self.info.id).await
    }

    /// Pings the transaction every third of its timeout from now until the
    /// returned guard is dropped (a long-running load keeps it alive
    /// without pinging by hand). A failed ping is retried at the next tick.
    pub fn keep_alive(&self) -> KeepAlive {
        let calls = self.calls.clone();
        let id = self.info.id.clone();
        let every = (self.info.timeout / 3).max(Duration::from_millis(100));
        KeepAlive(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = calls.ping(&id).await {
                    if !e.is_retryable() {
                        return; // committed, aborted, or gone: nothing to keep
                    }
                }
            }
        }))
    }
}

/// Keeps a transaction alive while it lives ([`Transaction::keep_alive`]).
#[must_use = "the pings stop when this is dropped"]
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}
