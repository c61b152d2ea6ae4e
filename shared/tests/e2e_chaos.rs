//! The randomized run over the local stack (`docs/reliability.md`): four users,
//! two clients each, every route at random with browsers leaving, upstream and
//! DynamoDB faults and one `send` instance killed, then the invariants. About a
//! minute here; `scripts/chaos.sh --minutes N --seed S` runs it for longer.
//! `CHAOS_SEED` replays a seed (it is printed first).
//!
//! It kills a `send` instance and loads the stack, so `scripts/test.sh` runs it
//! on its own.

mod chaos;
mod common;

use common::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_randomized_run_keeps_every_invariant() {
    let stack = Stack::get().await;
    let settings = chaos::Settings::from_env(40);
    let seed = settings.seed;
    let (report, violations) = chaos::run(stack, settings).await;
    println!("{report}");
    assert!(
        violations.is_empty(),
        "seed {seed}: {} invariant violations (replay with CHAOS_SEED={seed}):\n{}",
        violations.len(),
        violations.join("\n")
    );
}
