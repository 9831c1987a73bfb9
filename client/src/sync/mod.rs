//! The state synchronizer: a typed state that many processes share, kept
//! in a stream of one segment as a whole state followed by records of
//! updates, and changed optimistically with conditional appends.
//!
//! Owns the public face — [`StateSynchronizer`], [`SyncState`],
//! [`SyncConfig`] — and the segment the synchronizer works on (its stream,
//! created on first use). The rules live in `machine.rs` (the state, the
//! revision, the write loop), the record format in `record.rs`. It must
//! never hold a state that is not exactly its segment's records up to its
//! revision.

mod machine;
mod record;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use self::machine::{Core, Log};
use crate::admin::Admin;
use crate::conn::Conn;
use crate::reader::SegmentReader;
use crate::segment::SegmentWriter;
use crate::{Appended, Error, Event, StreamName};

/// What [`SyncState`]'s decoders return on bytes they cannot read: any
/// error (`"…".into()` or `e.into()`); the synchronizer reports it as
/// [`Error::Corrupt`] naming the record's offset.
pub type DecodeError = Box<dyn std::error::Error + Send + Sync>;

/// A state a [`StateSynchronizer`] shares: the state, the updates that
/// change it, and how both become bytes.
///
/// `apply` must be deterministic (every process applies the same updates in
/// the same order and must reach the same state) and must not fail: decide
/// in the `update` closure whether an update makes sense.
///
/// ```
/// use aquifer_client::{DecodeError, SyncState};
///
/// /// A counter; each update adds to it.
/// struct Counter(u64);
///
/// impl SyncState for Counter {
///     type Update = u64;
///     fn apply(&mut self, add: &u64) {
///         self.0 += add;
///     }
///     fn encode_state(&self) -> Vec<u8> {
///         self.0.to_le_bytes().to_vec()
///     }
///     fn decode_state(bytes: &[u8]) -> Result<Self, DecodeError> {
///         Ok(Counter(u64::from_le_bytes(bytes.try_into()?)))
///     }
///     fn encode_update(add: &u64) -> Vec<u8> {
///         add.to_le_bytes().to_vec()
///     }
///     fn decode_update(bytes: &[u8]) -> Result<u64, DecodeError> {
///         Ok(u64::from_le_bytes(bytes.try_into()?))
///     }
/// }
/// ```
pub trait SyncState: Sized {
    /// One change to the state.
    type Update;
    /// Applies one update.
    fn apply(&mut self, update: &Self::Update);
    /// The whole state as bytes (for `initialize` and `compact`).
    fn encode_state(&self) -> Vec<u8>;
    /// A state from what `encode_state` made.
    fn decode_state(bytes: &[u8]) -> Result<Self, DecodeError>;
    /// One update as bytes.
    fn encode_update(update: &Self::Update) -> Vec<u8>;
    /// An update from what `encode_update` made.
    fn decode_update(bytes: &[u8]) -> Result<Self::Update, DecodeError>;
}

/// How a [`StateSynchronizer`] retries.
///
/// ```
/// use std::time::Duration;
/// use aquifer_client::SyncConfig;
///
/// let config = SyncConfig::default().update_timeout(Duration::from_secs(5));
/// assert_eq!(config.update_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SyncConfig {
    /// How long one write keeps deciding again after other writers changed
    /// the state first, before giving up with [`Error::Unavailable`].
    /// Default: 60 s. (Each append also retries failures on its own, up to
    /// the client's request timeout.)
    pub update_timeout: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            update_timeout: Duration::from_secs(60),
        }
    }
}

impl SyncConfig {
    /// Sets [`update_timeout`](Self::update_timeout).
    pub fn update_timeout(mut self, timeout: Duration) -> Self {
        self.update_timeout = timeout;
        self
    }
}

/// A typed state shared through a stream: every process that opens a
/// synchronizer on the same stream sees the same sequence of changes.
/// Get one from [`crate::Client::state_synchronizer`].
///
/// The stream holds records: a whole state, then records of updates, each
/// one event. A synchronizer's [`state`](Self::state) is the records up to
/// its [`revision`](Self::revision) (a segment offset), applied in order;
/// [`fetch_updates`](Self::fetch_updates) reads what others appended since.
/// [`update`](Self::update) is optimistic: its closure decides on the local
/// state, and the updates are appended only if the segment is still
/// exactly at the revision (a conditional append); if another process
/// appended first, the synchronizer reads that in and runs the closure
/// again. So every update was decided on the latest state, and each is
/// applied once, in the same order everywhere.
/// [`compact`](Self::compact) writes the whole state and truncates the
/// stream below it, so it does not grow without end and processes starting
/// later read from there.
///
/// Never give the stream retention limits or scale it: the synchronizer
/// needs one segment whose head is always a whole state.
///
/// ```no_run
/// # use aquifer_client::{DecodeError, SyncState};
/// # struct Counter(u64);
/// # impl SyncState for Counter {
/// #     type Update = u64;
/// #     fn apply(&mut self, add: &u64) { self.0 += add; }
/// #     fn encode_state(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
/// #     fn decode_state(b: &[u8]) -> Result<Self, DecodeError> { Ok(Counter(u64::from_le_bytes(b.try_into()?))) }
/// #     fn encode_update(add: &u64) -> Vec<u8> { add.to_le_bytes().to_vec() }
/// #     fn decode_update(b: &[u8]) -> Result<u64, DecodeError> { Ok(u64::from_le_bytes(b.try_into()?)) }
/// # }
/// use aquifer_client::{Client, SyncConfig};
///
/// # async fn example() -> Result<(), aquifer_client::Error> {
/// let client = Client::connect("127.0.0.1:7450").await?;
/// let mut counter = client
///     .state_synchronizer::<Counter>(&"app/counter".parse()?, SyncConfig::default())
///     .await?;
/// counter.initialize(Counter(0)).await?; // false if someone else did
/// // Add one, unless the counter reached 10 already.
/// counter.update(|c| if c.0 < 10 { vec![1] } else { vec![] }).await?;
/// println!("now {}", counter.state().map_or(0, |c| c.0));
/// # Ok(())
/// # }
/// ```
///
/// Errors: a write that fails with a retryable error ([`Error::is_retryable`],
/// after the client's own retries gave up), or whose future is dropped,
/// may or may not be applied — at most once, and only on the state it was
/// decided on; [`fetch_updates`](Self::fetch_updates) shows which. Each
/// synchronizer appends under a random writer id of its own, and under a
/// fresh one after such a write, so no later append can be taken for it.
pub struct StateSynchronizer<S> {
    core: Core<S>,
    log: SegmentLog,
}

impl<S: SyncState> StateSynchronizer<S> {
    /// Opens the synchronizer on `stream`, creating the stream (one
    /// segment) if it does not exist, and reads the state it holds.
    pub(crate) async fn open(
        conn: Arc<Conn>,
        stream: &StreamName,
        config: SyncConfig,
    ) -> Result<StateSynchronizer<S>, Error> {
        let admin = Admin::new(conn.clone());
        match admin.create_stream(stream, 1).await {
            Ok(_) | Err(Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        let info = admin.describe_stream(stream).await?;
        let [segment] = &info.segments[..] else {
            return Err(Error::InvalidArgument(format!(
                "stream {stream} has {} segments: a state synchronizer needs a stream of exactly one (created with one segment, never scaled)",
                info.segments.len()
            )));
        };
        let log = SegmentLog {
            conn,
            admin,
            stream: stream.clone(),
            segment_id: segment.segment_id,
        };
        let mut core = Core::new(
            stream.to_string(),
            segment.head_offset,
            config.update_timeout,
        );
        core.fetch(&log, None).await?;
        Ok(StateSynchronizer { core, log })
    }

    /// The state as of the [`revision`](Self::revision); `None` until some
    /// process [`initialize`](Self::initialize)d it.
    pub fn state(&self) -> Option<&S> {
        self.core.state()
    }

    /// The segment offset up to which [`state`](Self::state) holds every
    /// record.
    pub fn revision(&self) -> u64 {
        self.core.revision()
    }

    /// The stream the state is kept in.
    pub fn stream(&self) -> &StreamName {
        &self.log.stream
    }

    /// Reads every record appended since the revision and applies it.
    pub async fn fetch_updates(&mut self) -> Result<(), Error> {
        self.core.fetch(&self.log, None).await
    }

    /// Changes the state: `decide` gets the state and returns the updates
    /// to make, which are appended only if nothing was appended since the
    /// state it saw; otherwise the synchronizer reads what was and calls
    /// `decide` again, until the updates are written or
    /// [`SyncConfig::update_timeout`] passes. `decide` sees the local state
    /// first: returning no updates writes nothing (`Ok(false)`), so call
    /// [`fetch_updates`](Self::fetch_updates) first to decide that on the
    /// newest state. [`Error::FailedPrecondition`] before any state exists.
    pub async fn update<F>(&mut self, decide: F) -> Result<bool, Error>
    where
        F: FnMut(&S) -> Vec<S::Update>,
    {
        self.core.update(&self.log, decide).await
    }

    /// Appends `updates` whatever the state they meet, and applies them
    /// locally. (It appends at the revision too, reading in what others
    /// wrote first and trying again, so the local state stays exact
    /// without reading its own write back.)
    pub async fn update_unconditionally(&mut self, updates: Vec<S::Update>) -> Result<(), Error> {
        self.core.update_unconditionally(&self.log, updates).await
    }

    /// Writes `initial` as the state if the stream holds none yet; `true`
    /// if this call did, `false` if a state was there (it is the local
    /// state now).
    pub async fn initialize(&mut self, initial: S) -> Result<bool, Error> {
        self.core.initialize(&self.log, initial).await
    }

    /// Writes the whole state at the revision (conditionally, like an
    /// update), then truncates the stream below it: the stream no longer
    /// grows without end, and synchronizers opened later, or behind it,
    /// start from that state. [`Error::FailedPrecondition`] before any
    /// state exists.
    pub async fn compact(&mut self) -> Result<(), Error> {
        self.core.compact(&self.log).await
    }
}

/// The synchronizer's segment: appends through a [`SegmentWriter`], reads
/// through a [`SegmentReader`], the head and truncation through [`Admin`].
struct SegmentLog {
    conn: Arc<Conn>,
    admin: Admin,
    stream: StreamName,
    segment_id: u64,
}

impl Log for SegmentLog {
    async fn append_at(
        &self,
        writer_id: &str,
        event_number: i64,
        expected_length: u64,
        record: Bytes,
    ) -> Result<Appended, Error> {
        SegmentWriter::new(self.conn.clone(), self.segment_id, writer_id.into())?
            .append_conditional(event_number, expected_length, None, record)
            .await
    }

    fn read(
        &self,
        from: u64,
        to: Option<u64>,
    ) -> impl Stream<Item = Result<Event, Error>> + Send + Unpin {
        let segment_id = self.segment_id;
        match to {
            // A bounded read waits for a replica behind `to` to catch up.
            Some(to) => SegmentReader::bounded(&self.conn, segment_id, from, to, None),
            None => SegmentReader::new(&self.conn, segment_id, from, false),
        }
    }

    async fn head(&self) -> Result<u64, Error> {
        let segment_id = self.segment_id;
        let info = self.admin.describe_stream(&self.stream).await?;
        info.segments
            .iter()
            .find(|s| s.segment_id == segment_id)
            .map(|s| s.head_offset)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "segment {segment_id} is no longer part of stream {}",
                    self.stream
                ))
            })
    }

    async fn truncate(&self, head: u64) -> Result<u64, Error> {
        self.admin.truncate_segment(self.segment_id, head).await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A counter; updates add to it.
    #[derive(Debug, PartialEq)]
    pub(crate) struct Counter(pub(crate) u64);

    impl SyncState for Counter {
        type Update = u64;

        fn apply(&mut self, update: &u64) {
            self.0 += update;
        }

        fn encode_state(&self) -> Vec<u8> {
            self.0.to_le_bytes().to_vec()
        }

        fn decode_state(bytes: &[u8]) -> Result<Self, DecodeError> {
            Ok(Counter(u64::from_le_bytes(bytes.try_into()?)))
        }

        fn encode_update(update: &u64) -> Vec<u8> {
            update.to_le_bytes().to_vec()
        }

        fn decode_update(bytes: &[u8]) -> Result<u64, DecodeError> {
            Ok(u64::from_le_bytes(bytes.try_into()?))
        }
    }

    fn send<T: Send>(_: &T) {}

    #[tokio::test]
    async fn synchronizer_calls_can_be_spawned() {
        // Futures are only created here, never run: nothing is dialled.
        let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:1");
        let conn = Arc::new(Conn::from_lazy_for_tests(endpoint));
        let stream: StreamName = "test/sync".parse().unwrap();
        let mut sync = StateSynchronizer::<Counter> {
            core: Core::new(stream.to_string(), 0, Duration::from_secs(1)),
            log: SegmentLog {
                admin: Admin::new(conn.clone()),
                conn,
                stream,
                segment_id: 7,
            },
        };
        send(&sync);
        send(&sync.update(|c| vec![c.0]));
        send(&sync.update_unconditionally(vec![1]));
        send(&sync.fetch_updates());
        send(&sync.initialize(Counter(0)));
        send(&sync.compact());
    }
}
