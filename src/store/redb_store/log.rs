//! The commit log: an append-only file beside the redb file (`<store path>-log`) that makes a
//! commit durable with one append (and, at D2, one `fdatasync`) instead of redb's durable
//! commit, which rewrites every B-tree page on the path to each changed key.
//!
//! Layout (integers big-endian):
//!
//! - header, [`HEADER_LEN`] bytes: magic [`MAGIC`], format version `u32` ([`LOG_FORMAT`]), the
//!   store id (16 bytes, the `store_id` of the redb file's `log_state` table), the base seq
//!   `u64` (the checkpoint the file was laid at: its first entry is `base + 1`), and a crc32 of
//!   the 36 bytes before it;
//! - entries, each: payload length `u32`, crc32 `u32` of seq ‖ payload, seq `u64`, payload.
//!   Seqs are consecutive.
//! - a payload is the commit's table writes in order, each: table tag `u8` ([`LogTable`]),
//!   operation `u8` (0 put, 1 remove), key length `u32`, key, and for a put value length
//!   `u32`, value.
//!
//! After the last entry the file holds zeros: a log is laid with [`PREALLOCATE`] bytes and
//! grows by as many, so that an append overwrites allocated blocks. The header is never
//! rewritten in place: a checkpoint lays a new file (header and zeros) under a temporary name
//! and renames it over the old one, so a crash at any moment leaves either the old log or the
//! new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::fault::{FaultPoint, Faults};
use crate::store::error::StoreError;

/// The first 8 bytes of a commit log.
pub(super) const MAGIC: [u8; 8] = *b"FLXRLOG\0";

/// The commit log's own format version.
pub(super) const LOG_FORMAT: u32 = 1;

/// Bytes of the header.
pub(super) const HEADER_LEN: usize = 40;

/// Bytes before an entry's payload: length, crc32, seq.
pub(super) const FRAME_HEADER: usize = 16;

/// A new log is laid with this many bytes (header included) of zeros that appends overwrite,
/// and grows by as many when they run out: overwriting allocated blocks lets `fdatasync`
/// write the data alone, where an append that grows the file also commits the file system's
/// journal (about a quarter of the sync's time on ext4 here).
pub(super) const PREALLOCATE: u64 = 1 << 20;

/// A checkpoint is taken after this many logged commits…
pub(super) const CHECKPOINT_COMMITS: u64 = 1024;

/// …or once the entries take this many bytes, whichever comes first.
pub(super) const CHECKPOINT_BYTES: u64 = 8 << 20;

/// The tables a logged commit writes, as tagged in a payload. Persisted: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum LogTable {
    Runs = 1,
    Envelopes = 2,
    Plans = 3,
    Events = 4,
    Nodes = 5,
    Hitl = 6,
    Queued = 7,
    Requests = 8,
}

impl LogTable {
    fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            1 => Self::Runs,
            2 => Self::Envelopes,
            3 => Self::Plans,
            4 => Self::Events,
            5 => Self::Nodes,
            6 => Self::Hitl,
            7 => Self::Queued,
            8 => Self::Requests,
            _ => return None,
        })
    }
}

const PUT: u8 = 0;
const REMOVE: u8 = 1;

/// A frame being filled with one commit's writes: [`FRAME_HEADER`] bytes reserved for the
/// length, crc and seq, then the payload.
#[derive(Debug)]
pub(super) struct Frame {
    bytes: Vec<u8>,
}

impl Frame {
    fn new(mut bytes: Vec<u8>) -> Self {
        bytes.clear();
        bytes.resize(FRAME_HEADER, 0);
        Self { bytes }
    }

    pub(super) fn put(&mut self, table: LogTable, key: &[u8], value: &[u8]) {
        self.record(table, PUT, key);
        push_len(&mut self.bytes, value.len());
        self.bytes.extend_from_slice(value);
    }

    pub(super) fn remove(&mut self, table: LogTable, key: &[u8]) {
        self.record(table, REMOVE, key);
    }

    fn record(&mut self, table: LogTable, op: u8, key: &[u8]) {
        self.bytes.push(table as u8);
        self.bytes.push(op);
        push_len(&mut self.bytes, key.len());
        self.bytes.extend_from_slice(key);
    }
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).expect("a stored key or value is below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
}

/// One write of a payload.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Record<'a> {
    Put(LogTable, &'a [u8], &'a [u8]),
    Remove(LogTable, &'a [u8]),
}

/// The writes of `payload`, in order; `None` when it is malformed.
pub(super) fn records(payload: &[u8]) -> Option<Vec<Record<'_>>> {
    let mut rest = payload;
    let mut out = Vec::new();
    while let [tag, op, tail @ ..] = rest {
        let table = LogTable::from_tag(*tag)?;
        let (key, tail) = take_sized(tail)?;
        rest = tail;
        match *op {
            PUT => {
                let (value, tail) = take_sized(rest)?;
                rest = tail;
                out.push(Record::Put(table, key, value));
            }
            REMOVE => out.push(Record::Remove(table, key)),
            _ => return None,
        }
    }
    rest.is_empty().then_some(out)
}

fn take_sized(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len)).ok()?;
    let value = bytes.get(4..4 + len)?;
    Some((value, &bytes[4 + len..]))
}

/// The path of the commit log of the store at `store`.
pub(super) fn log_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push("-log");
    PathBuf::from(name)
}

fn header(store_id: [u8; 16], base: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&LOG_FORMAT.to_be_bytes());
    out[12..28].copy_from_slice(&store_id);
    out[28..36].copy_from_slice(&base.to_be_bytes());
    let crc = crc32fast::hash(&out[..36]);
    out[36..].copy_from_slice(&crc.to_be_bytes());
    out
}

/// What an existing log holds.
#[derive(Debug)]
pub(super) struct Contents {
    /// The checkpoint the file was laid at.
    pub(super) base: u64,
    /// The complete, intact entries with consecutive seqs from `base + 1`: (seq, payload).
    pub(super) entries: Vec<(u64, Vec<u8>)>,
    /// Bytes after the last good entry up to the last non-zero byte (a torn or never
    /// acknowledged tail; the preallocated zeros are not counted), dropped.
    pub(super) dropped_bytes: u64,
}

/// Reads the log at `path` written for the store `store_id`; `None` when there is no file.
///
/// Reading stops at the first entry that is cut short, fails its crc or does not carry the
/// next seq: no commit after it was acknowledged.
pub(super) fn read(path: &Path, store_id: [u8; 16]) -> Result<Option<Contents>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error(path, "read", err)),
    };
    let corrupt =
        |what: String| StoreError::corrupt(format!("commit log {}: {what}", path.display()));
    let Some(head) = bytes.get(..HEADER_LEN) else {
        return Err(corrupt(format!(
            "{} bytes, shorter than its header",
            bytes.len()
        )));
    };
    if head[..8] != MAGIC {
        return Err(corrupt("not a commit log (bad magic)".to_owned()));
    }
    if crc32fast::hash(&head[..36]).to_be_bytes() != head[36..] {
        return Err(corrupt("header checksum mismatch".to_owned()));
    }
    let version = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != LOG_FORMAT {
        return Err(corrupt(format!(
            "log format version {version} found, version {LOG_FORMAT} expected"
        )));
    }
    let id: [u8; 16] = head[12..28].try_into().expect("16 bytes");
    if id != store_id {
        return Err(corrupt(format!(
            "written for another store (store id {}, this store {}): not applied",
            hex(&id),
            hex(&store_id)
        )));
    }
    let base = u64::from_be_bytes(head[28..36].try_into().expect("8 bytes"));
    let mut entries = Vec::new();
    let mut at = HEADER_LEN;
    let mut expected = base + 1;
    while let Some(frame) = bytes.get(at..at + FRAME_HEADER) {
        let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(frame[4..8].try_into().expect("4 bytes"));
        let seq = u64::from_be_bytes(frame[8..16].try_into().expect("8 bytes"));
        let Some(body) = bytes.get(at + 8..at + FRAME_HEADER + len) else {
            break;
        };
        if seq != expected || crc32fast::hash(body) != crc {
            break;
        }
        entries.push((seq, body[8..].to_vec()));
        at += FRAME_HEADER + len;
        expected += 1;
    }
    Ok(Some(Contents {
        base,
        entries,
        dropped_bytes: bytes[at..]
            .iter()
            .rposition(|byte| *byte != 0)
            .map_or(0, |last| last as u64 + 1),
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_error(path: &Path, what: &str, err: io::Error) -> StoreError {
    StoreError::Backend(std::sync::Arc::new(io::Error::new(
        err.kind(),
        format!("commit log {}: {what}: {err}", path.display()),
    )))
}

/// The open commit log of a store.
#[derive(Debug)]
pub(super) struct CommitLog {
    path: PathBuf,
    file: File,
    /// D2: `fdatasync` every append.
    sync: bool,
    store_id: [u8; 16],
    /// The last appended seq (the base when no entry was appended since the last checkpoint).
    last: u64,
    /// The header and every appended entry: where the next entry goes.
    len: u64,
    /// File length: `len` and the zeros after it.
    allocated: u64,
    /// Entries since the header.
    entries: u64,
    /// The buffer frames are built in, kept between commits.
    spare: Vec<u8>,
    limits: (u64, u64),
    /// Set when the file may hold bytes that are not a clean sequence of acknowledged entries
    /// (a failed append could not be taken back): every later commit fails until reopened.
    poisoned: bool,
}

impl CommitLog {
    /// Lays a new log at `path` (header only, first entry `base + 1`) and opens it.
    pub(super) fn create(
        path: &Path,
        store_id: [u8; 16],
        base: u64,
        sync: bool,
    ) -> Result<Self, StoreError> {
        let file = lay(path, store_id, base, sync)
            .map_err(|err| io_error(path, "create", err.into_inner()))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            sync,
            store_id,
            last: base,
            len: HEADER_LEN as u64,
            allocated: PREALLOCATE,
            entries: 0,
            spare: Vec::new(),
            limits: (CHECKPOINT_COMMITS, CHECKPOINT_BYTES),
            poisoned: false,
        })
    }

    /// The seq of the last appended entry.
    pub(super) fn last_seq(&self) -> u64 {
        self.last
    }

    /// Whether entries were appended since the last checkpoint.
    pub(super) fn has_entries(&self) -> bool {
        self.entries > 0
    }

    /// Whether enough was appended that the next commit should be a checkpoint.
    pub(super) fn checkpoint_due(&self) -> bool {
        self.entries >= self.limits.0 || self.len - HEADER_LEN as u64 >= self.limits.1
    }

    #[cfg(test)]
    pub(super) fn set_limits(&mut self, commits: u64, bytes: u64) {
        self.limits = (commits, bytes);
    }

    /// Fails when an earlier failure left the file in doubt.
    pub(super) fn usable(&self) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(io_error(
                &self.path,
                "append",
                io::Error::other(
                    "unusable after a failed write could not be taken back; reopen the store",
                ),
            ));
        }
        Ok(())
    }

    /// An empty frame for the next commit.
    pub(super) fn frame(&mut self) -> Frame {
        Frame::new(std::mem::take(&mut self.spare))
    }

    /// Gives a frame's buffer back for reuse.
    pub(super) fn recycle(&mut self, frame: Frame) {
        self.spare = frame.bytes;
    }

    /// Appends `frame` as the next entry (synced at D2); returns its seq. On failure nothing
    /// of it stays in the file.
    pub(super) fn append(&mut self, frame: &mut Frame, faults: &Faults) -> Result<u64, StoreError> {
        self.usable()?;
        let seq = self.last + 1;
        let bytes = &mut frame.bytes;
        let len = u32::try_from(bytes.len() - FRAME_HEADER).expect("a commit below 4 GiB");
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        bytes[8..16].copy_from_slice(&seq.to_be_bytes());
        let crc = crc32fast::hash(&bytes[8..]);
        bytes[4..8].copy_from_slice(&crc.to_be_bytes());
        let end = self.len + bytes.len() as u64;
        let written = (|| {
            if end > self.allocated {
                let grown = end.div_ceil(PREALLOCATE) * PREALLOCATE;
                self.file.seek(SeekFrom::Start(self.allocated))?;
                write_zeros(&mut self.file, grown - self.allocated)?;
                self.allocated = grown;
                self.file.seek(SeekFrom::Start(self.len))?;
            }
            if let Some(action) = faults.fire(FaultPoint::TornAppend) {
                self.file.write_all(&bytes[..bytes.len() / 2])?;
                action.run(FaultPoint::TornAppend)?;
            }
            self.file.write_all(bytes)?;
            if self.sync {
                self.file.sync_data()?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => {
                self.last = seq;
                self.len += bytes.len() as u64;
                self.entries += 1;
                Ok(seq)
            }
            Err(err) => {
                self.cut_back(self.len, bytes.len() as u64);
                Err(io_error(&self.path, "append", err))
            }
        }
    }

    /// Takes back the last appended entry, `seq`, whose commit failed after the append.
    pub(super) fn take_back(&mut self, seq: u64, frame: &Frame) {
        debug_assert_eq!(seq, self.last);
        let len = self.len - frame.bytes.len() as u64;
        self.cut_back(len, frame.bytes.len() as u64);
        if !self.poisoned {
            self.len = len;
            self.last -= 1;
            self.entries -= 1;
        }
    }

    /// Zeroes the `span` bytes from `len` (synced at D2) and moves the write position back
    /// there, or poisons the log.
    fn cut_back(&mut self, len: u64, span: u64) {
        let cut = (|| {
            self.file.seek(SeekFrom::Start(len))?;
            write_zeros(&mut self.file, span)?;
            self.file.seek(SeekFrom::Start(len))?;
            if self.sync {
                self.file.sync_data()?;
            }
            Ok::<_, io::Error>(())
        })();
        if let Err(err) = cut {
            tracing::error!(path = %self.path.display(), error = %err, "commit log: could not take back a failed write");
            self.poisoned = true;
        }
    }

    /// Empties the log after a durable checkpoint of every entry: lays a new file at base
    /// [`last_seq`](Self::last_seq) and renames it over this one. A failure leaves the old file,
    /// whose entries the checkpoint covers, and poisons the log only when the rename may have
    /// happened without reaching the disk.
    pub(super) fn reset(&mut self) -> Result<(), StoreError> {
        let file = lay(&self.path, self.store_id, self.last, self.sync);
        match file {
            Ok(file) => {
                self.file = file;
                self.len = HEADER_LEN as u64;
                self.allocated = PREALLOCATE;
                self.entries = 0;
                Ok(())
            }
            Err(Laid::Before(err)) => Err(io_error(&self.path, "checkpoint", err)),
            Err(Laid::After(err)) => {
                self.poisoned = true;
                Err(io_error(&self.path, "checkpoint", err))
            }
        }
    }
}

/// Where laying a new log failed: before the rename (the old file stands) or after it.
#[derive(Debug)]
enum Laid {
    Before(io::Error),
    After(io::Error),
}

impl Laid {
    fn into_inner(self) -> io::Error {
        match self {
            Self::Before(err) | Self::After(err) => err,
        }
    }
}

fn lay(path: &Path, store_id: [u8; 16], base: u64, sync: bool) -> Result<File, Laid> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(Laid::Before)?;
    let zeros = (|| {
        file.write_all(&header(store_id, base))?;
        write_zeros(&mut file, PREALLOCATE - HEADER_LEN as u64)?;
        file.seek(SeekFrom::Start(HEADER_LEN as u64))?;
        Ok(())
    })();
    zeros.map_err(Laid::Before)?;
    if sync {
        file.sync_data().map_err(Laid::Before)?;
    }
    fs::rename(&tmp, path).map_err(Laid::Before)?;
    if sync {
        let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))
            .and_then(|dir| dir.sync_all())
            .map_err(Laid::After)?;
    }
    Ok(file)
}

fn write_zeros(file: &mut File, mut count: u64) -> io::Result<()> {
    let zeros = [0u8; 64 * 1024];
    while count > 0 {
        let chunk = count.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..chunk])?;
        count -= chunk as u64;
    }
    Ok(())
}

/// The log file's bytes, for tests that inspect or damage it.
#[cfg(test)]
pub(super) fn raw(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_splits_back_into_its_writes_and_malformed_ones_are_refused() {
        let mut frame = Frame::new(Vec::new());
        frame.put(LogTable::Events, &[1; 24], b"event");
        frame.remove(LogTable::Queued, &[2; 16]);
        frame.put(LogTable::Requests, b"key", b"");
        let payload = &frame.bytes[FRAME_HEADER..];
        assert_eq!(
            records(payload).unwrap(),
            vec![
                Record::Put(LogTable::Events, &[1; 24], b"event"),
                Record::Remove(LogTable::Queued, &[2; 16]),
                Record::Put(LogTable::Requests, b"key", b""),
            ]
        );
        assert_eq!(records(&payload[..payload.len() - 1]), None);
        let mut bad_tag = payload.to_vec();
        bad_tag[0] = 99;
        assert_eq!(records(&bad_tag), None);
        assert_eq!(records(&[]), Some(Vec::new()));
    }

    #[test]
    fn reading_stops_at_a_torn_entry_a_bad_crc_or_a_seq_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb-log");
        let id = [7; 16];
        let mut log = CommitLog::create(&path, id, 41, false).unwrap();
        for i in 0..3u8 {
            let mut frame = log.frame();
            frame.put(LogTable::Runs, &[i; 16], &[i; 5]);
            assert_eq!(
                log.append(&mut frame, &Faults::default()).unwrap(),
                42 + u64::from(i)
            );
            log.recycle(frame);
        }
        let file = raw(&path);
        let entry = FRAME_HEADER + 2 + 4 + 16 + 4 + 5;
        assert_eq!(file.len() as u64, PREALLOCATE);
        let whole = file[..HEADER_LEN + 3 * entry].to_vec();
        assert!(file[whole.len()..].iter().all(|byte| *byte == 0));
        let seqs = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            let contents = read(&path, id).unwrap().unwrap();
            assert_eq!(contents.base, 41);
            let seqs: Vec<u64> = contents.entries.iter().map(|(seq, _)| *seq).collect();
            (seqs, contents.dropped_bytes)
        };
        assert_eq!(seqs(&file), (vec![42, 43, 44], 0), "zeros are no torn tail");
        assert_eq!(seqs(&whole), (vec![42, 43, 44], 0));
        assert_eq!(
            seqs(&whole[..whole.len() - 3]),
            (vec![42, 43], entry as u64 - 3)
        );
        let mut flipped = whole.clone();
        flipped[HEADER_LEN + entry + FRAME_HEADER + 3] ^= 1;
        assert_eq!(seqs(&flipped), (vec![42], 2 * entry as u64));
        let mut gap = whole.clone();
        gap[HEADER_LEN + entry + 15] = 99;
        assert_eq!(seqs(&gap).0, vec![42]);
    }

    #[test]
    fn appends_past_the_preallocated_zeros_grow_the_file_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb-log");
        let mut log = CommitLog::create(&path, [3; 16], 0, false).unwrap();
        for i in 0..5u8 {
            let mut frame = log.frame();
            frame.put(LogTable::Envelopes, &[i; 16], &vec![i + 1; 300_000]);
            log.append(&mut frame, &Faults::default()).unwrap();
            log.recycle(frame);
        }
        assert_eq!(raw(&path).len() as u64, 2 * PREALLOCATE);
        let contents = read(&path, [3; 16]).unwrap().unwrap();
        assert_eq!(contents.entries.len(), 5);
        assert_eq!(contents.dropped_bytes, 0);
        let last = records(&contents.entries[4].1).unwrap();
        assert_eq!(
            last,
            vec![Record::Put(LogTable::Envelopes, &[4; 16], &[5; 300_000])]
        );
    }

    #[test]
    fn a_log_of_another_store_or_with_a_damaged_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb-log");
        CommitLog::create(&path, [1; 16], 0, true).unwrap();
        assert!(read(&path, [1; 16]).unwrap().unwrap().entries.is_empty());
        let err = read(&path, [2; 16]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { what }
                if what.contains("s.redb-log") && what.contains("another store")),
            "{err:?}"
        );
        let mut bytes = raw(&path);
        bytes[30] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = read(&path, [1; 16]).unwrap_err();
        assert!(err.to_string().contains("header checksum"), "{err}");
        assert!(
            read(&dir.path().join("missing"), [1; 16])
                .unwrap()
                .is_none()
        );
    }
}
