//! The file-backed store: a JSON file, written atomically and debounced.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::table::{Entry, PeerTable};
use crate::{Config, Error, PeerRecord, PeerStore, Source};

/// The version written in the file; a file with another version is set aside.
const FILE_VERSION: u32 = 1;

/// After a failed background write, wait at least this long before retrying.
const ERROR_RETRY: Duration = Duration::from_secs(1);

/// The largest file accepted, per allowed entry (a stored entry is about
/// 300 bytes of pretty JSON), so a huge file cannot exhaust memory.
const MAX_BYTES_PER_ENTRY: u64 = 2048;

/// The smallest file-size limit, whatever `max_entries` is.
const MIN_MAX_FILE_BYTES: u64 = 1 << 20;

/// A [`PeerStore`] persisted in a JSON file.
///
/// - **Atomic writes.** The table is written to `<file>.tmp` in the same
///   directory, fsynced, renamed over the file, and the directory is fsynced,
///   so a crash leaves either the old or the new file, never a mix. A
///   leftover temporary file is deleted on open.
/// - **Debounce.** Updates change the table in memory and wake a background
///   writer thread (`peer-storage-writer`), which writes the file while it is
///   dirty, at most once per [`Config::debounce`] (the first write after open
///   also waits one debounce). [`PeerStore::flush`] writes at once, and
///   dropping the store stops the thread and writes any pending change.
/// - **Corruption.** A file that cannot be parsed (garbage, truncated, empty,
///   unknown version, absurdly large) is renamed to
///   `<file>.corrupt-<unix time>` with a warning and the store starts empty.
///
/// Open one store per file: two stores (or two processes) on the same path
/// would overwrite each other's writes.
#[derive(Debug)]
pub struct FilePeerStore {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    tmp_path: PathBuf,
    debounce: Duration,
    state: Mutex<State>,
    wake: Condvar,
    /// Held for the whole of a write, so that two writes never interleave and
    /// a newer snapshot is never overwritten by an older one.
    io: Mutex<()>,
    writes: AtomicU64,
}

#[derive(Debug)]
struct State {
    table: PeerTable,
    dirty: bool,
    next_write: Instant,
    shutdown: bool,
}

#[derive(Serialize)]
struct FileRef<'a> {
    version: u32,
    peers: Vec<&'a Entry>,
}

#[derive(Deserialize)]
struct FileOwned {
    version: u32,
    peers: Vec<Entry>,
}

impl FilePeerStore {
    /// Opens (or creates) the peer table at `path`, creating its directory if
    /// needed, and starts the background writer.
    ///
    /// A missing file gives an empty table; a corrupt one is set aside (see
    /// the type docs). Errors: `max_entries` of 0, a path without a file name,
    /// an unreadable file or directory, or a failure to set a corrupt file aside.
    pub fn open(path: impl AsRef<Path>, config: Config) -> Result<Self, Error> {
        if config.max_entries == 0 {
            return Err(Error::InvalidConfig("max_entries must be at least 1"));
        }
        let path = path.as_ref().to_path_buf();
        let Some(file_name) = path.file_name() else {
            return Err(Error::InvalidPath(path));
        };
        let mut tmp_name = file_name.to_os_string();
        tmp_name.push(".tmp");
        let tmp_path = path.with_file_name(tmp_name);

        let dir = parent_dir(&path);
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        remove_leftover_tmp(&tmp_path)?;
        let table = load(&path, config.max_entries)?;

        let shared = Arc::new(Shared {
            path,
            tmp_path,
            debounce: config.debounce,
            state: Mutex::new(State {
                table,
                dirty: false,
                next_write: Instant::now() + config.debounce,
                shutdown: false,
            }),
            wake: Condvar::new(),
            io: Mutex::new(()),
            writes: AtomicU64::new(0),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("peer-storage-writer".to_owned())
                .spawn(move || writer_loop(&shared))
                .map_err(Error::Thread)?
        };
        Ok(FilePeerStore {
            shared,
            writer: Some(writer),
        })
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The number of successful file writes since open (for metrics and tests).
    pub fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::Relaxed)
    }

    /// The number of stored addresses.
    pub fn len(&self) -> usize {
        self.shared.lock_state().table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `update` on the table and wakes the writer if it changed anything.
    fn update(&self, update: impl FnOnce(&mut PeerTable) -> bool) {
        let mut state = self.shared.lock_state();
        if update(&mut state.table) {
            state.dirty = true;
            self.shared.wake.notify_all();
        }
    }
}

impl PeerStore for FilePeerStore {
    fn upsert(&self, addr: SocketAddr, source: Source, node_id: Option<String>, now: u64) {
        self.update(|table| table.upsert(addr, source, node_id, now));
    }

    fn record_success(&self, addr: SocketAddr, node_id: Option<String>, now: u64) {
        self.update(|table| table.record_success(addr, node_id, now));
    }

    fn record_failure(&self, addr: SocketAddr, _now: u64) {
        self.update(|table| table.record_failure(addr));
    }

    fn record_misbehaviour(&self, addr: SocketAddr, now: u64) {
        self.update(|table| table.record_misbehaviour(addr, now));
    }

    fn is_banned(&self, addr: SocketAddr, now: u64) -> bool {
        self.shared.lock_state().table.is_banned(addr, now)
    }

    fn best(&self, limit: usize, now: u64) -> Vec<PeerRecord> {
        self.shared.lock_state().table.best(limit, now)
    }

    fn all(&self) -> Vec<PeerRecord> {
        self.shared.lock_state().table.all()
    }

    fn flush(&self) -> Result<(), Error> {
        self.shared.write_now()
    }

    fn get(&self, addr: SocketAddr) -> Option<PeerRecord> {
        self.shared.lock_state().table.get(addr)
    }
}

impl Drop for FilePeerStore {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock_state();
            state.shutdown = true;
            self.shared.wake.notify_all();
        }
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.shared.path.display(), "peer storage writer thread panicked");
        }
        let dirty = self.shared.lock_state().dirty;
        if dirty && let Err(error) = self.shared.write_now() {
            tracing::warn!(%error, "could not write the peer table on close");
        }
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // Table operations keep the table consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the current table atomically and updates the debounce state.
    fn write_now(&self) -> Result<(), Error> {
        let _io = self.io.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = {
            let mut state = self.lock_state();
            let file = FileRef {
                version: FILE_VERSION,
                peers: state.table.entries().collect(),
            };
            let bytes = serde_json::to_vec_pretty(&file)?;
            state.dirty = false;
            bytes
        };
        let result = write_atomic(&self.path, &self.tmp_path, &bytes);
        let mut state = self.lock_state();
        match result {
            Ok(()) => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                state.next_write = Instant::now() + self.debounce;
                Ok(())
            }
            Err(error) => {
                state.dirty = true;
                state.next_write = Instant::now() + self.debounce.max(ERROR_RETRY);
                Err(error)
            }
        }
    }
}

/// The background writer: writes while dirty, at most once per debounce,
/// until shutdown (the final write is done by `Drop`).
fn writer_loop(shared: &Shared) {
    let mut state = shared.lock_state();
    loop {
        if state.shutdown {
            return;
        }
        if !state.dirty {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        let now = Instant::now();
        if now < state.next_write {
            let timeout = state.next_write - now;
            state = shared
                .wake
                .wait_timeout(state, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        drop(state);
        if let Err(error) = shared.write_now() {
            tracing::warn!(%error, "could not write the peer table, will retry");
        }
        state = shared.lock_state();
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Deletes the temporary file of a write that crashed before its rename.
fn remove_leftover_tmp(tmp_path: &Path) -> Result<(), Error> {
    match fs::remove_file(tmp_path) {
        Ok(()) => {
            tracing::info!(path = %tmp_path.display(), "removed a leftover temporary peer table");
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            path: tmp_path.to_path_buf(),
            source,
        }),
    }
}

/// Reads the table from `path`; a missing file is an empty table and a
/// corrupt one is set aside.
fn load(path: &Path, max_entries: usize) -> Result<PeerTable, Error> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(PeerTable::new(max_entries));
        }
        Err(error) => return Err(io_error(error)),
    };
    let limit = u64::try_from(max_entries)
        .unwrap_or(u64::MAX)
        .saturating_mul(MAX_BYTES_PER_ENTRY)
        .max(MIN_MAX_FILE_BYTES);
    // The buffer grows with the bytes actually read, never beyond the limit.
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_error)?;

    let problem = if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
        format!("file larger than {limit} bytes")
    } else {
        match serde_json::from_slice::<FileOwned>(&bytes) {
            Ok(file) if file.version == FILE_VERSION => {
                return Ok(PeerTable::from_entries(max_entries, file.peers));
            }
            Ok(file) => format!("unsupported version {}", file.version),
            Err(error) => error.to_string(),
        }
    };
    let aside = set_aside(path)?;
    tracing::warn!(
        path = %path.display(),
        moved_to = %aside.display(),
        %problem,
        "corrupt peer table moved aside, starting with an empty table"
    );
    Ok(PeerTable::new(max_entries))
}

/// Renames a corrupt file to `<file>.corrupt-<unix time>` (with a counter if
/// that name is taken) and returns the new path.
fn set_aside(path: &Path) -> Result<PathBuf, Error> {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut aside = path.with_file_name(format!("{name}.corrupt-{unix}"));
    let mut counter = 1u32;
    while aside.exists() {
        aside = path.with_file_name(format!("{name}.corrupt-{unix}-{counter}"));
        counter = counter.saturating_add(1);
    }
    fs::rename(path, &aside).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(aside)
}

/// Writes `bytes` to `tmp_path`, fsyncs it, renames it over `path` and
/// fsyncs the directory.
pub(crate) fn write_atomic(path: &Path, tmp_path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp_error = |source| Error::Io {
        path: tmp_path.to_path_buf(),
        source,
    };
    let mut file = File::create(tmp_path).map_err(tmp_error)?;
    file.write_all(bytes).map_err(tmp_error)?;
    file.sync_all().map_err(tmp_error)?;
    drop(file);
    fs::rename(tmp_path, path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    sync_dir(&parent_dir(path))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), Error> {
    // Directories cannot be opened for fsync on this platform; the rename is
    // still atomic.
    Ok(())
}
