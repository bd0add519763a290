//! No heap block is freed while it still holds a secret: an allocator that, while armed, looks
//! through every block handed back for a marker that only the secret contains.
#![allow(unsafe_code)] // a test-only global allocator
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use keyrack_core::SecretValue;

const NEEDLE: &[u8] = b"Zq8-needle-7Kp";

static ARMED: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicUsize = AtomicUsize::new(0);
/// One armed test at a time (the allocator is process-wide).
static ONE: Mutex<()> = Mutex::new(());

struct Watchful;

// SAFETY: every call is forwarded to the system allocator unchanged; the extra work only reads
// the block being freed, which is still valid until the forwarded `dealloc`.
unsafe impl GlobalAlloc for Watchful {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::Relaxed) {
            // SAFETY: `ptr` points to `layout.size()` bytes owned by the caller until freed.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if block.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
                FOUND.fetch_add(1, Ordering::Relaxed);
            }
        }
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A realloc that moves leaves the old block behind: check it like a free.
        if ARMED.load(Ordering::Relaxed) {
            // SAFETY: as in `dealloc`; the block is valid until the forwarded call.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if block.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
                FOUND.fetch_add(1, Ordering::Relaxed);
            }
        }
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Watchful = Watchful;

/// Blocks freed unwiped while running `f` (which must drop every secret it makes).
fn unwiped_blocks(f: impl FnOnce()) -> usize {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    FOUND.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    f();
    ARMED.store(false, Ordering::SeqCst);
    FOUND.load(Ordering::SeqCst)
}

fn needle() -> String {
    String::from_utf8(NEEDLE.to_vec()).unwrap()
}

#[test]
fn a_selected_field_leaves_no_copy_behind() {
    // Escapes in the value make a JSON parser unescape into a scratch buffer.
    let object = format!(r#"{{"user":"u","password":"{}\"\\n\u00e9"}}"#, needle());
    let found = unwiped_blocks(|| {
        let value = SecretValue::from_string(object);
        let field = value.field("password").unwrap();
        assert!(field.expose_bytes().starts_with(NEEDLE));
        drop(field);
        drop(value);
    });
    assert_eq!(found, 0, "{found} freed blocks still held the secret");
}

#[test]
fn a_value_taken_from_a_string_with_spare_capacity_leaves_no_copy() {
    let mut text = String::with_capacity(256);
    text.push_str(&needle());
    let found = unwiped_blocks(|| {
        let value = SecretValue::from_string(text);
        drop(value);
    });
    assert_eq!(found, 0);
}

#[test]
fn the_detector_detects() {
    let found = unwiped_blocks(|| {
        let plain = needle();
        drop(plain);
    });
    assert_eq!(
        found, 1,
        "the allocator hook saw nothing: the test proves nothing"
    );
}
