//! A private, copy-on-write view of a data file for redb: reads come from
//! the file, writes stay in memory, so the file on disk is never changed.
//!
//! redb 2 has no read-only mode: it writes its header when it opens a file,
//! its allocator state when it closes one, and commits whatever its
//! integrity check repairs. Through the overlay none of it reaches the disk.
//! Two users: the integrity check (`check.rs`), and tools that read a store
//! they do not own (`cedard impact --data`, through
//! `RedbStore::open_read_only`).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::sync::Mutex;

use redb::StorageBackend;

/// The size of the blocks the overlay keeps writes in.
const BLOCK: u64 = 4096;

/// A copy-on-write view of a file for redb: reads come from the file, writes
/// stay in memory. redb writes its header when it opens a file and commits
/// what its integrity check repairs; through the overlay, none of it
/// reaches the disk.
pub(super) struct Overlay {
    inner: Mutex<OverlayState>,
}

struct OverlayState {
    /// The file, opened for reading.
    file: File,
    /// The length redb sees.
    len: u64,
    /// How much of the file shows through: bytes past this offset read as
    /// zeros (redb shrank the view, then may have grown it again).
    visible: u64,
    /// What redb wrote, by block number.
    blocks: HashMap<u64, Box<[u8]>>,
}

impl Overlay {
    /// A view of `file` (opened for reading at least), `len` bytes long.
    pub(super) fn new(file: File, len: u64) -> Self {
        Self {
            inner: Mutex::new(OverlayState {
                file,
                len,
                visible: len,
                blocks: HashMap::new(),
            }),
        }
    }

    fn state(&self) -> io::Result<std::sync::MutexGuard<'_, OverlayState>> {
        self.inner
            .lock()
            .map_err(|_| io::Error::other("the overlay's lock is poisoned"))
    }
}

impl OverlayState {
    /// Reads `buf.len()` bytes of the file at `offset`, zeros past `visible`.
    fn read_file(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        let end = offset.saturating_add(buf.len() as u64).min(self.visible);
        if offset < end {
            let n = usize::try_from(end - offset).map_err(io::Error::other)?;
            read_at(&mut self.file, offset, &mut buf[..n])?;
        }
        Ok(())
    }
}

/// One positioned read (`pread`): one system call per page.
#[cfg(unix)]
fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

impl fmt::Debug for Overlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.lock() {
            Ok(s) => write!(
                f,
                "Overlay({} bytes, {} blocks written)",
                s.len,
                s.blocks.len()
            ),
            Err(_) => write!(f, "Overlay(poisoned)"),
        }
    }
}

/// The byte range of block `block` that `[offset, offset + len)` covers, as
/// (start in the block, start in the range, length).
fn overlap(block: u64, offset: u64, len: u64) -> (usize, usize, usize) {
    let block_start = block * BLOCK;
    let from = offset.max(block_start);
    let to = (offset + len).min(block_start + BLOCK);
    // All three are below BLOCK or `len`, which fit in usize.
    (
        (from - block_start) as usize,
        (from - offset) as usize,
        (to - from) as usize,
    )
}

impl StorageBackend for Overlay {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state()?.len)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut s = self.state()?;
        let end = offset.saturating_add(len as u64);
        if end > s.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {len} bytes at {offset} past the end ({})", s.len),
            ));
        }
        let mut buf = vec![0; len];
        s.read_file(offset, &mut buf)?;
        if len > 0 && !s.blocks.is_empty() {
            for block in offset / BLOCK..=(end - 1) / BLOCK {
                if let Some(data) = s.blocks.get(&block) {
                    let (in_block, in_buf, n) = overlap(block, offset, len as u64);
                    buf[in_buf..in_buf + n].copy_from_slice(&data[in_block..in_block + n]);
                }
            }
        }
        Ok(buf)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state()?;
        if len < s.len {
            s.visible = s.visible.min(len);
            s.blocks.retain(|block, _| block * BLOCK < len);
            if let Some(data) = s.blocks.get_mut(&(len / BLOCK)) {
                let from = (len % BLOCK) as usize;
                data[from..].fill(0);
            }
        }
        s.len = len;
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut s = self.state()?;
        let end = offset.saturating_add(data.len() as u64);
        for block in offset / BLOCK..=(end - 1) / BLOCK {
            if !s.blocks.contains_key(&block) {
                let mut fresh = vec![0; BLOCK as usize].into_boxed_slice();
                s.read_file(block * BLOCK, &mut fresh)?;
                s.blocks.insert(block, fresh);
            }
            let (in_block, in_data, n) = overlap(block, offset, data.len() as u64);
            if let Some(target) = s.blocks.get_mut(&block) {
                target[in_block..in_block + n].copy_from_slice(&data[in_data..in_data + n]);
            }
        }
        s.len = s.len.max(end);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_reads_the_file_and_keeps_writes_in_memory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &original).expect("write");
        let overlay = Overlay::new(File::open(&path).expect("open"), original.len() as u64);
        assert_eq!(overlay.read(4000, 200).expect("read"), original[4000..4200]);
        overlay.write(4090, &[7; 20]).expect("write");
        let mut expected = original.clone();
        expected[4090..4110].fill(7);
        assert_eq!(overlay.read(0, 10_000).expect("read"), expected);
        overlay.set_len(12_000).expect("grow");
        assert_eq!(overlay.read(10_000, 2_000).expect("read"), vec![0; 2_000]);
        overlay.set_len(4_095).expect("shrink");
        overlay.set_len(8_192).expect("grow");
        let mut shrunk = expected[..4095].to_vec();
        shrunk.resize(8_192, 0);
        assert_eq!(overlay.read(0, 8_192).expect("read"), shrunk);
        assert!(
            overlay.read(8_000, 500).is_err(),
            "a read past the end fails"
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            original,
            "nothing reached the file"
        );
    }
}
