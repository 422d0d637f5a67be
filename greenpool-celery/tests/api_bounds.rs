//! What users spawn must be spawnable: the worker's future, the client's
//! and the control handle's are `Send + 'static`, so `tokio::spawn` takes
//! them on a multi-thread runtime. A type change that breaks this fails
//! to compile here, not in a user's program.

#![cfg(any(feature = "redis", feature = "amqp"))] // the worker and client

use greenpool_celery::{Client, ShutdownHandle, TaskRegistry, Worker, WorkerConfig};

fn spawnable<T: Send + 'static>(_: &T) {}
fn shareable<T: Send + Sync + 'static>() {}

#[test]
fn the_worker_and_its_handles_can_be_spawned_and_shared() {
    shareable::<Worker>();
    shareable::<ShutdownHandle>();
    shareable::<Client>();
    let worker = Worker::new(
        WorkerConfig::new("redis://127.0.0.1:1/0").hostname("bounds@test"),
        TaskRegistry::new(),
    );
    let Ok(worker) = worker else {
        panic!("a valid configuration was refused");
    };
    // Built, never polled: only its type is checked.
    let running = worker.run();
    spawnable(&running);
    let connecting = Client::connect("redis://127.0.0.1:1/0", None);
    spawnable(&connecting);
}
