//! Buffers for bytes that hold Secret data: the watch stream's lines (base64 data, and in
//! `kubectl apply`'s last-applied annotation the whole manifest) and the body of a GET.
//!
//! Nothing they let go of is left in memory: a line handed out is wiped once it has been parsed,
//! bytes moved down are wiped where they were, growing wipes the allocation left behind (a `Vec`
//! growing by itself would free it unwiped), and dropping wipes the rest. The chunks the HTTP
//! client hands over are wiped after they are copied in when this crate holds the only reference
//! to them ([`wipe_chunk`]); the HTTP client's and TLS library's own buffers are not reachable
//! from here.

use bytes::Bytes;
use zeroize::Zeroize;

/// A byte buffer that wipes what it lets go of.
pub(super) struct WipingBuf {
    buf: Vec<u8>,
}

impl WipingBuf {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        WipingBuf {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Append `bytes`, growing into a new allocation and wiping the old one when needed.
    pub(super) fn push(&mut self, bytes: &[u8]) {
        let needed = self.buf.len() + bytes.len();
        if needed > self.buf.capacity() {
            let mut grown = Vec::with_capacity(needed.max(2 * self.buf.capacity()));
            grown.extend_from_slice(&self.buf);
            self.buf.zeroize();
            self.buf = grown;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Remove the first `n` bytes, wiping what the move down does not overwrite.
    pub(super) fn consume(&mut self, n: usize) {
        let rest = self.buf.len() - n;
        self.buf.copy_within(n.., 0);
        self.buf[rest..].zeroize();
        self.buf.truncate(rest);
    }

    /// Wipe everything (the whole allocation, spare capacity included).
    pub(super) fn clear(&mut self) {
        self.buf.zeroize();
    }
}

impl std::ops::Deref for WipingBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for WipingBuf {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

/// Wipe a chunk the HTTP client handed over, once copied, if this is its only reference (a
/// chunk sharing memory with the client's read buffer cannot be reached).
pub(super) fn wipe_chunk(chunk: Bytes) {
    if let Ok(mut owned) = chunk.try_into_mut() {
        owned[..].zeroize();
    }
}

/// Bytes of the watch stream not yet ended by `\n`.
pub(super) struct Lines {
    buf: WipingBuf,
    /// How far the buffer was searched for `\n`: only bytes after it can end a line.
    searched: usize,
}

impl Lines {
    pub(super) fn new() -> Self {
        Lines {
            buf: WipingBuf::with_capacity(0),
            searched: 0,
        }
    }

    /// Append a chunk of the stream.
    pub(super) fn push(&mut self, chunk: &[u8]) {
        self.buf.push(chunk);
    }

    /// Hand the next complete line (without its `\n`) to `f`, in place, then wipe it.
    pub(super) fn next_line<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let at = self.buf[self.searched..].iter().position(|&b| b == b'\n');
        let Some(at) = at else {
            self.searched = self.buf.len();
            return None;
        };
        let end = self.searched + at;
        let out = f(&self.buf[..end]);
        self.buf.consume(end + 1);
        self.searched = 0;
        Some(out)
    }

    /// Bytes waiting for the end of their line.
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Wipe everything.
    pub(super) fn clear(&mut self) {
        self.buf.clear();
        self.searched = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Lines {
        /// The first `n` bytes of the buffer's allocation, in use or not.
        #[allow(unsafe_code)]
        fn allocation(&self, n: usize) -> &[u8] {
            let buf = &self.buf.buf;
            assert!(n <= buf.capacity());
            // SAFETY: within the allocation, and only bytes the test wrote through `push`
            // (never reallocated: the first push reserved them all), so initialized; nothing
            // writes to the buffer while the slice lives.
            unsafe { std::slice::from_raw_parts(buf.as_ptr(), n) }
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn lines_come_out_whole_across_chunks() {
        let mut lines = Lines::new();
        lines.push(b"{\"a\":");
        assert_eq!(lines.next_line(|l| l.to_vec()), None);
        lines.push(b"1}\n{\"b\"");
        assert_eq!(lines.next_line(|l| l.to_vec()), Some(b"{\"a\":1}".to_vec()));
        assert_eq!(lines.next_line(|l| l.to_vec()), None);
        lines.push(b":2}\n\n");
        assert_eq!(lines.next_line(|l| l.to_vec()), Some(b"{\"b\":2}".to_vec()));
        assert_eq!(lines.next_line(|l| l.to_vec()), Some(Vec::new()));
        assert_eq!(lines.len(), 0);
    }

    /// Issue #17: a line handed out, and everything cleared, leaves no copy of the Secret's data
    /// in the buffer's memory.
    #[test]
    fn what_is_let_go_is_wiped() {
        // The stream's MODIFIED line (line 3 of the assembled stream fixture) with other data,
        // then the start of a shorter line: what a buffer moves down does not cover the first.
        let first = b"{\"type\":\"MODIFIED\",\"object\":{\"kind\":\"Secret\",\"metadata\":\
                      {\"name\":\"db-creds\",\"resourceVersion\":\"48290\"},\
                      \"data\":{\"password\":\"UzNDUkVULW9uZQ==\"}}}\n";
        let second = b"{\"data\":{\"p\":\"UzNDUkVULXR3bw==\"}}";
        let mut lines = Lines::new();
        lines.push(&[first.as_slice(), second.as_slice()].concat());
        let written = first.len() + second.len();
        assert!(lines.next_line(|l| l.len()).is_some());
        assert!(
            !contains(lines.allocation(written), b"UzNDUkVULW9uZQ=="),
            "the line handed out is still in the buffer's memory"
        );
        assert!(contains(lines.allocation(written), b"UzNDUkVULXR3bw=="));
        lines.clear();
        assert!(
            !contains(lines.allocation(written), b"UzNDUkVULXR3bw=="),
            "cleared bytes are still in the buffer's memory"
        );
    }
}
