//! Live answers (SPEC sections 2, 3 and 6): an answer lives in DynamoDB while it
//! streams, so it can be stopped from any client, resumed after a reload, and
//! settled when its function dies. DynamoDB is the only shared state: functions
//! learn of a stop by reading the conversation item, and resumed readers follow
//! the checkpoints (`store::live` has the records).
//!
//! - [`Checkpointer`] runs beside the relay of a generating function: every
//!   `CHECKPOINT_INTERVAL_MS` it writes the text since its last checkpoint (or,
//!   after a quarter of `LIVE_STALE_AFTER_MS` without text, an empty heartbeat)
//!   and reads the conversation item for a stop, both at once.
//! - [`assess`] tells a live answer from a dead one: dead when nothing was
//!   checkpointed for `LIVE_STALE_AFTER_MS`, or past its deadline. [`settle`]
//!   stores a dead answer's checkpointed text `incomplete`.
//! - [`claim`] takes the conversation's live slot for a new answer (settling a
//!   dead one first); [`release`] gives it back.
//! - [`follow`] streams a live answer to a resumed reader.
//!
//! The routes that stop and resume an answer are `handlers::stop` and
//! `handlers::resume`.

mod checkpointer;
mod follow;
mod settle;
mod slot;

pub use checkpointer::Checkpointer;
pub use follow::follow;
pub use settle::{assess, settle, with_live_answer, Liveness};
pub use slot::{claim, release};
