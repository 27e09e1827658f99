//! The scheduling behaviour the node relies on from its (vendored) glommio executor.

use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use std::time::{Duration, Instant};

/// A task queue with a latency target arms a short preemption timer on every pass. When that
/// timer had already fired by the time the executor came to run its queues, the executor used to
/// conclude that nothing was runnable and go to sleep with the task still queued; with no timer
/// or I/O left to wake it (a node draining on SIGTERM), it slept for good.
#[test]
fn a_task_that_only_yields_keeps_running_under_a_latency_queue() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("sg-runtime-test")
        .spawn(move || async move {
            let queue = glommio::executor().create_task_queue(
                Shares::Static(1000),
                Latency::Matters(Duration::from_micros(100)),
                "latency",
            );
            let yields = glommio::spawn_local_into(
                async {
                    let started = Instant::now();
                    let mut yields = 0u64;
                    while started.elapsed() < Duration::from_secs(3) {
                        futures_lite::future::yield_now().await;
                        yields += 1;
                    }
                    yields
                },
                queue,
            )
            .expect("spawn into the queue")
            .await;
            let _ = done_tx.send(yields);
        })
        .expect("start an executor");
    let yields = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the yielding task finishes: an executor must not sleep while a task is runnable");
    assert!(yields > 0);
    executor.join().expect("executor");
}
