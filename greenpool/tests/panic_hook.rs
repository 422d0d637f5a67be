//! The pool's panic hook only adds: the hook that was there before still
//! sees every panic, including one a job catches itself. (A test binary of
//! its own: it sets the process-wide hook.)

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use greenpool::TaskPool;

#[tokio::test]
async fn the_previous_hook_still_sees_panics_inside_jobs() {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    std::panic::set_hook(Box::new(move |_| {
        s.fetch_add(1, Ordering::SeqCst);
    }));
    // Capture on (the default) chains the pool's hook to the one above.
    let p = TaskPool::builder().limit(1).build().unwrap();
    p.start().unwrap();

    // A job that catches its own panic: reported as without the pool.
    let caught = p
        .spawn(async { std::panic::catch_unwind(|| panic!("handled by the job")).is_err() })
        .await
        .unwrap();
    assert_eq!(caught.await.completed(), Some(true));
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the previous hook saw it");

    // A panic the pool catches: seen too, and captured with its location.
    let h = p
        .spawn(async {
            if seen_nothing() {
                panic!("job panic");
            }
        })
        .await
        .unwrap();
    let outcome = h.await;
    let info = outcome.panic_info().unwrap();
    assert_eq!(info.message(), "job panic");
    assert!(info.location().is_some_and(|l| l.contains("panic_hook.rs")));
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    p.stop().await.unwrap();
}

fn seen_nothing() -> bool {
    true
}
