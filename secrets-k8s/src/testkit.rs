//! Test support: [`TokenProjector`] writes a token file the way the kubelet does, so code that
//! reads projected tokens is tested against the real on-disk dance rather than a plain file.
//!
//! The kubelet's atomic writer (pkg/volume/util/atomic_writer.go) puts each payload in a new
//! hidden timestamped directory, points a temporary symlink `..data_tmp` at it, renames that over
//! `..data` (the one atomic step), keeps `token -> ..data/token` as the user-visible name, and
//! then removes the previous directory. A reader that opened `token` before the swap keeps reading
//! the old bytes; one that opens it after sees the new ones; nobody sees half a file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

use keyrack_core::{Clock, SystemClock};

/// Writes `<dir>/<file>` as a kubelet-projected volume and replaces it on demand.
#[derive(Debug)]
pub struct TokenProjector {
    dir: PathBuf,
    file: String,
    generation: u64,
    current: Option<PathBuf>,
}

impl TokenProjector {
    /// A projector for `<dir>/<file>` (`dir` is created; nothing is written until
    /// [`project`](Self::project)). `file` may be a sub-path (`vault/token`), as a projected
    /// volume's `path` may.
    pub fn new(dir: impl Into<PathBuf>, file: impl Into<String>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(TokenProjector {
            dir,
            file: file.into(),
            generation: 0,
            current: None,
        })
    }

    /// The path readers use (`<dir>/<file>`, a symlink through `..data`).
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// How many payloads were projected so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Projects `token` with the kubelet's write, swap and clean-up steps.
    pub fn project(&mut self, token: &str) -> io::Result<()> {
        self.generation += 1;
        let since_epoch = SystemClock
            .wall()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // The kubelet names it `..2006_01_02_15_04_05.<nanos>`; uniqueness is what matters.
        let name = format!(
            "..{}.{:09}_{}",
            since_epoch.as_secs(),
            since_epoch.subsec_nanos(),
            self.generation
        );
        let payload_dir = self.dir.join(&name);
        let file = payload_dir.join(&self.file);
        // A sub-path (`serviceAccountToken.path: vault/token`) gets its directories in the payload.
        std::fs::create_dir_all(file.parent().unwrap_or(&payload_dir))?;
        std::fs::write(file, token)?;

        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp)?;
        std::fs::rename(&tmp, self.dir.join("..data"))?;

        // The user-visible name is the payload path's first component, through `..data`.
        let first = Path::new(&self.file).iter().next().unwrap_or_default();
        let visible = self.dir.join(first);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(first), &visible)?;
        }
        if let Some(old) = self.current.replace(payload_dir) {
            std::fs::remove_dir_all(old)?;
        }
        Ok(())
    }

    /// Projects `mint(n)` now and then every `every` on a background thread, `n` counting from 1,
    /// until the returned handle is stopped or dropped. The handle lists every token projected.
    pub fn rotate_every(
        mut self,
        every: Duration,
        mut mint: impl FnMut(u64) -> String + Send + 'static,
    ) -> io::Result<Rotation> {
        let history = Arc::new(Mutex::new(Vec::new()));
        let first = mint(1);
        self.project(&first)?;
        history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(first);
        let stop = Arc::new(AtomicBool::new(false));
        let path = self.path();
        let thread = {
            let (history, stop) = (history.clone(), stop.clone());
            std::thread::spawn(move || {
                // On a fixed schedule (start + n·every), so a slow `mint` does not stretch it.
                let start = SystemClock.now();
                let mut n: u32 = 1;
                loop {
                    let due = start + every * n;
                    while SystemClock.now() < due {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let token = mint(self.generation + 1);
                    if self.project(&token).is_err() {
                        return;
                    }
                    history
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(token);
                    n += 1;
                }
            })
        };
        Ok(Rotation {
            path,
            history,
            stop,
            thread: Some(thread),
        })
    }
}

/// A running [`TokenProjector::rotate_every`].
pub struct Rotation {
    path: PathBuf,
    history: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Rotation {
    /// The path readers use.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every token projected so far, oldest first.
    pub fn history(&self) -> Vec<String> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The token projected last.
    pub fn latest(&self) -> Option<String> {
        self.history().pop()
    }

    /// Stops rotating and waits for the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The history holds tokens: count them, never print them.
        f.debug_struct("Rotation")
            .field("path", &self.path)
            .field(
                "projected",
                &self.history.lock().map(|h| h.len()).unwrap_or(0),
            )
            .finish_non_exhaustive()
    }
}

impl Drop for Rotation {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A compact JWT with `claims` and a placeholder signature: for readers that decode without
/// verifying (as [`ProjectedToken`](crate::ProjectedToken) does) and peers that accept any
/// signature (moto's STS).
pub fn unsigned_jwt(claims: &serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = serde_json::to_vec(claims).unwrap_or_default();
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64.encode(claims)
    )
}
