//! The data directory: the node key, an exclusive lock and an append-only,
//! checksummed event log.
//!
//! Log format: a sequence of records, each `u32 length (LE) | u32 CRC-32 (LE) | payload`,
//! the payload being the postcard encoding of an [`engine::Record`](crate::engine::Record).
//! Appends are buffered and made durable together by [`Store::sync`]. A running node moves
//! its store to a dedicated storage thread that appends every waiting job (one per event-loop
//! iteration) and fsyncs them together (group commit), so the event loop never waits on the
//! disk itself; it only holds back each iteration's messages and answers until that thread
//! reports them durable. On open, a torn tail (a crash mid-write: no valid record
//! after the bad point) is cut off with a warning; everything before it is intact by
//! construction. A bad record followed by a valid one is mid-log corruption: opening fails
//! with [`Error::CorruptLog`] and the file is left untouched.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::engine::Record;
use crate::error::Error;

/// The log file's name inside the data directory.
pub const LOG_FILE: &str = "events.log";
/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// The node key's file name inside the data directory.
pub const KEY_FILE: &str = "node.key";
/// The largest record accepted (checked before allocating).
pub const MAX_RECORD_LEN: usize = peer_protocol::MAX_FRAME_LEN + 4096;
/// The most bytes after a bad record that are scanned for a valid record; a longer remainder
/// is never taken for a torn tail.
const MAX_TORN_TAIL: u64 = 64 << 20;

/// An open, locked data directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    log_path: PathBuf,
    log: BufWriter<File>,
    _lock: File,
    dirty: bool,
    /// Set by the first failed append, sync or wipe: what was buffered may or may not be on
    /// disk, and a later fsync could "succeed" without it. Every later call fails.
    failed: bool,
}

impl Store {
    /// Opens (creating if needed) and locks `dir`, reads the log and repairs a torn tail.
    pub fn open(dir: &Path) -> Result<(Store, Vec<Record>), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::storage(dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::storage(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::DataDirLocked {
                    path: dir.to_path_buf(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::storage(&lock_path, e)),
        }
        let log_path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(|e| Error::storage(&log_path, e))?;
        let (records, good_len) = read_records(&mut file, &log_path)?;
        let len = file
            .metadata()
            .map_err(|e| Error::storage(&log_path, e))?
            .len();
        if good_len < len {
            check_torn_tail(&mut file, &log_path, good_len, len)?;
            tracing::warn!(
                path = %log_path.display(),
                kept = good_len,
                dropped = len - good_len,
                "event log has a torn or corrupt tail (a crash mid-write?); truncating it"
            );
            file.set_len(good_len)
                .map_err(|e| Error::storage(&log_path, e))?;
            file.sync_all().map_err(|e| Error::storage(&log_path, e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| Error::storage(&log_path, e))?;
        Ok((
            Store {
                dir: dir.to_path_buf(),
                log_path,
                log: BufWriter::with_capacity(1 << 16, file),
                _lock: lock,
                dirty: false,
                failed: false,
            },
            records,
        ))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an earlier write or sync failed (the store refuses all further work).
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Fails the store for good and drops what is still buffered, so that not even the
    /// writer's flush on drop puts unacknowledged records into the log.
    fn mark_failed(&mut self) {
        self.failed = true;
        if let Ok(file) = self.log.get_ref().try_clone() {
            let old = std::mem::replace(&mut self.log, BufWriter::with_capacity(0, file));
            let (_file, _discarded) = old.into_parts();
        }
    }

    fn check_usable(&self) -> Result<(), Error> {
        if self.failed {
            return Err(Error::storage(
                &self.log_path,
                std::io::Error::other("the event log failed earlier; it is not written again"),
            ));
        }
        Ok(())
    }

    /// Appends a record (buffered; durable after [`Store::sync`]).
    pub fn append(&mut self, record: &Record) -> Result<(), Error> {
        self.check_usable()?;
        let result = self.append_inner(record);
        if matches!(result, Err(Error::Storage { .. })) {
            self.mark_failed();
        }
        result
    }

    fn append_inner(&mut self, record: &Record) -> Result<(), Error> {
        let payload = postcard::to_allocvec(record)
            .map_err(|e| Error::CorruptLog(format!("cannot encode a record: {e}")))?;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| (*len as usize) <= MAX_RECORD_LEN)
            .ok_or_else(|| Error::CorruptLog("record too large".to_owned()))?;
        let io = |e| Error::storage(&self.log_path, e);
        self.log.write_all(&len.to_le_bytes()).map_err(io)?;
        self.log
            .write_all(&crc32(&payload).to_le_bytes())
            .map_err(|e| Error::storage(&self.log_path, e))?;
        self.log
            .write_all(&payload)
            .map_err(|e| Error::storage(&self.log_path, e))?;
        self.dirty = true;
        Ok(())
    }

    /// Makes every appended record durable (flush + fdatasync), if there is any. After a
    /// failure the store is failed for good: fsync is never retried.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.check_usable()?;
        if !self.dirty {
            return Ok(());
        }
        let result = self.sync_inner();
        if result.is_err() {
            self.mark_failed();
        }
        result
    }

    fn sync_inner(&mut self) -> Result<(), Error> {
        self.log
            .flush()
            .map_err(|e| Error::storage(&self.log_path, e))?;
        self.log
            .get_ref()
            .sync_data()
            .map_err(|e| Error::storage(&self.log_path, e))?;
        self.dirty = false;
        Ok(())
    }

    /// Erases the log (this node's orderless network lost a genesis merge).
    pub fn wipe(&mut self) -> Result<(), Error> {
        self.check_usable()?;
        let result = self.wipe_inner();
        if result.is_err() {
            self.mark_failed();
        }
        result
    }

    fn wipe_inner(&mut self) -> Result<(), Error> {
        self.log
            .flush()
            .map_err(|e| Error::storage(&self.log_path, e))?;
        let file = self.log.get_mut();
        file.set_len(0)
            .map_err(|e| Error::storage(&self.log_path, e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::storage(&self.log_path, e))?;
        file.sync_all()
            .map_err(|e| Error::storage(&self.log_path, e))?;
        self.dirty = false;
        Ok(())
    }
}

/// One durable operation handed to the [`Writer`].
#[derive(Debug)]
pub(crate) enum Op {
    /// Append a record.
    Append(Record),
    /// Erase the log.
    Wipe,
}

/// The storage thread's answer for one submitted job: its operations are durable (or not).
#[derive(Debug)]
pub(crate) struct Committed {
    /// The id the job was submitted with.
    pub(crate) id: u64,
    /// `Ok` once every operation of the job (and of every earlier job) is on disk.
    pub(crate) result: Result<(), Error>,
}

/// Group commit on a dedicated thread: the event loop submits each iteration's records as
/// one job and keeps working; the thread appends every job that is waiting, makes them durable
/// with one fsync, and answers each job in submission order on a bounded channel.
///
/// The caller keeps at most `capacity` jobs unanswered (it counts [`Committed`] answers), so
/// neither channel ever fills: [`Writer::submit`] never blocks, and neither does the thread.
/// Once a write or fsync fails, that job and every later one fail (the [`Store`] refuses all
/// further work).
#[derive(Debug)]
pub(crate) struct Writer {
    jobs: std::sync::mpsc::SyncSender<(u64, Vec<Op>)>,
}

/// Resolves once the storage thread has ended and closed the store (the data directory's lock
/// is free again).
#[derive(Debug)]
pub(crate) struct Closed(tokio::sync::oneshot::Receiver<()>);

impl Closed {
    /// Waits until the storage thread has closed the store.
    pub(crate) async fn wait(self) {
        let _ = self.0.await;
    }
}

impl Writer {
    /// Moves `store` to a new thread. `label` is the `node` label of its metrics.
    pub(crate) fn spawn(
        store: Store,
        capacity: usize,
        label: String,
    ) -> Result<(Writer, tokio::sync::mpsc::Receiver<Committed>, Closed), Error> {
        let capacity = capacity.max(1);
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel(capacity);
        let (committed_tx, committed_rx) = tokio::sync::mpsc::channel(capacity);
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let log_path = store.log_path.clone();
        std::thread::Builder::new()
            .name("storage".to_owned())
            .spawn(move || {
                write_jobs(store, &jobs_rx, &committed_tx, &label);
                // The store (and its lock) is dropped before the thread says it is closed.
                drop(closed_tx);
            })
            .map_err(|e| Error::storage(&log_path, e))?;
        Ok((Writer { jobs: jobs_tx }, committed_rx, Closed(closed_rx)))
    }

    /// Hands a job to the thread. Fails if the thread is gone, or (a caller bug) if more than
    /// `capacity` jobs are unanswered.
    pub(crate) fn submit(&self, id: u64, ops: Vec<Op>) -> Result<(), Error> {
        self.jobs.try_send((id, ops)).map_err(|e| {
            let what = match e {
                std::sync::mpsc::TrySendError::Full(_) => "the storage queue is full",
                std::sync::mpsc::TrySendError::Disconnected(_) => "the storage thread has stopped",
            };
            Error::storage(LOG_FILE, std::io::Error::other(what))
        })
    }
}

/// The storage thread: one fsync per group of waiting jobs, answers in order.
fn write_jobs(
    mut store: Store,
    jobs: &std::sync::mpsc::Receiver<(u64, Vec<Op>)>,
    committed: &tokio::sync::mpsc::Sender<Committed>,
    label: &str,
) {
    let mut group = Vec::new();
    while let Ok(first) = jobs.recv() {
        group.push(first);
        while let Ok(next) = jobs.try_recv() {
            group.push(next);
        }
        let started = std::time::Instant::now();
        let mut records = 0u64;
        let mut result = Ok(());
        'ops: for (_, ops) in &group {
            for op in ops {
                result = match op {
                    Op::Append(record) => {
                        records += 1;
                        store.append(record)
                    }
                    Op::Wipe => store.wipe(),
                };
                if result.is_err() {
                    break 'ops;
                }
            }
        }
        if result.is_ok() {
            result = store.sync();
        }
        if records > 0 && result.is_ok() {
            metrics::counter!("p2p_exchange_fsyncs_total", "node" => label.to_owned()).increment(1);
            metrics::counter!("p2p_exchange_records_persisted_total", "node" => label.to_owned())
                .increment(records);
            metrics::histogram!("p2p_exchange_fsync_seconds", "node" => label.to_owned())
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("p2p_exchange_commit_group_jobs", "node" => label.to_owned())
                .record(group.len() as f64);
        }
        let failure = result.err().map(|e| e.to_string());
        for (id, _) in group.drain(..) {
            let result = match &failure {
                None => Ok(()),
                Some(text) => Err(Error::storage(
                    &store.log_path,
                    std::io::Error::other(text.clone()),
                )),
            };
            // The event loop is gone (the node stopped or crashed): nobody waits for answers.
            if committed.blocking_send(Committed { id, result }).is_err() {
                return;
            }
        }
    }
}

/// Reads every intact record; returns them and the length of the intact prefix.
fn read_records(file: &mut File, path: &Path) -> Result<(Vec<Record>, u64), Error> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::storage(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 16, &*file);
    let mut records = Vec::new();
    let mut good = 0u64;
    loop {
        let mut header = [0u8; 8];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::storage(path, e)),
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_RECORD_LEN {
            break;
        }
        let mut payload = vec![0u8; len];
        match reader.read_exact(&mut payload) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::storage(path, e)),
        }
        if crc32(&payload) != crc {
            break;
        }
        match postcard::from_bytes::<Record>(&payload) {
            Ok(record) => records.push(record),
            Err(_) => break,
        }
        good += 8 + len as u64;
    }
    Ok((records, good))
}

/// Fails with [`Error::CorruptLog`] unless the bytes from `bad` (where the intact prefix
/// ends) to `len` hold no valid record, i.e. they are a torn tail that may be cut off.
fn check_torn_tail(file: &mut File, path: &Path, bad: u64, len: u64) -> Result<(), Error> {
    let rest = len - bad;
    if rest > MAX_TORN_TAIL {
        return Err(Error::CorruptLog(format!(
            "{}: bad record at byte {bad} followed by {rest} more bytes, too many for a torn tail;              refusing to truncate (restore the log or remove it to resync from peers)",
            path.display()
        )));
    }
    file.seek(SeekFrom::Start(bad))
        .map_err(|e| Error::storage(path, e))?;
    // Bounded by MAX_TORN_TAIL, a local file's length (not peer input).
    let mut tail = Vec::with_capacity(rest as usize);
    file.take(rest)
        .read_to_end(&mut tail)
        .map_err(|e| Error::storage(path, e))?;
    // The bad record itself starts at 0; look for a valid one starting anywhere after it.
    for at in 1..tail.len() {
        if let Some(record_len) = valid_record_at(&tail[at..]) {
            return Err(Error::CorruptLog(format!(
                "{}: bad record at byte {bad}, but a valid record of {record_len} bytes follows at byte {};                  refusing to truncate acknowledged records (restore the log or remove it to resync from peers)",
                path.display(),
                bad + at as u64
            )));
        }
    }
    Ok(())
}

/// The length of the valid record (header, checksum, decodable payload) at the start of `bytes`.
fn valid_record_at(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..8)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_RECORD_LEN {
        return None;
    }
    let payload = bytes.get(8..8 + len)?;
    (crc32(payload) == crc && postcard::from_bytes::<Record>(payload).is_ok()).then_some(8 + len)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use peer_protocol::NodeId;

    fn settled(n: u64) -> Record {
        Record::Settled {
            lamport: n,
            origin: NodeId::from_bytes([7; 32]),
            seq: n,
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut store, records) = Store::open(dir.path()).expect("open");
            assert!(records.is_empty());
            for n in 1..=3 {
                store.append(&settled(n)).expect("append");
            }
            store.sync().expect("sync");
        }
        let path = dir.path().join(LOG_FILE);
        let intact = std::fs::metadata(&path).expect("meta").len();
        // A crash mid-append: half a record at the end.
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 5])
            .expect("write");
        drop(file);
        let (mut store, records) = Store::open(dir.path()).expect("reopen");
        assert_eq!(records, vec![settled(1), settled(2), settled(3)]);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), intact);
        store.append(&settled(4)).expect("append");
        store.sync().expect("sync");
        drop(store);
        // A flipped byte in the last record: that record is dropped, the rest kept.
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        let (_store, records) = Store::open(dir.path()).expect("reopen");
        assert_eq!(records, vec![settled(1), settled(2), settled(3)]);
    }

    #[test]
    fn a_data_dir_is_used_by_one_node_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        match Store::open(dir.path()) {
            Err(Error::DataDirLocked { path }) => assert_eq!(path, dir.path()),
            other => panic!("expected DataDirLocked, got {other:?}"),
        }
        drop(store);
        Store::open(dir.path()).expect("free again");
    }

    /// Review #6: a corrupt record in the middle of the log, followed by intact fsynced
    /// records, is not a torn tail: opening fails and the file is left as it was.
    #[test]
    fn mid_log_corruption_fails_open_without_touching_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut store, _) = Store::open(dir.path()).expect("open");
            for n in 1..=3 {
                store.append(&settled(n)).expect("append");
            }
            store.sync().expect("sync");
        }
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        let rec = bytes.len() / 3;
        bytes[rec + 10] ^= 0xff; // a flipped byte in record 2 of 3
        std::fs::write(&path, &bytes).expect("write");
        match Store::open(dir.path()) {
            Err(Error::CorruptLog(message)) => {
                assert!(message.contains("refusing to truncate"), "{message}");
            }
            other => panic!("expected CorruptLog, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&path).expect("read"),
            bytes,
            "the log was modified"
        );
    }

    /// Review #7: after a failed flush/fsync the store is failed for good: nothing is
    /// appended, synced or wiped again, even once the disk would work again.
    #[test]
    fn a_failed_sync_is_never_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = Store::open(dir.path()).expect("open");
        store.append(&settled(1)).expect("append");
        store.sync().expect("sync");
        // A disk that refuses writes (ENOSPC on every write).
        let full = OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let good = std::mem::replace(&mut store.log, BufWriter::new(full));
        store.append(&settled(2)).expect("buffered append");
        assert!(store.sync().is_err(), "sync to a full disk succeeded");
        assert!(store.is_failed());
        // The disk works again: the store still refuses (no fsync retry, no later append).
        let _ = std::mem::replace(&mut store.log, good);
        assert!(store.sync().is_err());
        assert!(store.append(&settled(3)).is_err());
        assert!(store.wipe().is_err());
        drop(store);
        let (_store, records) = Store::open(dir.path()).expect("reopen");
        assert_eq!(records, vec![settled(1)]);
    }

    async fn next(rx: &mut tokio::sync::mpsc::Receiver<Committed>) -> Committed {
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("an answer within 10 s")
            .expect("the storage thread answers")
    }

    #[tokio::test]
    async fn the_writer_answers_jobs_in_order_once_durable_and_frees_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        let (writer, mut committed, closed) =
            Writer::spawn(store, 8, "test".to_owned()).expect("spawn");
        for id in 0..8u64 {
            let ops = (1..=3).map(|n| Op::Append(settled(id * 3 + n))).collect();
            writer.submit(id, ops).expect("submit");
        }
        for id in 0..8u64 {
            let answer = next(&mut committed).await;
            assert_eq!(answer.id, id);
            assert!(answer.result.is_ok(), "{:?}", answer.result);
        }
        // A wipe is ordered with the appends around it.
        writer
            .submit(8, vec![Op::Wipe, Op::Append(settled(100))])
            .expect("submit");
        assert!(next(&mut committed).await.result.is_ok());
        drop(writer);
        closed.wait().await;
        let (_store, records) = Store::open(dir.path()).expect("the lock is free again");
        assert_eq!(records, vec![settled(100)]);
    }

    #[tokio::test]
    async fn after_a_failure_every_later_job_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = Store::open(dir.path()).expect("open");
        let full = OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        store.log = BufWriter::new(full);
        let (writer, mut committed, closed) =
            Writer::spawn(store, 4, "test".to_owned()).expect("spawn");
        writer
            .submit(1, vec![Op::Append(settled(1))])
            .expect("submit");
        let first = next(&mut committed).await;
        assert_eq!(first.id, 1);
        assert!(first.result.is_err(), "a write to a full disk succeeded");
        writer
            .submit(2, vec![Op::Append(settled(2))])
            .expect("submit");
        let second = next(&mut committed).await;
        assert_eq!(second.id, 2);
        assert!(second.result.is_err(), "the failed store was written again");
        drop(writer);
        closed.wait().await;
        let (_store, records) = Store::open(dir.path()).expect("reopen");
        assert!(records.is_empty());
    }
}
