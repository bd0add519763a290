//! [`LogCapture`]: every tracing event at TRACE, as text, for tests that look for leaked values.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::subscriber::DefaultGuard;

/// Captures the formatted tracing output of the current thread (TRACE and up) while it lives.
/// Use it on a current-thread runtime, so that every task logs on the capturing thread.
pub struct LogCapture {
    buf: Buffer,
    _guard: DefaultGuard,
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Start capturing.
    pub fn start() -> Self {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        LogCapture {
            buf,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock()).into_owned()
    }

    /// Forget what was logged so far.
    pub fn clear(&self) {
        self.buf.lock().clear();
    }
}

impl std::fmt::Debug for LogCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogCapture")
            .field("bytes", &self.buf.lock().len())
            .finish()
    }
}
