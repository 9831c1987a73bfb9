//! Crash-safe small-file writes: the one way this server replaces a file
//! whose old or new contents must survive a crash whole (markers, snapshots).
//!
//! Owns no policy and never writes in place: a reader after a crash sees
//! either the old file or the new one.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to a temporary file, fsyncs it, renames it over `path`,
/// then fsyncs the directory so the rename itself is durable.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, |f| f.write_all(bytes))
}

/// [`write`] for contents that `fill` writes into the temporary file
/// itself (a large snapshot streamed, never whole in memory).
pub(crate) fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    fill(&mut f)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
