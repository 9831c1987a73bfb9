//! Removing a replica's log for good, when this node no longer holds the
//! replica.
//!
//! The directory is renamed aside in one step (`<dir>.destroyed-<stamp>`),
//! so a crash leaves either the whole log or none, and its files are
//! reclaimed in the background. Must never remove a directory it did not
//! rename aside itself.

use std::path::{Path, PathBuf};

use super::{io_err, sync_dir, LogError, LogStorage, Reclaimer};

/// `<dir>.destroyed-<tag>`: where [`LogStorage::destroy`] moves a log.
fn destroyed_path(dir: &Path, tag: &str) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(format!(".destroyed-{tag}"));
    PathBuf::from(name)
}

/// Hands logs destroyed beside `dir` whose reclaiming a crash cut short to
/// the reclaim thread again.
pub(super) fn reclaim_destroyed(dir: &Path, reclaimer: &Reclaimer) -> Result<(), LogError> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Ok(());
    };
    let prefix = destroyed_path(Path::new(name), "");
    let prefix = prefix.to_string_lossy();
    for item in std::fs::read_dir(parent).map_err(io_err(parent))? {
        let path = item.map_err(io_err(parent))?.path();
        let is_aside = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(prefix.as_ref()));
        if is_aside && path.is_dir() {
            reclaimer.release_dir(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

impl LogStorage {
    /// Removes the log in `dir` for good (a replica this node no longer
    /// holds). The caller drops its `LogStorage` of `dir` first and may open
    /// a new, empty one there.
    pub fn destroy(dir: &Path, reclaimer: &Reclaimer) -> Result<(), LogError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let aside = destroyed_path(dir, &stamp.to_string());
        std::fs::rename(dir, &aside).map_err(io_err(dir))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        reclaimer.release_dir(&aside).map_err(io_err(&aside))
    }
}
