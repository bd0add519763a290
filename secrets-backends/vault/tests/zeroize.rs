//! #17: what holds a value or a token is wiped before it is freed. An allocator looks through
//! every block freed on the client's thread for markers only the secrets contain, while the fake
//! Vault answers from another thread (its own copies are not counted). Compared with plain
//! reqwest making the same requests from static data: the source may leave behind no more
//! unwiped copies than the transport (hyper's read and write buffers) itself does.
#![allow(unsafe_code)] // a test-only global allocator
#![allow(clippy::unwrap_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::fake::{FakeVault, ROLE_ID};
use common::r;
use keyrack_core::{ManualClock, SecretSource, SecretValue};
use keyrack_vault::{Auth, VaultBuilder};

const VALUE: &str = "Vq7-value-needle-3Xk";
const TOKEN: &str = "s.Tk4-token-needle-9Lp";
const SECRET_ID: &str = "Sd2-secret-id-needle-5Rw";
const NEEDLES: [&str; 3] = [VALUE, TOKEN, SECRET_ID];

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}
static FOUND: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
/// One armed run at a time.
static ONE: Mutex<()> = Mutex::new(());

struct Watchful;

fn armed() -> bool {
    ARMED.try_with(Cell::get).unwrap_or(false)
}

/// Count the needles in a block about to be freed, then wipe it: memory handed out again must
/// not bring an old copy back to be counted twice.
fn check_and_wipe(ptr: *mut u8, size: usize) {
    // SAFETY: `ptr` points to `size` bytes owned by the caller until they are freed, which
    // happens only after this returns.
    let block = unsafe { std::slice::from_raw_parts_mut(ptr, size) };
    for (i, needle) in NEEDLES.iter().enumerate() {
        if block.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            FOUND[i].fetch_add(1, Ordering::Relaxed);
        }
    }
    block.fill(0);
}

// SAFETY: every call is forwarded to the system allocator; while armed, a block is read and
// zeroed before it is freed (still valid then), and a reallocation is an allocation, a copy of
// the old contents and a free, which is what `realloc` promises.
unsafe impl GlobalAlloc for Watchful {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if armed() {
            check_and_wipe(ptr, layout.size());
        }
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !armed() {
            // SAFETY: forwarded as is.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees `new_size` is valid for `layout.align()`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a fresh block of the new layout.
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the copied length and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            check_and_wipe(ptr, layout.size());
            // SAFETY: the old block, freed once.
            unsafe { System.dealloc(ptr, layout) };
        }
        new
    }
}

#[global_allocator]
static ALLOC: Watchful = Watchful;

/// Blocks freed unwiped on this thread, per needle, while `work` runs on a runtime of this
/// thread that is dropped (with every connection) before counting ends.
fn unwiped<F: std::future::Future<Output = ()>>(work: impl FnOnce() -> F) -> [usize; 3] {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for f in &FOUND {
        f.store(0, Ordering::SeqCst);
    }
    ARMED.set(true);
    runtime.block_on(work());
    drop(runtime);
    ARMED.set(false);
    [0, 1, 2].map(|i| FOUND[i].load(Ordering::SeqCst))
}

/// The fake Vault, on a thread of its own; its URL.
fn fake_vault() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let vault = FakeVault::start(3600).await;
            *vault.behaviour.value.lock().unwrap() = VALUE.into();
            *vault.behaviour.fixed_token.lock().unwrap() = Some(TOKEN.into());
            *vault.behaviour.secret_id.lock().unwrap() = SECRET_ID.into();
            // A connection per answer: the transport's read buffers then hold one answer each,
            // the same in both runs, whatever they held before.
            vault
                .behaviour
                .close_connections
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tx.send(vault.url()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

#[test]
fn the_source_leaves_no_more_copies_than_the_transport() {
    let url = fake_vault();

    // The transport alone: the same three requests from static bytes.
    let transport = unwiped(|| {
        let url = url.clone();
        async move {
            let client = common::test_client();
            let login = format!(r#"{{"role_id":"{ROLE_ID}","secret_id":"{SECRET_ID}"}}"#);
            let login: &'static str = Box::leak(login.into_boxed_str());
            let sends = [
                client
                    .post(format!("{url}/v1/auth/approle/login"))
                    .body(login),
                client
                    .get(format!("{url}/v1/sys/internal/ui/mounts/secret/app"))
                    .header(
                        "x-vault-token",
                        reqwest::header::HeaderValue::from_static(TOKEN),
                    ),
                client.get(format!("{url}/v1/secret/data/app")).header(
                    "x-vault-token",
                    reqwest::header::HeaderValue::from_static(TOKEN),
                ),
            ];
            for send in sends {
                let mut response = send.send().await.unwrap();
                assert!(response.status().is_success());
                while response.chunk().await.unwrap().is_some() {}
            }
        }
    });

    let source = unwiped(|| {
        let url = url.clone();
        async move {
            let source = VaultBuilder::new()
                .with_address(url)
                .with_auth(Auth::approle(
                    ROLE_ID,
                    SecretValue::copy_from_slice(SECRET_ID.as_bytes()),
                ))
                .with_clock(ManualClock::new())
                // The transport baseline sends no revocation: compare like with like.
                .revoke_token_on_shutdown(false)
                .build()
                .unwrap();
            let secret = source.fetch(&r("vault://secret/app")).await.unwrap();
            assert!(
                secret
                    .expose_bytes()
                    .windows(VALUE.len())
                    .any(|w| w == VALUE.as_bytes())
            );
            drop(secret);
            source.shutdown().await;
            drop(source);
        }
    });
    eprintln!(
        "unwiped blocks (value, token, secret id): source {source:?}, transport {transport:?}"
    );
    for (i, what) in ["value", "token", "secret id"].iter().enumerate() {
        assert!(
            source[i] <= transport[i],
            "{what}: {} unwiped blocks freed by the source, {} by the transport alone \
             (value, token, secret id: {source:?} vs {transport:?})",
            source[i],
            transport[i]
        );
    }
}

#[test]
fn the_detector_detects() {
    let found = unwiped(|| async {
        let plain = String::from(TOKEN);
        drop(plain);
    });
    assert_eq!(
        found,
        [0, 1, 0],
        "the allocator hook saw nothing: the test proves nothing"
    );
}
