//! Direct scans: the flushed part of a segment range is read straight from
//! tier-2, where the broker located it, so a compute engine scanning a
//! stream does not load the brokers with bulk reads.
//!
//! Owns opening object stores from a [`Tier2Location`] (credentials come
//! from the reader's environment, never from the broker) and fetching a
//! slice window by window at event boundaries. It only reads: it never
//! writes or deletes an object.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aquifer_proto::frame::{whole_events_prefix, HEADER_BYTES};
use bytes::{Bytes, BytesMut};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::proto::{ChunkSlice, Tier2Location};
use crate::Error;

/// Bytes fetched per GET: bounds a direct reader's memory like a broker
/// read response (a larger event is fetched whole).
pub(crate) const WINDOW_BYTES: u64 = 1024 * 1024;

/// Object stores by location, opened once per [`crate::BatchClient`].
#[derive(Debug, Default)]
pub(crate) struct Tier2Stores {
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Tier2Stores {
    fn open(&self, loc: &Tier2Location) -> Result<Arc<dyn ObjectStore>, Error> {
        let key = format!("{}|{}|{}", loc.url, loc.endpoint, loc.region);
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = stores.get(&key) {
            return Ok(store.clone());
        }
        let store = open_store(loc)?;
        stores.insert(key, store.clone());
        Ok(store)
    }

    /// The slice's bytes, window by window.
    pub(crate) fn windows(
        &self,
        loc: &Tier2Location,
        slice: &ChunkSlice,
    ) -> Result<SliceWindows, Error> {
        Ok(SliceWindows {
            store: self.open(loc)?,
            path: ObjectPath::from(slice.object.as_str()),
            slice: slice.clone(),
            fetched: 0,
            carry: Bytes::new(),
            base: slice.segment_offset,
        })
    }
}

/// Reads one slice in windows of whole events.
pub(crate) struct SliceWindows {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    slice: ChunkSlice,
    /// Bytes of the slice fetched so far.
    fetched: u64,
    /// A partial event left over from the last window.
    carry: Bytes,
    /// Segment offset of the next window.
    base: u64,
}

impl SliceWindows {
    /// The next window as (segment offset, whole events); None at the end.
    pub(crate) async fn next(&mut self) -> Result<Option<(u64, Bytes)>, Error> {
        let object = &self.slice.object;
        while self.fetched < self.slice.length {
            let want = WINDOW_BYTES
                .max(needed(&self.carry))
                .min(self.slice.length - self.fetched);
            let from = self.slice.object_offset + self.fetched;
            let data = match self.store.get_range(&self.path, from..from + want).await {
                Ok(d) => d,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(Error::OutOfRange(format!(
                        "tier-2 object {object} is gone (removed by retention after the range was located): scan again from the stream's head cut"
                    )))
                }
                Err(e) => {
                    return Err(Error::unavailable_from(
                        format!("tier-2 read of {object} failed"),
                        e,
                    ))
                }
            };
            if data.len() as u64 != want {
                return Err(Error::Corrupt(format!(
                    "tier-2 object {object} is shorter than recorded"
                )));
            }
            self.fetched += want;
            let data = if self.carry.is_empty() {
                data
            } else {
                let mut joined = BytesMut::with_capacity(self.carry.len() + data.len());
                joined.extend_from_slice(&self.carry);
                joined.extend_from_slice(&data);
                joined.freeze()
            };
            let whole = whole_events_prefix(&data, usize::MAX);
            self.carry = data.slice(whole..);
            if whole > 0 {
                let base = self.base;
                self.base += whole as u64;
                return Ok(Some((base, data.slice(..whole))));
            }
        }
        if !self.carry.is_empty() {
            return Err(Error::Corrupt(format!(
                "tier-2 object {object} ends inside an event at segment offset {}",
                self.base
            )));
        }
        Ok(None)
    }
}

/// Bytes still needed to complete the first event of `partial` (0: none).
fn needed(partial: &[u8]) -> u64 {
    match partial.get(..4) {
        Some(b) => {
            let framed =
                HEADER_BYTES as u64 + u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            framed.saturating_sub(partial.len() as u64)
        }
        None => HEADER_BYTES as u64,
    }
}

fn open_store(loc: &Tier2Location) -> Result<Arc<dyn ObjectStore>, Error> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::InvalidArgument(format!(
            "cannot open tier-2 at {} for a direct scan: {e}",
            loc.url
        ))
    };
    if let Some(path) = loc.url.strip_prefix("file://") {
        let store = LocalFileSystem::new_with_prefix(path).map_err(|e| bad(&e))?;
        return Ok(Arc::new(store));
    }
    let Some(rest) = loc.url.strip_prefix("s3://") else {
        return Err(bad(
            &"unsupported url (the broker's tier-2 is neither file:// nor s3://)",
        ));
    };
    let (bucket, prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, p.trim_matches('/')),
        None => (rest, ""),
    };
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_allow_http(loc.allow_http);
    if !loc.endpoint.is_empty() {
        b = b
            .with_endpoint(&loc.endpoint)
            .with_virtual_hosted_style_request(false);
    }
    if !loc.region.is_empty() {
        b = b.with_region(&loc.region);
    }
    let store = b.build().map_err(|e| bad(&e))?;
    if prefix.is_empty() {
        Ok(Arc::new(store))
    } else {
        Ok(Arc::new(PrefixStore::new(store, prefix)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aquifer_proto::frame::encode_event;

    #[tokio::test]
    async fn fetches_a_slice_in_windows_of_whole_events() {
        let dir = tempfile::tempdir().unwrap();
        // An object with 10 bytes of another segment, then events of 300 KiB
        // (windows cut them) and one of 2.5 MiB (larger than a window).
        let mut object = BytesMut::from(&b"0123456789"[..]);
        let sizes = [
            300 * 1024,
            300 * 1024,
            300 * 1024,
            300 * 1024,
            2560 * 1024,
            10,
        ];
        for (i, size) in sizes.iter().enumerate() {
            encode_event(&mut object, Some("k"), &vec![i as u8; *size]);
        }
        std::fs::write(dir.path().join("obj"), &object).unwrap();
        let loc = Tier2Location {
            url: format!("file://{}", dir.path().display()),
            ..Default::default()
        };
        let slice = ChunkSlice {
            object: "obj".into(),
            object_offset: 10,
            segment_offset: 5000,
            length: object.len() as u64 - 10,
        };
        let stores = Tier2Stores::default();
        let mut windows = Vec::new();
        let mut reader = stores.windows(&loc, &slice).unwrap();
        while let Some(window) = reader.next().await.unwrap() {
            windows.push(window);
        }
        let mut expected_base = 5000;
        let mut events = 0;
        for (base, bytes) in &windows {
            assert_eq!(*base, expected_base);
            events += aquifer_proto::frame::count_events(bytes, usize::MAX).unwrap();
            expected_base += bytes.len() as u64;
        }
        assert_eq!(events as usize, sizes.len());
        assert_eq!(expected_base, 5000 + slice.length);
        // A slice longer than the object is an error, not a hang or a panic.
        let long = ChunkSlice {
            length: slice.length + 100,
            ..slice.clone()
        };
        assert!(matches!(
            drain(stores.windows(&loc, &long).unwrap()).await,
            Err(Error::Corrupt(_) | Error::Unavailable { .. })
        ));
        let gone = ChunkSlice {
            object: "missing".into(),
            ..slice
        };
        assert!(matches!(
            drain(stores.windows(&loc, &gone).unwrap()).await,
            Err(Error::OutOfRange(_))
        ));
    }

    async fn drain(mut windows: SliceWindows) -> Result<(), Error> {
        while windows.next().await?.is_some() {}
        Ok(())
    }
}
