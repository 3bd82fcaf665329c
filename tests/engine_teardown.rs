//! The engine recovers from a panicking root future, and aborted tasks can be joined.

use std::time::Duration;

use muxado::engine::{self, JoinError};

#[test]
fn panic_in_root_future_tears_the_core_down() {
    // Without io_uring this test cannot run: say so, rather than fail on a
    // misleading assertion below.
    engine::probe().expect("io_uring unavailable: this engine test cannot run");
    let r = std::panic::catch_unwind(|| {
        let _ = engine::block_on(async {
            engine::spawn(engine::sleep(Duration::from_secs(3600)));
            panic!("root panics");
        });
    });
    assert!(r.is_err(), "the root's panic propagates");
    assert!(
        engine::current_core().is_none(),
        "the core is still installed"
    );
    let again = engine::block_on(async { 5 });
    assert_eq!(again.expect("a new core starts on this thread"), 5);
}

#[test]
fn joining_an_aborted_task_reports_cancelled() {
    let r = engine::block_on(async {
        let h = engine::spawn(engine::sleep(Duration::from_secs(3600)));
        engine::yield_now().await;
        h.abort();
        engine::timeout(Duration::from_secs(5), h.join()).await
    })
    .unwrap();
    match r {
        Ok(Err(JoinError::Cancelled)) => {}
        other => panic!("expected a cancelled JoinError, got {other:?}"),
    }
}

#[test]
fn awaiting_an_aborted_task_completes() {
    // `.await` gives the task's output; an aborted task has none, so awaiting it panics with the
    // cancelled JoinError instead of hanging.
    let r = engine::block_on(async {
        let h = engine::spawn(engine::sleep(Duration::from_secs(3600)));
        engine::yield_now().await;
        h.abort();
        let joiner = engine::spawn(async move {
            h.await;
        });
        engine::timeout(Duration::from_secs(5), joiner.join()).await
    })
    .unwrap();
    match r {
        Ok(Err(JoinError::Panicked(msg))) => assert!(msg.contains("cancelled"), "{msg}"),
        other => panic!("expected the joiner to fail with a cancelled task, got {other:?}"),
    }
}
