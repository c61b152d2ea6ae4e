//! The generating side of a live answer: checkpoints its text and watches for
//! a stop, beside the relay.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use aws_sdk_dynamodb::types::TransactWriteItem;
use serde_json::Value;
use tokio::time::Instant;
use tracing::warn;
use uuid::Uuid;

use crate::adapters::state::AppState;
use crate::adapters::store::{Checkpoint, SlotState, Store, StoreError};
use crate::domain::relay::{Interrupt, Watch};
use crate::foundation::time_fmt;

type Tick = Pin<Box<dyn Future<Output = TickResult> + Send>>;

struct TickResult {
    /// Bytes of text the checkpoint covered, when one was written.
    written: Option<Result<usize, StoreError>>,
    state: Result<SlotState, StoreError>,
}

/// The generating side: checkpoints the answer's text and watches for a stop.
pub struct Checkpointer {
    store: Store,
    conversation: Uuid,
    answer: Uuid,
    interval: Duration,
    heartbeat: Duration,
    text: String,
    tokens: u64,
    /// Bytes of `text` already in checkpoints.
    flushed: usize,
    seq: u32,
    last_write: Instant,
    next_tick: Instant,
    in_flight: Option<Tick>,
    interrupt: Option<Interrupt>,
}

impl Checkpointer {
    pub fn new(state: &AppState, conversation: Uuid, answer: Uuid) -> Self {
        let interval = state.config.checkpoint_interval;
        let now = Instant::now();
        Self {
            store: state.store.clone(),
            conversation,
            answer,
            interval,
            heartbeat: (state.config.live_stale_after / 4).max(interval),
            text: String::new(),
            tokens: 0,
            flushed: 0,
            seq: 0,
            // The slot's claim is the first sign of life.
            last_write: now,
            next_tick: now + interval,
            in_flight: None,
            interrupt: None,
        }
    }

    fn start_tick(&mut self) {
        let now = Instant::now();
        self.next_tick = now + self.interval;
        let pending = &self.text[self.flushed..];
        let write =
            (!pending.is_empty() || now >= self.last_write + self.heartbeat).then(|| Checkpoint {
                seq: self.seq,
                text: pending.to_owned(),
                tokens: self.tokens,
                at_ms: time_fmt::now_ms(),
                end: None,
            });
        let (store, conversation, answer) = (self.store.clone(), self.conversation, self.answer);
        self.in_flight = Some(Box::pin(async move {
            let put = async {
                match &write {
                    Some(c) => Some(
                        store
                            .put_checkpoint(conversation, answer, c)
                            .await
                            .map(|()| c.text.len()),
                    ),
                    None => None,
                }
            };
            let (written, state) = tokio::join!(put, store.slot_state(conversation, answer, true));
            TickResult { written, state }
        }));
    }

    fn apply(&mut self, result: TickResult) {
        match result.written {
            Some(Ok(len)) => {
                self.flushed += len;
                self.seq += 1;
                self.last_write = Instant::now();
            }
            // Kept: the next checkpoint carries this text under the same seq.
            Some(Err(e)) => warn!(error = %e, "checkpoint not written"),
            None => {}
        }
        match result.state {
            Ok(SlotState::Live {
                stop_requested: true,
            }) => self.interrupt = Some(Interrupt::Stop),
            Ok(SlotState::Live { .. }) => {}
            Ok(SlotState::Lost) => self.interrupt = Some(Interrupt::Lost),
            Ok(SlotState::Gone) => self.interrupt = Some(Interrupt::Gone),
            Err(e) => warn!(error = %e, "live slot not read"),
        }
    }

    /// The answer's last checkpoint: the text not yet checkpointed and the events
    /// the stream ends with, for resumed readers. Waits for a checkpoint still
    /// in flight, so the sequence stays gapless.
    pub async fn last(&mut self, end: Vec<Value>) -> Checkpoint {
        if let Some(tick) = self.in_flight.take() {
            let result = tick.await;
            self.apply(result);
        }
        Checkpoint {
            seq: self.seq,
            text: self.text[self.flushed..].to_owned(),
            tokens: self.tokens,
            at_ms: time_fmt::now_ms(),
            end: Some(end),
        }
    }

    /// Whether any checkpoint was written (or may have been: one in flight).
    pub fn has_checkpointed(&self) -> bool {
        self.seq > 0 || self.in_flight.is_some()
    }

    /// The Put of `last` for the transaction that stores the answer.
    pub fn last_put(&self, last: &Checkpoint) -> Result<TransactWriteItem, StoreError> {
        self.store
            .checkpoint_put(self.conversation, self.answer, last)
    }

    /// Nothing was stored: frees the slot and writes `last` in one transaction.
    pub async fn release_with(self, last: &Checkpoint) {
        if let Err(e) = self
            .store
            .release_slot_with(self.conversation, self.answer, last)
            .await
        {
            warn!(error = %e, "live slot not released");
        }
    }

    /// Writes `last` on its own (the answer's write failed after all).
    pub async fn write(self, last: &Checkpoint) {
        if let Err(e) = self
            .store
            .put_checkpoint(self.conversation, self.answer, last)
            .await
        {
            warn!(error = %e, "last checkpoint not written");
        }
    }
}

impl Checkpointer {
    /// The conversation was deleted while the answer streamed: removes the
    /// checkpoints written before this function noticed, so none of the
    /// conversation's text outlives the delete.
    pub async fn discard(mut self) {
        if let Some(tick) = self.in_flight.take() {
            let result = tick.await;
            self.apply(result);
        }
        // One more than acknowledged: a write whose response was lost may have landed.
        let written = self.seq + 1;
        if let Err(e) = self
            .store
            .delete_checkpoints(self.conversation, self.answer, written)
            .await
        {
            warn!(error = %e, "checkpoints of a deleted conversation not removed");
        }
    }
}

impl Watch for Checkpointer {
    fn text(&mut self, text: &str, tokens: u64) {
        self.text.push_str(text);
        self.tokens = tokens;
    }

    async fn interrupted(&mut self) -> Interrupt {
        loop {
            if let Some(interrupt) = self.interrupt {
                return interrupt;
            }
            match &mut self.in_flight {
                Some(tick) => {
                    let result = tick.await;
                    self.in_flight = None;
                    self.apply(result);
                }
                None => {
                    tokio::time::sleep_until(self.next_tick).await;
                    self.start_tick();
                }
            }
        }
    }
}
