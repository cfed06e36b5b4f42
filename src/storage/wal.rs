//! The write-ahead log: what makes a commit durable without writing redb's pages each time.
//!
//! Size: the log's format, its appending and cutting, and its reading — where a torn last append
//! is told from damage — with the tests of each; splitting them would separate the format from
//! the code that must read it back.
//!
//! ```text
//!   commit (client writes, or a peer's batch)
//!     one redb transaction ──► its changes as one frame ──append + fdatasync──► vkv.wal
//!                          ──► redb commit without fsync (visible to readers at once)
//!   checkpoint (about once a second, and at open)
//!     redb commit with fsync (every page of the commits before it) ──► vkv.wal emptied
//!   open after a crash
//!     redb as of its last checkpoint ──► every whole frame of vkv.wal applied again, in order
//! ```
//!
//! A redb commit with fsync writes every page the transaction touched: with random keys that is
//! about one 4 KiB page per key, ~190 KiB for a group commit of 30 writes. A frame holds only
//! the changed keys' new sets (~150 bytes each), so the fsync that acknowledges a write covers
//! one small append; the pages reach the disk at the next checkpoint, once for all the commits
//! that dirtied them.
//!
//! A frame holds each changed key's whole new set, and for a client write the outbox mark it
//! queued for every peer: applying a frame twice, or onto a store that already holds it, leaves
//! the same state, so a crash between a checkpoint's commit and the log's truncation is harmless.
//!
//! Layout, little-endian: a 16-byte header `magic "vkvL" | len: u32 | crc32(magic, len): u32 |
//! crc32(payload): u32`, then the payload: `count: u32`, then per change `kind: u8 | key_len: u32
//! | key | set_len: u32 | set [| mark: u64]` (kind 1: a merged set; kind 2: a client write and
//! its mark).
//!
//! A bad frame (cut short, a header or payload that fails its checksum, zeros) is a **torn
//! tail** — the last append, whose fsync never returned, so it was never acknowledged — only if
//! no valid frame header follows it anywhere in the file; then it is dropped. A bad frame
//! followed by a valid one is **damage** (acknowledged frames after it would be lost): the store
//! refuses to open, with the `--repair` hint.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The log's file name in the data dir.
pub(super) const WAL_FILE: &str = "vkv.wal";

const HEADER: usize = 16;
const MAGIC: &[u8; 4] = b"vkvL";
/// No frame is larger: a commit whose changes would not fit fails (and nothing of it is written).
const MAX_FRAME: usize = 1 << 30;
const KIND_SET: u8 = 1;
const KIND_WRITE: u8 = 2;

/// One change a frame records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Change {
    pub key: String,
    /// The key's whole new sibling set, as stored.
    pub set: Vec<u8>,
    /// For a client write: the outbox mark it queued for every peer.
    pub mark: Option<u64>,
}

/// The changes of one commit, encoded as a frame's payload as they are added.
#[derive(Default)]
pub(super) struct Frame {
    payload: Vec<u8>,
    count: u32,
    /// Where each change's key is in `payload` (start, length).
    keys: Vec<(usize, usize)>,
}

impl Frame {
    pub fn add(&mut self, key: &str, set: &[u8], mark: Option<u64>) {
        if self.payload.is_empty() {
            self.payload.extend_from_slice(&0u32.to_le_bytes());
        }
        self.payload.push(if mark.is_some() { KIND_WRITE } else { KIND_SET });
        self.payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.keys.push((self.payload.len(), key.len()));
        self.payload.extend_from_slice(key.as_bytes());
        self.payload.extend_from_slice(&(set.len() as u32).to_le_bytes());
        self.payload.extend_from_slice(set);
        if let Some(mark) = mark {
            self.payload.extend_from_slice(&mark.to_le_bytes());
        }
        self.count += 1;
        self.payload[..4].copy_from_slice(&self.count.to_le_bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The keys of the frame's changes, in the order they were added.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|&(at, len)| std::str::from_utf8(&self.payload[at..at + len]).expect("added as a str"))
    }

    fn encode(&self) -> Result<Vec<u8>> {
        if self.payload.len() > MAX_FRAME {
            return Err(Error::TooLarge(format!(
                "one commit's changes take {} bytes; a log frame holds at most {MAX_FRAME}",
                self.payload.len()
            )));
        }
        let mut out = Vec::with_capacity(HEADER + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        let header_crc = crc32fast::hash(&out[..8]);
        out.extend_from_slice(&header_crc.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&self.payload).to_le_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }
}

/// The open log: appended to by commits, emptied by checkpoints.
pub(super) struct Wal {
    file: File,
    path: PathBuf,
    /// Bytes of whole frames in the file: where the next frame goes.
    len: u64,
    /// A failed append may have left part of a frame past `len`: cut it before appending again.
    torn: bool,
}

impl Wal {
    /// Opens (or creates) the log in `dir` and reads every whole frame in it; a frame cut short
    /// at the end is dropped (and cut off the file).
    pub fn open(dir: &Path) -> Result<(Wal, Vec<Vec<Change>>)> {
        let path = dir.join(WAL_FILE);
        let fail = |what: &str, e: std::io::Error| Error::Storage(format!("cannot {what} {}: {e}", path.display()));
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(fail("read", e)),
        };
        let (frames, whole) = parse(&bytes).map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
        if whole < bytes.len() {
            tracing::warn!(
                "{}: dropped {} byte(s) of a frame cut short at its end (a commit that was never acknowledged)",
                path.display(),
                bytes.len() - whole
            );
        }
        let existed = path.exists();
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| fail("open", e))?;
        if !existed {
            // The new file's name must survive a crash too, or its frames would go with it.
            super::file::sync_dir(dir)?;
        }
        let mut wal = Wal { file, path, len: whole as u64, torn: whole < bytes.len() };
        wal.cut_torn_tail()?;
        Ok((wal, frames))
    }

    /// Appends `frame` and waits for the disk (fdatasync): once this returns `Ok`, the frame
    /// survives a crash. On an error the file is cut back to its last whole frame.
    pub fn append(&mut self, frame: &Frame) -> Result<()> {
        self.cut_torn_tail()?;
        let bytes = frame.encode()?;
        let written = self.write_at_end(&bytes).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.torn = true;
                let _ = self.cut_torn_tail();
                Err(Error::Storage(format!("cannot append to {}: {e}", self.path.display())))
            }
        }
    }

    fn write_at_end(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.write_all(bytes)
    }

    /// Empties the log (after a checkpoint made everything in it durable in redb). Whatever
    /// fails, the next frame goes at the start, after the file is cut again.
    pub fn clear(&mut self) -> Result<()> {
        self.cut_back(0)
    }

    /// Cuts the log back to `len` bytes (a frame appended since, whose commit then failed, must
    /// not be applied at the next open). If the cut fails it is retried before the next append.
    pub fn cut_back(&mut self, len: u64) -> Result<()> {
        self.len = len;
        self.torn = true;
        self.cut_torn_tail()
    }

    /// Bytes of frames waiting for a checkpoint.
    pub fn len(&self) -> u64 {
        self.len
    }

    fn cut_torn_tail(&mut self) -> Result<()> {
        if self.torn {
            self.file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| Error::Storage(format!("cannot cut a torn frame off {}: {e}", self.path.display())))?;
            self.torn = false;
        }
        Ok(())
    }
}

/// The payload length a valid frame header at `at` announces (`None`: no valid header there).
fn header_at(bytes: &[u8], at: usize) -> Option<usize> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let valid = &header[..4] == MAGIC && crc32fast::hash(&header[..8]) == crc && (4..=MAX_FRAME).contains(&len);
    valid.then_some(len)
}

/// The whole frames of a log file, and how many bytes they span. A bad frame ends the log if no
/// valid frame header follows it (a torn last append); otherwise the log is damaged.
fn parse(bytes: &[u8]) -> std::result::Result<(Vec<Vec<Change>>, usize), String> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let payload = header_at(bytes, at).and_then(|len| {
            let crc = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().expect("4 bytes"));
            bytes.get(at + HEADER..at + HEADER + len).filter(|p| crc32fast::hash(p) == crc)
        });
        match payload.map(|p| decode(p).map(|changes| (changes, p.len()))) {
            Some(Ok((changes, len))) => {
                frames.push(changes);
                at += HEADER + len;
            }
            bad => {
                if (at + 1..bytes.len()).any(|later| header_at(bytes, later).is_some()) {
                    let why = match bad {
                        Some(Err(e)) => format!("does not decode ({e})"),
                        _ => "fails its checksum".to_string(),
                    };
                    let hint = super::file::DAMAGE_HINT;
                    return Err(format!(
                        "frame at byte {at} {why} and whole frames follow it: the log is damaged{hint}"
                    ));
                }
                break; // the last append, torn: never acknowledged
            }
        }
    }
    Ok((frames, at))
}

fn decode(payload: &[u8]) -> std::result::Result<Vec<Change>, String> {
    let mut rest = payload;
    let mut take = |n: usize| -> std::result::Result<&[u8], String> {
        if rest.len() < n {
            return Err("truncated".into());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let count = u32_at(take(4)?);
    let mut changes = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let kind = take(1)?[0];
        let key_len = u32_at(take(4)?);
        let key = std::str::from_utf8(take(key_len)?).map_err(|e| format!("key is not UTF-8: {e}"))?.to_string();
        let set_len = u32_at(take(4)?);
        let set = take(set_len)?.to_vec();
        let mark = match kind {
            KIND_SET => None,
            KIND_WRITE => Some(u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"))),
            other => return Err(format!("unknown change kind {other}")),
        };
        changes.push(Change { key, set, mark });
    }
    if !rest.is_empty() {
        return Err(format!("{} byte(s) after the last change", rest.len()));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(changes: &[(&str, &str, Option<u64>)]) -> Frame {
        let mut f = Frame::default();
        for (k, s, m) in changes {
            f.add(k, s.as_bytes(), *m);
        }
        f
    }

    fn change(key: &str, set: &str, mark: Option<u64>) -> Change {
        Change { key: key.into(), set: set.as_bytes().to_vec(), mark }
    }

    /// A log holding two frames, a then b; its dir and its path.
    fn two_frames() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        wal.append(&frame(&[("a", "[1]", Some(1))])).unwrap();
        wal.append(&frame(&[("b", "[2]", Some(2))])).unwrap();
        let path = dir.path().join(WAL_FILE);
        (dir, path)
    }

    #[test]
    fn frames_come_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, frames) = Wal::open(dir.path()).unwrap();
        assert!(frames.is_empty());
        wal.append(&frame(&[("a", "[1]", Some(7)), ("é", "[2]", None)])).unwrap();
        wal.append(&frame(&[("a", "[3]", Some(8))])).unwrap();
        drop(wal);
        let (wal, frames) = Wal::open(dir.path()).unwrap();
        assert_eq!(
            frames,
            vec![vec![change("a", "[1]", Some(7)), change("é", "[2]", None)], vec![change("a", "[3]", Some(8))]]
        );
        assert_eq!(wal.len(), std::fs::metadata(dir.path().join(WAL_FILE)).unwrap().len());
    }

    #[test]
    fn a_frame_cut_short_at_the_end_is_dropped_and_the_log_goes_on() {
        let (dir, path) = two_frames();
        let full = std::fs::read(&path).unwrap();
        for cut in [full.len() - 1, full.len() - 10, full.len() - 20] {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (mut wal, frames) = Wal::open(dir.path()).unwrap();
            assert_eq!(frames, vec![vec![change("a", "[1]", Some(1))]], "cut at {cut}");
            wal.append(&frame(&[("c", "[3]", None)])).unwrap();
            drop(wal);
            let (_, frames) = Wal::open(dir.path()).unwrap();
            assert_eq!(frames.len(), 2, "a frame appended after the cut is read back");
            assert_eq!(frames[1], vec![change("c", "[3]", None)]);
        }
    }

    #[test]
    fn zeros_or_garbage_after_the_last_frame_are_a_torn_tail_but_a_bad_length_mid_log_is_damage() {
        let (dir, path) = two_frames();
        let full = std::fs::read(&path).unwrap();
        let first = HEADER + u32::from_le_bytes(full[4..8].try_into().unwrap()) as usize;
        for tail in [vec![0u8; 40], vec![0xa5; 7], b"vkvL\xff\xff\xff\x7f garbage".to_vec()] {
            let mut bytes = full.clone();
            bytes.extend_from_slice(&tail);
            std::fs::write(&path, &bytes).unwrap();
            let (wal, frames) = Wal::open(dir.path()).unwrap();
            assert_eq!(frames.len(), 2, "tail {tail:?} dropped");
            assert_eq!(wal.len() as usize, full.len());
        }
        // The first frame's length made huge: were the header not checked, this would look like
        // a frame cut short, and the second (acknowledged) frame would be dropped.
        let mut bytes = full.clone();
        bytes[6] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Wal::open(dir.path()).is_err(), "a bad length before a whole frame is damage");
        // The first frame's payload damaged: damage too, since the second follows it.
        let mut bytes = full.clone();
        bytes[first - 1] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Wal::open(dir.path()).is_err());
        // The last frame's payload damaged: a torn last append.
        let mut bytes = full;
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Wal::open(dir.path()).unwrap().1.len(), 1);
    }

    #[test]
    fn a_damaged_frame_before_the_end_is_refused_and_clear_empties_the_log() {
        let (dir, path) = two_frames();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 6] ^= 0xff; // inside the first frame's key
        std::fs::write(&path, &bytes).unwrap();
        let refused = Wal::open(dir.path()).err().expect("a damaged log is refused");
        assert!(refused.to_string().contains("checksum"), "{refused}");
        std::fs::write(&path, b"").unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        wal.append(&frame(&[("a", "[1]", None)])).unwrap();
        wal.clear().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert!(Wal::open(dir.path()).unwrap().1.is_empty());
    }
}
