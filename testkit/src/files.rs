//! Log files on disk, and the bytes tests damage in them.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Files of one raft group's log (`<data>/log/<group>/*.log`), sorted by
/// name: the last is the active one.
pub fn log_files(data_dir: &Path, group: &str) -> Vec<PathBuf> {
    let dir = data_dir.join("log").join(group);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

/// Flips every bit of the byte at `offset` of `path`; returns the old byte.
pub fn flip_byte(path: &Path, offset: u64) -> u8 {
    use std::io::{Seek, SeekFrom};
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.read_exact(&mut b).expect("read byte");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&[b[0] ^ 0xff]).expect("write byte");
    f.sync_all().expect("fsync");
    b[0]
}

/// Writes `byte` back at `offset` of `path`.
pub fn put_byte(path: &Path, offset: u64, byte: u8) {
    use std::io::{Seek, SeekFrom};
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&[byte]).expect("write byte");
    f.sync_all().expect("fsync");
}
