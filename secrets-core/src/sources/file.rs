//! [`FileSource`]: `file:///dir/name`, one file of a directory as mounted by a Kubernetes Secret,
//! ConfigMap or projected volume (or kept up to date by any other process).

use std::ffi::OsStr;
use std::fs;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_core::Stream;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind, Result};
use crate::reference::SecretRef;
use crate::secret::{Lease, Metadata, Secret, Version};
use crate::source::{Capabilities, SecretSource, SourceEvent, fetch_each};
use crate::value::SecretValue;

/// The kubelet's link to the current generation of a volume's files.
const DATA: &str = "..data";
/// Reads that saw the file replaced under them before giving up on a consistent one.
const READ_ATTEMPTS: usize = 3;
/// inotify reports the end of a write (`IN_CLOSE_WRITE`): changes are forwarded then rather than
/// at the truncation that starts an in-place rewrite, which would re-read a half-written file.
const CLOSE_AFTER_WRITE: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Files: `file:///etc/app/secrets/token` reads that file (following symlinks).
///
/// Made for a directory a Kubernetes Secret, ConfigMap or projected volume is mounted on: the
/// version is the kubelet's generation (the target of the directory's `..data` link) when the file
/// is one of the kubelet's `name -> ..data/name` links, and otherwise comes from the file's
/// metadata (modification time, inode, size), never from its content. The parent directory is
/// watched, so a handle sees a change as soon as it is written.
///
/// Files are read synchronously: they are small and usually on tmpfs, where a read costs less than
/// handing it to a blocking thread pool.
#[derive(Clone, Debug)]
pub struct FileSource {
    root: Option<PathBuf>,
    /// Keys the check value of metadata versions (see `metadata_version`).
    version_key: RandomState,
}

impl Default for FileSource {
    fn default() -> Self {
        Self::new()
    }
}

impl FileSource {
    /// A source reading any absolute path.
    pub fn new() -> Self {
        FileSource {
            root: None,
            version_key: RandomState::new(),
        }
    }

    /// A source reading only paths under `dir` (checked on the path as written, after rejecting
    /// `..`; a relative `dir` is taken from the current directory now). Symlinks inside `dir` are
    /// still followed: the kubelet's layout is made of them, so `dir`'s contents must be trusted.
    pub fn rooted(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        FileSource {
            root: Some(std::path::absolute(&dir).unwrap_or(dir)),
            version_key: RandomState::new(),
        }
    }

    /// The file a reference names, normalized (`//` and `.` removed), or why it names none.
    fn resolve(&self, r: &SecretRef) -> Result<PathBuf> {
        if r.selector().is_some() {
            return Err(Error::unsupported(
                "files have no versions or stages: remove `?version=`/`?stage=`",
            ));
        }
        if let Some((key, _)) = r.params().first() {
            return Err(Error::unsupported(format!(
                "the file source takes no query parameters (got `{key}`)"
            )));
        }
        let raw = r.path();
        let invalid = |why: &str| invalid_ref(format!("`{}` {why}", raw.escape_debug()));
        if raw.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        let given = Path::new(raw);
        if !given.is_absolute() {
            return Err(invalid("is not absolute (write `file:///dir/name`)"));
        }
        let mut path = PathBuf::new();
        for part in given.components() {
            match part {
                Component::ParentDir => return Err(invalid("contains `..`")),
                Component::CurDir => {}
                part => path.push(part),
            }
        }
        if path.file_name().is_none() {
            return Err(invalid("names a directory, not a file"));
        }
        if let Some(root) = &self.root
            && !path.starts_with(root)
        {
            let why = format!(
                "is outside the directory this source reads ({})",
                root.display()
            );
            return Err(invalid(&why));
        }
        Ok(path)
    }

    /// The file's current version and modification time, from a stat and at most two readlinks:
    /// the content is not read.
    fn probe(&self, path: &Path) -> Result<Probe> {
        let meta = fs::metadata(path).map_err(|e| io_error(path, e))?;
        if !meta.is_file() {
            // A directory cannot be read; a FIFO would block the read forever, a device might
            // never end.
            let what = if meta.is_dir() {
                "a directory"
            } else {
                "not a regular file"
            };
            return Err(invalid_ref(format!("`{}` is {what}", path.display())));
        }
        let version = match kubelet_generation(path)? {
            Some(generation) => generation,
            None => self.metadata_version(&meta),
        };
        Ok(Probe {
            version: Version::from(version),
            modified: meta.modified().ok(),
        })
    }

    /// `m<mtime ns>-i<inode>-c<check>`, new whenever the file is replaced (inode) or rewritten
    /// (mtime, kept to the nanosecond by ext4, xfs, btrfs and tmpfs).
    ///
    /// The size counts too: an in-place rewrite truncates then writes, a check between the two
    /// reads an empty file, and if the write lands in the same timestamp tick (coarse on older
    /// kernels) only the size tells the states apart. Versions appear in events and logs, though,
    /// and a secret's length narrows a guess at it; so the size only enters `check`, a hash keyed
    /// per source (not invertible without the key) over device, inode, mtime and size (so equal
    /// sizes do not show as equal checks either). Versions therefore compare within one source and
    /// its clones, which is all the engine compares. No stat sees two rewrites of equal size within
    /// one tick; atomic replacement (the kubelet's way) never has that problem.
    fn metadata_version(&self, meta: &fs::Metadata) -> String {
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let (device, inode) = file_id(meta);
        let check = self
            .version_key
            .hash_one((device, inode, modified, meta.len()));
        format!("m{modified}-i{inode}-c{check:016x}")
    }
}

/// What a probe says about a file.
struct Probe {
    version: Version,
    modified: Option<SystemTime>,
}

#[cfg(unix)]
fn file_id(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn file_id(_meta: &fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// The kubelet's generation (`..2026_11_26_15_24_48.123456789`) when `path` is one of its
/// `name -> ..data/name` links; the generation changes exactly when the kubelet swaps in new
/// files, whatever their timestamps say (kubernetes/kubernetes#24215).
fn kubelet_generation(path: &Path) -> Result<Option<String>> {
    // Any failure (not a symlink, or just replaced) means: not a kubelet link right now.
    let Ok(link) = fs::read_link(path) else {
        return Ok(None);
    };
    if link.components().next() != Some(Component::Normal(OsStr::new(DATA))) {
        return Ok(None);
    }
    let Some(dir) = path.parent() else {
        return Ok(None);
    };
    let data = dir.join(DATA);
    match fs::read_link(&data) {
        Ok(target) => Ok(target
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&data, e)),
    }
}

/// Classify an I/O error on `path` (its text is the OS's, never file content).
fn io_error(path: &Path, e: io::Error) -> Error {
    let shown = path.display();
    match e.kind() {
        // ENOTDIR: a component of the path is a file, so there is no such file either.
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
            Error::not_found(format!("no file at `{shown}`"))
        }
        io::ErrorKind::PermissionDenied => Error::new(
            ErrorKind::PermissionDenied,
            format!("not allowed to read `{shown}`"),
        ),
        io::ErrorKind::IsADirectory => invalid_ref(format!("`{shown}` is a directory")),
        io::ErrorKind::InvalidFilename => {
            invalid_ref(format!("`{shown}` is not a valid file name")).with_cause(e)
        }
        _ => unavailable(format!("cannot read `{shown}`")).with_cause(e),
    }
}

fn invalid_ref(message: String) -> Error {
    Error::new(ErrorKind::InvalidRef, message)
}

fn unavailable(message: String) -> Error {
    Error::new(ErrorKind::Unavailable, message)
}

fn not_leased() -> Error {
    Error::unsupported("files have no leases")
}

#[async_trait]
impl SecretSource for FileSource {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::NONE;
        caps.version_probe = true;
        caps.binary = true;
        caps.watch = true;
        caps
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        let path = self.resolve(r)?;
        // The version is probed before the read, so bytes newer than their version are possible
        // (the next check re-reads) but never bytes older than it (which no check would fix);
        // a probe after the read that disagrees means the file was replaced meanwhile: read again.
        let mut probe = self.probe(&path)?;
        let mut attempt = 1;
        let value = loop {
            let value = SecretValue::from_bytes(fs::read(&path).map_err(|e| io_error(&path, e))?);
            let after = self.probe(&path)?;
            if after.version == probe.version || attempt == READ_ATTEMPTS {
                break value;
            }
            probe = after;
            attempt += 1;
        };
        let meta = Metadata {
            version: Some(probe.version),
            created_at: probe.modified,
            ..Metadata::default()
        };
        Ok(Secret::with_metadata(value, meta))
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        // One at a time: each fetch is a synchronous read that never yields.
        fetch_each(self, refs, 1).await
    }

    async fn version(&self, r: &SecretRef) -> Result<Option<Version>> {
        let path = self.resolve(r)?;
        Ok(Some(self.probe(&path)?.version))
    }

    async fn renew(&self, _lease: &Lease, _increment: Option<Duration>) -> Result<Lease> {
        Err(not_leased())
    }

    async fn revoke(&self, _lease: &Lease) -> Result<()> {
        Err(not_leased())
    }

    fn watch(&self, r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        let stream = match self.resolve(r).and_then(DirWatch::start) {
            Ok(watch) => watch.boxed(),
            Err(e) => {
                tracing::debug!(secret = %r, error = %e, "cannot watch the file's directory");
                futures_util::stream::once(std::future::ready(Err(e))).boxed()
            }
        };
        Some(stream)
    }

    /// Nothing runs in the background but the watches, which end when their feeds are dropped.
    async fn shutdown(&self) {}
}

/// A watch on the directory holding a file.
///
/// The directory, not the file: inotify watches inodes, and the file's inode is gone after the
/// kubelet's first update. `dir/token` is a link through `..data` into a generation directory;
/// an update writes a new generation, renames a new `..data` over the old one and deletes the old
/// generation, so a watch placed on the file (its target's inode) sees that deletion and then
/// nothing, ever (open-feature/flagd#42). The directory's inode stays, and every step of the swap
/// is an event on it. Plain files replaced by rename or rewritten in place show there too.
///
/// Events are coalesced: a change is not queued while another is waiting to be taken, since the
/// engine re-reads the file after taking one, which covers every change before that.
struct DirWatch {
    rx: mpsc::UnboundedReceiver<Result<SourceEvent>>,
    change_queued: Arc<AtomicBool>,
    /// Dropping it (with the stream) removes the inotify watch and stops its thread.
    _watcher: RecommendedWatcher,
}

impl DirWatch {
    fn start(file: PathBuf) -> Result<DirWatch> {
        let dir = file.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        let (tx, rx) = mpsc::unbounded_channel();
        let change_queued = Arc::new(AtomicBool::new(false));
        let watch_failed =
            |e| unavailable(format!("cannot watch `{}`", dir.display())).with_cause(e);
        let mut forwarder = Forwarder {
            file,
            dir: dir.clone(),
            tx: Some(tx),
            change_queued: change_queued.clone(),
        };
        let mut watcher = notify::recommended_watcher(move |event| forwarder.forward(event))
            .map_err(watch_failed)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_failed)?;
        Ok(DirWatch {
            rx,
            change_queued,
            _watcher: watcher,
        })
    }
}

impl Stream for DirWatch {
    type Item = Result<SourceEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = ready!(this.rx.poll_recv(cx));
        // Whatever was queued has been taken: the next change must be sent anew.
        this.change_queued.store(false, Ordering::SeqCst);
        Poll::Ready(item)
    }
}

/// Turns notify's events into [`SourceEvent`]s, on notify's thread.
struct Forwarder {
    file: PathBuf,
    dir: PathBuf,
    /// Dropped once the directory is gone, which ends the stream after its error.
    tx: Option<mpsc::UnboundedSender<Result<SourceEvent>>>,
    change_queued: Arc<AtomicBool>,
}

impl Forwarder {
    fn forward(&mut self, event: notify::Result<Event>) {
        let Some(tx) = &self.tx else { return };
        let what = event.map(|event| meaning(&event, &self.file, &self.dir));
        let ended = matches!(what, Ok(Meaning::DirGone));
        let item = match what {
            Err(e) => {
                Err(unavailable(format!("watching `{}` failed", self.dir.display())).with_cause(e))
            }
            Ok(Meaning::Ignore) => return,
            Ok(Meaning::Removed) if file_is_gone(&self.file) => Ok(SourceEvent::Deleted),
            Ok(Meaning::Changed | Meaning::Removed) => {
                if self.change_queued.swap(true, Ordering::SeqCst) {
                    return; // one is waiting to be taken already
                }
                Ok(SourceEvent::Changed { version: None })
            }
            Ok(Meaning::Resync) => Ok(SourceEvent::Resync),
            Ok(Meaning::DirGone) => Err(unavailable(format!(
                "`{}` was removed or renamed",
                self.dir.display()
            ))),
        };
        let _ = tx.send(item);
        if ended {
            self.tx = None;
        }
    }
}

fn file_is_gone(file: &Path) -> bool {
    matches!(fs::metadata(file), Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory))
}

/// What an event in the directory means for the file.
#[derive(Debug, PartialEq, Eq)]
enum Meaning {
    Ignore,
    /// Something in the directory changed: re-read and compare.
    Changed,
    /// The file's own entry was removed or renamed away: deleted, unless it is back already.
    Removed,
    /// Events were lost.
    Resync,
    /// The directory itself went away: this watch will never report again.
    DirGone,
}

fn meaning(event: &Event, file: &Path, dir: &Path) -> Meaning {
    if event.need_rescan() {
        return Meaning::Resync;
    }
    let names = |p: &Path| event.paths.iter().any(|q| q == p);
    let removal = matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
    );
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Meaning::Changed,
        // Opens and reads, our own included: reacting to them would loop.
        EventKind::Access(_) => Meaning::Ignore,
        _ if removal && names(dir) => Meaning::DirGone,
        _ if removal && names(file) => Meaning::Removed,
        EventKind::Modify(ModifyKind::Data(_)) if CLOSE_AFTER_WRITE => Meaning::Ignore,
        // Creations, renames (the kubelet's `..data` swap), metadata, removal of other entries:
        // anything may have moved the file's target, so every other event is a change.
        _ => Meaning::Changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_mean_what_the_engine_needs() {
        use Meaning::*;
        use notify::event::{CreateKind, DataChange, Flag, RemoveKind};
        let (file, dir) = (Path::new("/v/token"), Path::new("/v"));
        let check = |kind: EventKind, path: &str, expected: Meaning| {
            let event = Event::new(kind).add_path(PathBuf::from(path));
            assert_eq!(meaning(&event, file, dir), expected, "{kind:?} {path}");
        };
        let renamed = |mode| EventKind::Modify(ModifyKind::Name(mode));
        let (removed, closed) = (
            EventKind::Remove(RemoveKind::Any),
            AccessKind::Close(AccessMode::Write),
        );
        check(renamed(RenameMode::To), "/v/..data", Changed);
        check(EventKind::Create(CreateKind::Any), "/v/..data_tmp", Changed);
        check(removed, "/v/..2026_11_26", Changed);
        check(removed, "/v/token", Removed);
        check(renamed(RenameMode::From), "/v/token", Removed);
        check(removed, "/v", DirGone);
        check(renamed(RenameMode::From), "/v", DirGone);
        check(EventKind::Access(closed), "/v/token", Changed);
        check(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "/v/token",
            Ignore,
        );
        let data = if CLOSE_AFTER_WRITE { Ignore } else { Changed };
        check(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            "/v/token",
            data,
        );
        let lost = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert_eq!(meaning(&lost, file, dir), Resync);
    }

    #[test]
    fn paths_are_normalized_and_checked() {
        let path =
            |s: &str, source: &FileSource| source.resolve(&SecretRef::new("file", s).unwrap());
        let any = FileSource::new();
        assert_eq!(path("/a//b/./c", &any).unwrap(), Path::new("/a/b/c"));
        assert!(path("/a/..data/c", &any).is_ok());
        for bad in ["/a/../c", "a/b", "/", "/a/b/..", "/a\0b"] {
            let e = path(bad, &any).unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{bad}");
        }
        let rooted = FileSource::rooted("/run/secrets");
        assert!(path("/run/secrets/app/token", &rooted).is_ok());
        assert!(path("/run/secrets-other/token", &rooted).is_err());
        assert!(path("/run/secrets/../x", &rooted).is_err());
    }
}
