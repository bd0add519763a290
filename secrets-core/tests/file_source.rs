//! `FileSource` on a real filesystem: plain files, the kubelet's `..data` layout and its atomic
//! swaps, version probes, path checks, and the directory watch (alone and through the engine).
#![cfg(unix)]
// `allow-unwrap-in-tests` covers `#[test]` functions only, not the helpers they share.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use keyrack_core::sources::FileSource;
use keyrack_core::{
    Capabilities, ErrorKind, Lease, Result, RotationEvent, Secret, SecretRef, SecretSource,
    Secrets, SourceEvent, Version,
};
use tokio::sync::Notify;

/// A directory laid out as the kubelet mounts a Secret volume:
/// `..<generation>/<name>` (files), `..data -> ..<generation>`, `<name> -> ..data/<name>`.
struct Volume {
    dir: tempfile::TempDir,
    current: String,
    generations: u32,
}

impl Volume {
    fn new(files: &[(&str, &[u8])]) -> Volume {
        let mut volume = Volume {
            dir: tempfile::tempdir().unwrap(),
            current: String::new(),
            generations: 0,
        };
        volume.current = volume.write_generation(files);
        symlink(&volume.current, volume.dir.path().join("..data")).unwrap();
        for (name, _) in files {
            symlink(format!("..data/{name}"), volume.path(name)).unwrap();
        }
        volume
    }

    fn write_generation(&mut self, files: &[(&str, &[u8])]) -> String {
        self.generations += 1;
        let generation = format!("..2026_11_26_15_24_48.{:09}", self.generations);
        let dir = self.dir.path().join(&generation);
        fs::create_dir(&dir).unwrap();
        for (name, content) in files {
            fs::write(dir.join(name), content).unwrap();
        }
        generation
    }

    /// The kubelet's update: write a new generation, point `..data_tmp` at it, rename that over
    /// `..data`, remove the old generation. Returns the new generation's name.
    fn swap(&mut self, files: &[(&str, &[u8])]) -> String {
        let generation = self.write_generation(files);
        let tmp = self.dir.path().join("..data_tmp");
        symlink(&generation, &tmp).unwrap();
        fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
        fs::remove_dir_all(self.dir.path().join(&self.current)).unwrap();
        self.current = generation.clone();
        generation
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn reference(path: &Path) -> SecretRef {
    SecretRef::new("file", path.to_str().unwrap()).unwrap()
}

fn version(v: &str) -> Option<Version> {
    Some(Version::from(v))
}

/// Waits for `fut`, failing the test after 10 s (a guard, not a wait: nothing here sleeps).
async fn guard<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("nothing happened within 10 s")
}

/// The next event, which must not be an error.
async fn next_event(events: &mut BoxStream<'static, Result<SourceEvent>>) -> SourceEvent {
    guard(events.next())
        .await
        .expect("the watch ended")
        .expect("the watch failed")
}

fn kind_of<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.unwrap_err().kind().clone()
}

#[tokio::test]
async fn reads_a_plain_file_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("password");
    fs::write(&path, "hunter2").unwrap();
    let secret = FileSource::new().fetch(&reference(&path)).await.unwrap();
    assert_eq!(secret.expose_str().unwrap(), "hunter2");
    let v = secret.version().unwrap().as_str();
    let meta = fs::metadata(&path).unwrap();
    assert!(v.contains(&format!("-i{}-", meta.ino())), "{v}");
    assert!(!v.contains("hunter2"));
    assert_eq!(secret.metadata().created_at, Some(meta.modified().unwrap()));
}

#[tokio::test]
async fn reads_binary_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.der");
    let bytes = [0u8, 0xff, 0x80, b'\n', 0];
    fs::write(&path, bytes).unwrap();
    let source = FileSource::new();
    assert!(source.capabilities().binary);
    let secret = source.fetch(&reference(&path)).await.unwrap();
    assert_eq!(secret.expose_bytes(), bytes);
    assert_eq!(kind_of(secret.expose_str()), ErrorKind::InvalidValue);
}

#[tokio::test]
async fn reads_through_the_kubelet_layout_and_versions_by_generation() {
    let mut volume = Volume::new(&[("token", b"one"), ("ca.crt", b"ca")]);
    let first = volume.current.clone();
    let (source, r) = (FileSource::new(), reference(&volume.path("token")));
    let secret = source.fetch(&r).await.unwrap();
    assert_eq!(secret.expose_str().unwrap(), "one");
    assert_eq!(secret.version().cloned(), version(&first));

    let second = volume.swap(&[("token", b"two"), ("ca.crt", b"ca")]);
    assert_ne!(first, second);
    assert_eq!(source.version(&r).await.unwrap(), version(&second));
    let secret = source.fetch(&r).await.unwrap();
    assert_eq!(secret.expose_str().unwrap(), "two");
    assert_eq!(secret.version().cloned(), version(&second));

    // Read through `..data` directly: an ordinary path (`..data` is not `..`).
    let direct = source
        .fetch(&reference(&volume.path("..data/token")))
        .await
        .unwrap();
    assert_eq!(direct.expose_str().unwrap(), "two");
}

#[tokio::test]
async fn an_in_place_rewrite_gets_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let (source, r) = (FileSource::new(), reference(&path));
    fs::write(&path, "aaaa").unwrap();
    let (before, inode) = (
        source.version(&r).await.unwrap(),
        fs::metadata(&path).unwrap().ino(),
    );
    fs::write(&path, "bbbbbbbb").unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().ino(),
        inode,
        "rewritten in place"
    );
    let after = source.version(&r).await.unwrap();
    assert_ne!(before, after);
    let secret = source.fetch(&r).await.unwrap();
    assert_eq!(
        (secret.expose_str().unwrap(), secret.version().cloned()),
        ("bbbbbbbb", after)
    );
}

#[tokio::test]
async fn version_probe_does_not_read_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    fs::write(&path, "s3cr3t").unwrap();
    let (source, r) = (FileSource::new(), reference(&path));
    assert!(source.capabilities().version_probe);
    // An access time far in the past: any read moves it (under `relatime` too).
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let file = File::options().write(true).open(&path).unwrap();
    file.set_times(FileTimes::new().set_accessed(long_ago))
        .unwrap();
    let probed = source.version(&r).await.unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().accessed().unwrap(),
        long_ago,
        "version() read the file"
    );
    assert_eq!(source.fetch(&r).await.unwrap().version().cloned(), probed);

    // Where permissions apply (not to root), the probe works on a file it may not read.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    if fs::read(&path).is_err() {
        assert_eq!(source.version(&r).await.unwrap(), probed);
        assert_eq!(kind_of(source.fetch(&r).await), ErrorKind::PermissionDenied);
    }
}

#[tokio::test]
async fn missing_files_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let source = FileSource::new();
    for missing in ["absent", "no-dir/absent"] {
        let r = reference(&dir.path().join(missing));
        let e = source.fetch(&r).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::NotFound);
        assert!(e.to_string().contains("absent"), "{e}");
        assert_eq!(kind_of(source.version(&r).await), ErrorKind::NotFound);
    }
    // A dangling kubelet link (the key was removed from the Secret) is missing too.
    let volume = Volume::new(&[("token", b"x")]);
    symlink("..data/gone", volume.path("gone")).unwrap();
    assert_eq!(
        kind_of(source.fetch(&reference(&volume.path("gone"))).await),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn rejects_bad_paths_and_unsupported_queries() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("token"), "x").unwrap();
    let source = FileSource::new();
    let fetch = |r: SecretRef| {
        let source = source.clone();
        async move { kind_of(source.fetch(&r).await) }
    };
    let base = dir.path().to_str().unwrap();
    assert_eq!(
        fetch(SecretRef::new("file", &format!("{base}/../etc/passwd")).unwrap()).await,
        ErrorKind::InvalidRef
    );
    assert_eq!(
        fetch(SecretRef::new("file", "relative/token").unwrap()).await,
        ErrorKind::InvalidRef
    );
    assert_eq!(
        fetch(SecretRef::new("file", base).unwrap()).await,
        ErrorKind::InvalidRef
    );
    let token = format!("file://{base}/token");
    for query in ["?version=1", "?stage=AWSCURRENT", "?mode=raw"] {
        let r = SecretRef::parse(&format!("{token}{query}")).unwrap();
        assert_eq!(fetch(r.clone()).await, ErrorKind::Unsupported, "{query}");
        assert_eq!(kind_of(source.version(&r).await), ErrorKind::Unsupported);
    }
    assert_eq!(
        kind_of(
            source
                .renew(
                    &Lease::new("l", Duration::from_secs(1), true, SystemTime::UNIX_EPOCH),
                    None
                )
                .await
        ),
        ErrorKind::Unsupported
    );
}

#[tokio::test]
async fn rooted_reads_only_under_its_directory() {
    let parent = tempfile::tempdir().unwrap();
    let (inside, beside) = (
        parent.path().join("secrets"),
        parent.path().join("secrets-other"),
    );
    for dir in [&inside, &beside] {
        fs::create_dir(dir).unwrap();
        fs::write(dir.join("token"), "x").unwrap();
    }
    let source = FileSource::rooted(&inside);
    assert!(
        source
            .fetch(&reference(&inside.join("token")))
            .await
            .is_ok()
    );
    for outside in [
        beside.join("token"),
        parent.path().join("secrets/../secrets-other/token"),
    ] {
        let e = source.fetch(&reference(&outside)).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{}", outside.display());
    }
    assert_eq!(
        kind_of(source.fetch(&reference(Path::new("/etc/hostname"))).await),
        ErrorKind::InvalidRef
    );
}

#[tokio::test]
async fn the_watch_survives_kubelet_swaps() {
    let mut volume = Volume::new(&[("token", b"one")]);
    let source = FileSource::new();
    assert!(source.capabilities().watch);
    let mut events = source
        .watch(&reference(&volume.path("token")))
        .expect("files are watched");

    volume.swap(&[("token", b"two")]);
    assert_eq!(
        next_event(&mut events).await,
        SourceEvent::Changed { version: None }
    );
    volume.swap(&[("token", b"three")]);
    assert_eq!(
        next_event(&mut events).await,
        SourceEvent::Changed { version: None }
    );

    // Events carry no names, so the change above could be a late one from the first swap. The
    // removal of the file's own link cannot: only a watch alive after both swaps reports it.
    fs::remove_file(volume.path("token")).unwrap();
    loop {
        match next_event(&mut events).await {
            SourceEvent::Deleted => break,
            SourceEvent::Changed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_watch_sees_a_plain_file_rewritten_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    fs::write(&path, "one").unwrap();
    let mut events = FileSource::new().watch(&reference(&path)).unwrap();
    fs::write(&path, "two").unwrap();
    assert_eq!(
        next_event(&mut events).await,
        SourceEvent::Changed { version: None }
    );
}

#[tokio::test]
async fn an_unwatchable_directory_yields_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference(&dir.path().join("missing-dir/token"));
    let mut events = FileSource::new().watch(&r).expect("a stream that says why");
    assert_eq!(
        kind_of(guard(events.next()).await.unwrap()),
        ErrorKind::Unavailable
    );
    assert!(guard(events.next()).await.is_none());
}

/// A `FileSource` that tells the test when the engine has opened its watch: the engine does it in
/// a background task, and a swap before that would only be noticed at the next routine check.
#[derive(Debug)]
struct Announced {
    inner: FileSource,
    watching: Arc<Notify>,
}

#[keyrack_core::async_trait]
impl SecretSource for Announced {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        self.inner.fetch(r).await
    }
    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        self.inner.fetch_many(refs).await
    }
    async fn version(&self, r: &SecretRef) -> Result<Option<Version>> {
        self.inner.version(r).await
    }
    async fn renew(&self, lease: &Lease, increment: Option<Duration>) -> Result<Lease> {
        self.inner.renew(lease, increment).await
    }
    async fn revoke(&self, lease: &Lease) -> Result<()> {
        self.inner.revoke(lease).await
    }
    fn watch(&self, r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        let stream = self.inner.watch(r);
        self.watching.notify_one();
        stream
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_rotates_when_the_kubelet_swaps() {
    let mut volume = Volume::new(&[("token", b"first")]);
    let first = volume.current.clone();
    let watching = Arc::new(Notify::new());
    let source = Announced {
        inner: FileSource::new(),
        watching: watching.clone(),
    };
    let secrets = Secrets::builder().source("file", source).build().unwrap();
    let uri = format!("file://{}", volume.path("token").display());
    let handle = secrets.handle(uri.as_str()).await.unwrap();
    assert_eq!(handle.current().version().cloned(), version(&first));
    let mut events = handle.subscribe();
    guard(watching.notified()).await;

    let second = volume.swap(&[("token", b"second")]);
    match guard(events.recv()).await {
        Some(RotationEvent::Rotated { old, new, .. }) => {
            assert_eq!((old, new), (version(&first), version(&second)));
        }
        other => panic!("expected a rotation, got {other:?}"),
    }
    assert_eq!(handle.current().expose_str().unwrap(), "second");
    secrets.shutdown().await;
}
