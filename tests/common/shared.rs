//! Fixtures built once per test binary and shared by its tests: a value
//! (a [`super::TestEnv`] with a ready image, a running HTTP server) built
//! and kept on a tokio runtime of its own — each `#[tokio::test]` has its
//! own runtime, which ends with the test, so whatever the fixture spawns
//! (supervisors, servers, pooled connections) lives on the shared one —
//! and torn down when the process exits.
#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

/// A value built once and the runtime it lives on.
pub struct Shared<T: 'static> {
    handle: tokio::runtime::Handle,
    pub value: T,
}

type Teardown = Box<dyn FnOnce() + Send>;
static AT_EXIT: Mutex<Vec<Teardown>> = Mutex::new(Vec::new());

extern "C" fn run_at_exit() {
    let list = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for f in list {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(f));
    }
}

/// Run `f` when the process exits (after the last test, passed or not).
pub fn at_exit(f: impl FnOnce() + Send + 'static) {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: `run_at_exit` is a plain `extern "C" fn()` that catches
        // every panic.
        unsafe {
            libc::atexit(run_at_exit);
        }
    });
    AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(f));
}

impl<T: Send + Sync + 'static> Shared<T> {
    /// The fixture in `cell`, built by `build` on a runtime of its own the
    /// first time it is asked for; `teardown` runs on that runtime (as
    /// blocking work) when the process exits.
    pub async fn get<F, Fut>(
        cell: &'static OnceLock<Shared<T>>,
        build: F,
        teardown: fn(&T),
    ) -> &'static Shared<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        if let Some(s) = cell.get() {
            return s;
        }
        let shared = tokio::task::block_in_place(|| {
            cell.get_or_init(|| {
                let (htx, hrx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(4)
                        .enable_all()
                        .build()
                        .expect("shared runtime");
                    let _ = htx.send(rt.handle().clone());
                    rt.block_on(std::future::pending::<()>());
                });
                let handle = hrx.recv().expect("shared runtime starts");
                at_exit(move || {
                    let Some(shared) = cell.get() else { return };
                    let (tx, rx) = std::sync::mpsc::channel();
                    shared.handle.spawn_blocking(move || {
                        teardown(&shared.value);
                        let _ = tx.send(());
                    });
                    let _ = rx.recv_timeout(Duration::from_secs(60));
                });
                let (vtx, vrx) = std::sync::mpsc::channel();
                let fut = build();
                handle.spawn(async move {
                    let _ = vtx.send(fut.await);
                });
                let value = vrx.recv().expect("the shared fixture is built");
                Shared { handle, value }
            })
        });
        shared
    }

    /// Run `f` on the fixture's runtime; its panic is this test's panic.
    pub async fn run<R, Fut>(&'static self, f: impl FnOnce(&'static T) -> Fut) -> R
    where
        Fut: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        match self.handle.spawn(f(&self.value)).await {
            Ok(r) => r,
            // Panicked again in the test's own thread with the message:
            // `resume_unwind` skips the panic hook, and the hook's output
            // on the shared runtime's thread lands in whichever test's
            // capture that thread inherited, so a failure said nothing.
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let msg = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                panic!("{msg}")
            }
            Err(e) => panic!("shared fixture task: {e}"),
        }
    }
}
