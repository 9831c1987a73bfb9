//! The data directory: one process holds it at a time (the `LOCK` file),
//! and its container count is fixed when it is created (`CONTAINERS`).
//!
//! Never touches the groups' logs (`log/`) or the local tier-2.

use std::fs::File;
use std::path::Path;

use crate::config::ServerConfig;
use crate::error::Error;

pub(super) fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// Takes the data directory's lock and checks (or, on first start, records)
/// the number of containers, which can never change for a data directory.
pub(super) fn prepare_data_dir(config: &ServerConfig) -> Result<File, Error> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create data directory", dir, e))?;
    let lock_path = dir.join("LOCK");
    let lock = File::create(&lock_path).map_err(|e| io_error("cannot open", &lock_path, e))?;
    if lock.try_lock().is_err() {
        return Err(Error::Unavailable(format!(
            "data directory {} is in use by another aquifer process",
            dir.display()
        )));
    }
    let marker = dir.join("CONTAINERS");
    match std::fs::read_to_string(&marker) {
        Ok(text) => {
            let found: u32 = text.trim().parse().map_err(|_| {
                Error::Corrupt(format!("{} does not hold a number", marker.display()))
            })?;
            if found != config.containers {
                return Err(Error::InvalidArgument(format!(
                    "data directory {} was created with {found} containers, but the configuration says {}; \
                     the number of containers cannot change",
                    dir.display(),
                    config.containers
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::durable::write(&marker, format!("{}\n", config.containers).as_bytes())
                .map_err(|e| io_error("cannot write", &marker, e))?;
        }
        Err(e) => return Err(io_error("cannot read", &marker, e)),
    }
    Ok(lock)
}
