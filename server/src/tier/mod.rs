//! Tier-2: segment bytes in object storage, as chunks.
//!
//! [`Tier2`] opens the object store (local filesystem under the data dir by
//! default, or S3 and S3-compatible servers), puts chunks under unique names, and reads byte ranges of them
//! back through the block cache with readahead and a bounded number of
//! concurrent GETs. [`writer::StorageWriter`] decides when a segment's tail
//! buffer becomes a chunk.
//!
//! One object holds the chunks of one flush of a container: pieces of
//! several segments side by side, so many small segments do not turn into
//! many tiny objects. Object names never repeat (container, raft term, time
//! and a random suffix) and are created with `PutMode::Create`, so a deposed
//! leader can never overwrite an object that a committed entry refers to.
//! Only chunks recorded by an applied "chunks flushed" entry are part of a
//! segment; an object under `chunks/` that none refers to is an orphan.

pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::Semaphore;

use aquifer_proto::v1::Tier2Location;

use crate::cache::{BlockCache, BlockKey, BLOCK_BYTES};
use crate::config::ServerConfig;
use crate::container::Chunk;
use crate::error::Error;
use crate::metrics::Metrics;

/// Blocks fetched on a cache miss, one GET each, at once: the block asked
/// for and the ones after it (readahead for sequential catch-up readers).
const READAHEAD_BLOCKS: u64 = 4;

pub struct Tier2 {
    store: Arc<dyn ObjectStore>,
    /// Handed to direct scans (no credentials).
    location: Tier2Location,
    /// Set for the local filesystem back end, whose puts we write ourselves
    /// (see [`put_local`]).
    local_root: Option<PathBuf>,
    cache: BlockCache,
    reads: Semaphore,
    /// Bound on one read from the object store, its retries included.
    request_timeout: std::time::Duration,
    metrics: Arc<Metrics>,
}

/// Where chunk objects live: `chunks/c<container>/<object>`.
const CHUNKS_DIR: &str = "chunks";

/// The name of a new chunk object of `container`, put by its leader in `term`.
pub fn chunk_name(container: u32, term: u64) -> String {
    let suffix: u64 = rand::random();
    let ms = writer::now_ms();
    format!("{CHUNKS_DIR}/c{container}/t{term:012}-{ms:013}-{suffix:016x}.chunk")
}

/// A local object is written and synced this much at a time.
const LOCAL_PUT_PIECE: usize = 1024 * 1024;

/// Puts a chunk object on the local filesystem back end: durable before it
/// returns (its "chunks flushed" entry lets the log be truncated), created
/// only if the name is new, and written and synced 1 MiB at a time: one
/// 8 MiB write synced at the end queues 8 MiB in front of every raft log
/// fdatasync on the same disk (figures: "Profiling pass" in
/// `benches/RESULTS.md`). The
/// partial file is named after the object (same term), so orphan collection
/// leaves it alone while its term lasts.
fn put_local(file: &std::path::Path, parts: &[Bytes]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = file
        .parent()
        .ok_or_else(|| std::io::Error::other("object path has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let mut partial = file.as_os_str().to_owned();
    partial.push(format!(".partial-{:016x}", rand::random::<u64>()));
    let partial = PathBuf::from(partial);
    let written = (|| {
        let mut f = std::fs::File::create_new(&partial)?;
        let mut unsynced = 0;
        for part in parts {
            for piece in part.chunks(LOCAL_PUT_PIECE) {
                f.write_all(piece)?;
                unsynced += piece.len();
                if unsynced >= LOCAL_PUT_PIECE {
                    f.sync_data()?;
                    unsynced = 0;
                }
            }
        }
        f.sync_all()?;
        // A hard link fails if the name exists: create-only, atomically.
        std::fs::hard_link(&partial, file)
    })();
    let removed = std::fs::remove_file(&partial);
    written?;
    removed?;
    std::fs::File::open(dir)?.sync_all()
}

/// The raft term a chunk object was put in (None: not a name we write).
pub fn chunk_term(name: &str) -> Option<u64> {
    name.rsplit('/')
        .next()?
        .strip_prefix('t')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

impl Tier2 {
    pub fn open(config: &ServerConfig, metrics: Arc<Metrics>) -> Result<Self, Error> {
        let t = &config.tier2;
        let (store, local_root): (Arc<dyn ObjectStore>, _) = match t.url.as_deref() {
            None => Self::local(config.data_dir.join("tier2"))?,
            Some(url) => {
                if let Some(path) = url.strip_prefix("file://") {
                    Self::local(PathBuf::from(path))?
                } else if let Some(rest) = url.strip_prefix("s3://") {
                    (Self::s3(t, rest)?, None)
                } else {
                    return Err(Error::InvalidArgument(format!(
                        "tier2.url {url:?} is not supported: use file:///absolute/path or s3://bucket/prefix"
                    )));
                }
            }
        };
        let location = match &local_root {
            Some(root) => Tier2Location {
                url: format!(
                    "file://{}",
                    std::path::absolute(root)
                        .map_err(|e| Error::Tier2(format!("{}: {e}", root.display())))?
                        .display()
                ),
                ..Default::default()
            },
            None => Tier2Location {
                url: t.url.clone().unwrap_or_default(),
                endpoint: t.endpoint.clone().unwrap_or_default(),
                region: t.region.clone().unwrap_or_default(),
                allow_http: t.allow_http,
            },
        };
        Ok(Tier2 {
            store,
            location,
            local_root,
            cache: BlockCache::new(config.cache_bytes_max),
            reads: Semaphore::new(t.read_concurrency),
            request_timeout: std::time::Duration::from_millis(t.request_timeout_ms),
            metrics,
        })
    }

    /// The node's metrics registry (tier-2 and read series).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The directory of a local tier-2 (None for object storage).
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    fn local(root: PathBuf) -> Result<(Arc<dyn ObjectStore>, Option<PathBuf>), Error> {
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::Tier2(format!("cannot create {}: {e}", root.display())))?;
        let store = LocalFileSystem::new_with_prefix(&root)?;
        Ok((Arc::new(store), Some(root)))
    }

    /// `bucket/prefix` on S3 or an S3-compatible server; settings from the
    /// config, else the standard AWS environment variables.
    fn s3(
        t: &crate::config::Tier2Config,
        bucket_and_prefix: &str,
    ) -> Result<Arc<dyn ObjectStore>, Error> {
        let (bucket, prefix) = match bucket_and_prefix.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (bucket_and_prefix, ""),
        };
        if bucket.is_empty() {
            return Err(Error::InvalidArgument(
                "tier2.url s3:// names no bucket".into(),
            ));
        }
        let timeout = std::time::Duration::from_millis(t.request_timeout_ms);
        // Retries stop at the request timeout: a tier-2 outage surfaces as an
        // error within it rather than after object_store's default 3 minutes.
        let retry = object_store::RetryConfig {
            retry_timeout: timeout,
            ..Default::default()
        };
        let client = object_store::ClientOptions::new()
            .with_allow_http(t.allow_http)
            .with_timeout(timeout)
            .with_connect_timeout(timeout.min(std::time::Duration::from_secs(5)));
        // Client options first: they replace every client setting, allow_http included.
        let mut b = AmazonS3Builder::from_env()
            .with_client_options(client)
            .with_bucket_name(bucket)
            .with_allow_http(t.allow_http)
            .with_retry(retry);
        if let Some(endpoint) = &t.endpoint {
            // S3-compatible servers are addressed by path, not by host name.
            b = b
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        b =
            b.with_region(t.region.clone().unwrap_or_else(|| {
                std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
            }));
        if let Some(k) = &t.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &t.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        let store = b
            .build()
            .map_err(|e| Error::InvalidArgument(format!("tier2 S3 settings: {e}")))?;
        if prefix.is_empty() {
            Ok(Arc::new(store))
        } else {
            Ok(Arc::new(PrefixStore::new(store, prefix)))
        }
    }

    /// Bytes held by the block cache now.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Where tier-2 is, for direct scans.
    pub fn location(&self) -> &Tier2Location {
        &self.location
    }

    /// Puts a new chunk object made of `parts`; fails if the name exists.
    pub async fn put_chunk(&self, name: &str, parts: Vec<Bytes>) -> Result<(), Error> {
        let path = ObjectPath::from(name);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let bytes: usize = parts.iter().map(Bytes::len).sum();
        let m = &self.metrics;
        m.tier2_puts.inc();
        let put = match &self.local_root {
            Some(root) => {
                let file = root.join(name);
                tokio::task::spawn_blocking(move || put_local(&file, &parts))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .map_err(|e| Error::Tier2(format!("put of chunk {name}: {e}")))
            }
            None => self
                .store
                .put_opts(&path, parts.into_iter().collect::<PutPayload>(), opts)
                .await
                .map(drop)
                .map_err(Error::from),
        };
        if let Err(e) = put {
            m.tier2_put_errors.inc();
            return Err(e);
        }
        m.tier2_put_bytes.inc_by(bytes as u64);
        Ok(())
    }

    pub async fn delete_chunk(&self, name: &str) -> Result<(), Error> {
        match self.store.delete(&ObjectPath::from(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes objects no chunk refers to any more (a committed truncate or
    /// delete released them). One whose delete fails stays behind as an
    /// orphan, for a later term's collection.
    pub async fn delete_unreferenced(&self, names: Vec<String>) {
        for name in names {
            if let Err(e) = self.delete_chunk(&name).await {
                tracing::warn!(chunk = %name, error = %e, "cannot delete unreferenced chunk object; left for orphan collection");
            }
        }
    }

    /// Every chunk object of `container` in tier-2, by name (for orphan
    /// collection).
    pub async fn list_chunks(&self, container: u32) -> Result<Vec<String>, Error> {
        let mut names = Vec::new();
        let prefix = ObjectPath::from(format!("{CHUNKS_DIR}/c{container}"));
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            names.push(meta?.location.to_string());
        }
        Ok(names)
    }

    /// Whole events of `chunk` from `offset` on, about `max_bytes` (at least
    /// one event). Mostly a slice of one cached block, not a copy: the
    /// whole events from `offset` to the end of the block holding it. Only
    /// an event that runs past its block's end (or past `max_bytes`) is
    /// copied together, alone.
    pub async fn read(
        &self,
        segment_id: u64,
        chunk: &Chunk,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Bytes, Error> {
        let end = chunk.end.min(offset.saturating_add(max_bytes as u64));
        let (block, from, to) = self.piece(segment_id, chunk, offset, end).await?;
        let whole = aquifer_proto::frame::whole_events_prefix(&block[from..to], usize::MAX);
        if whole > 0 {
            return Ok(block.slice(from..from + whole));
        }
        // The first event runs past this block (or past max_bytes): its
        // length from its header (which may straddle too), then all of it.
        let header_end = (offset + aquifer_proto::frame::HEADER_BYTES as u64).min(chunk.end);
        let header = self
            .read_range(segment_id, chunk, offset, header_end)
            .await?;
        let framed =
            aquifer_proto::frame::claimed_framed_len(&header).map_or(u64::MAX, |n| n as u64);
        if offset.saturating_add(framed) > chunk.end {
            return Err(Error::Corrupt(format!(
                "chunk {} holds no whole event at offset {offset} of segment {segment_id}",
                chunk.name
            )));
        }
        self.read_range(segment_id, chunk, offset, offset + framed)
            .await
    }

    /// The cached block holding `pos` and the part of it in `[pos, end)`,
    /// as (block, from, to) within the block.
    async fn piece(
        &self,
        segment_id: u64,
        chunk: &Chunk,
        pos: u64,
        end: u64,
    ) -> Result<(Bytes, usize, usize), Error> {
        let b = (pos - chunk.start) / BLOCK_BYTES;
        let block = self.block(segment_id, chunk, b).await?;
        let block_start = chunk.start + b * BLOCK_BYTES;
        let from = (pos - block_start) as usize;
        let to = ((end - block_start) as usize).min(block.len());
        if from >= to {
            return Err(self.short(chunk));
        }
        Ok((block, from, to))
    }

    fn short(&self, chunk: &Chunk) -> Error {
        Error::Corrupt(format!("chunk {} is shorter than recorded", chunk.name))
    }

    async fn read_range(
        &self,
        segment_id: u64,
        chunk: &Chunk,
        start: u64,
        end: u64,
    ) -> Result<Bytes, Error> {
        let mut out = BytesMut::with_capacity((end - start) as usize);
        let mut pos = start;
        while pos < end {
            let (block, from, to) = self.piece(segment_id, chunk, pos, end).await?;
            out.extend_from_slice(&block[from..to]);
            pos += (to - from) as u64;
        }
        Ok(out.freeze())
    }

    async fn block(&self, segment_id: u64, chunk: &Chunk, b: u64) -> Result<Bytes, Error> {
        let key = |block| BlockKey {
            segment_id,
            chunk_start: chunk.start,
            block,
        };
        let m = &self.metrics;
        if let Some(hit) = self.cache.get(&key(b)) {
            m.cache_hits.inc();
            m.read_from("cache", hit.len() as u64);
            return Ok(hit);
        }
        m.cache_misses.inc();
        let _permit = self
            .reads
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("tier-2 reads are shutting down".into()))?;
        if let Some(hit) = self.cache.get(&key(b)) {
            return Ok(hit); // another reader fetched it while we waited
        }
        let blocks = (chunk.end - chunk.start).div_ceil(BLOCK_BYTES);
        let last = (b + READAHEAD_BLOCKS).min(blocks);
        let object = ObjectPath::from(chunk.name.as_str());
        // One GET per block, all at once: each block arrives in a buffer of
        // its own (no copy, and evicting it frees it, so the cache holds
        // what it counts).
        let gets = (b..last).map(|i| {
            let start = i * BLOCK_BYTES;
            let len = BLOCK_BYTES.min(chunk.end - chunk.start - start);
            let at = chunk.object_offset + start;
            let get = self.store.get_range(&object, at..at + len);
            async move { get.await.map(|data| (i, len, data)) }
        });
        let got = futures::future::try_join_all(gets);
        let got = match tokio::time::timeout(self.request_timeout, got).await {
            Err(_) => {
                return Err(Error::Tier2(format!(
                    "tier-2 did not answer a read of chunk {} of segment {segment_id} within {} ms (tier2.request_timeout_ms); retry once it is back",
                    chunk.name,
                    self.request_timeout.as_millis()
                )))
            }
            Ok(Ok(got)) => got,
            Ok(Err(object_store::Error::NotFound { .. })) => {
                return Err(Error::Corrupt(format!(
                    "tier-2 chunk {} of segment {segment_id} is missing",
                    chunk.name
                )))
            }
            Ok(Err(e)) => return Err(e.into()),
        };
        let mut first = None;
        for (i, len, block) in got {
            if block.len() as u64 != len {
                return Err(Error::Corrupt(format!(
                    "tier-2 chunk {} of segment {segment_id} is shorter than recorded",
                    chunk.name
                )));
            }
            m.read_from("tier2", len);
            first.get_or_insert_with(|| block.clone());
            self.cache.insert(key(i), block);
        }
        first.ok_or_else(|| Error::Corrupt(format!("empty read of chunk {}", chunk.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_carry_their_term() {
        assert_eq!(chunk_term(&chunk_name(3, 42)), Some(42));
        assert_eq!(chunk_term("chunks/c3/x.chunk"), None);
    }
}
