//! A resumed reader (`GET .../stream`): follows a live answer's checkpoints to
//! its end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::time::Instant;
use tracing::warn;

use crate::adapters::state::AppState;
use crate::adapters::store::{Checkpoint, Conversation, LiveSlot, MessageStatus, SlotState};
use crate::domain::relay::Sink;
use crate::foundation::time_fmt;

/// Streams a live answer to one resumed reader: its text so far, then each new
/// checkpoint, then the events its stream ended with.
pub async fn follow(
    state: Arc<AppState>,
    conversation: Conversation,
    slot: LiveSlot,
    mut sink: Sink,
) {
    let config = &state.config;
    let interval = config.checkpoint_interval;
    let stale = u64::try_from(config.live_stale_after.as_millis()).unwrap_or(u64::MAX);
    let mut reader = Reader {
        last_seq: None,
        delivered: 0,
        beat_ms: slot.since_ms,
    };
    let mut consistent = true;
    loop {
        let checkpoints = match state
            .store
            .checkpoints(conversation.id, slot.id, reader.last_seq, consistent)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "checkpoints not read");
                Vec::new()
            }
        };
        consistent = false;
        if reader.deliver(&checkpoints, &mut sink) {
            return;
        }
        // An answer that ends within its first interval writes no checkpoint at
        // all: until one shows up, a read that found nothing also looks whether
        // the answer still holds the slot.
        let ended = checkpoints.is_empty()
            && reader.last_seq.is_none()
            && matches!(
                state
                    .store
                    .slot_state(conversation.id, slot.id, false)
                    .await,
                Ok(SlotState::Lost | SlotState::Gone)
            );
        let now = time_fmt::now_ms();
        if ended || now > slot.deadline_ms || now.saturating_sub(reader.beat_ms) > stale {
            reader
                .conclude(&state, &conversation, &slot, &mut sink)
                .await;
            return;
        }
        let next = Instant::now() + next_poll(checkpoints.last(), interval);
        while Instant::now() < next {
            let ping_at = sink.last_sent() + config.ping_interval;
            tokio::time::sleep_until(next.min(ping_at)).await;
            if Instant::now() >= ping_at {
                sink.send(Bytes::from_static(b": ping\n\n"));
            }
        }
        if !sink.browser_connected() {
            return;
        }
    }
}

/// How long a resumed reader waits before its next read. The generating
/// function checkpoints once per interval, so the reader reads once per interval
/// too, just after the next checkpoint is due (by the last one's time): each read
/// finds new text, and costs half a read unit. A read that found nothing waits a
/// whole interval. At most two reads per interval, whatever the clocks say.
fn next_poll(newest: Option<&Checkpoint>, interval: Duration) -> Duration {
    const SETTLE: u64 = 100;
    let Some(newest) = newest else {
        return interval;
    };
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let due = newest.at_ms.saturating_add(interval_ms + SETTLE);
    let wait = due.saturating_sub(time_fmt::now_ms()).min(interval_ms);
    Duration::from_millis(wait.max(interval_ms / 2))
}

struct Reader {
    last_seq: Option<u32>,
    /// Bytes of text delivered so far.
    delivered: usize,
    beat_ms: u64,
}

impl Reader {
    /// Sends the checkpoints' text and, if one ends the answer, its final
    /// events; `true` when the answer ended.
    fn deliver(&mut self, checkpoints: &[Checkpoint], sink: &mut Sink) -> bool {
        for c in checkpoints {
            self.last_seq = Some(c.seq);
            self.beat_ms = self.beat_ms.max(c.at_ms);
            if !c.text.is_empty() {
                self.delivered += c.text.len();
                sink.event(&json!({ "token": c.text }));
            }
            if let Some(end) = &c.end {
                for event in end {
                    sink.event(event);
                }
                return true;
            }
        }
        false
    }

    /// The answer went quiet: settle it if its function is dead, or, if it was
    /// stored without its last checkpoint (its function died between the two
    /// writes), finish from the stored message.
    async fn conclude(
        &mut self,
        state: &AppState,
        conversation: &Conversation,
        slot: &LiveSlot,
        sink: &mut Sink,
    ) {
        let interrupted = |sink: &mut Sink| {
            sink.event(&json!({ "error": "inference_interrupted" }));
            sink.event(&json!({ "done": true }));
        };
        let current = match state
            .store
            .get_conversation(conversation.user_id, conversation.id)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "conversation not read");
                return interrupted(sink);
            }
        };
        if let Some(current) = current.filter(|c| c.live.as_ref().map(|s| s.id) == Some(slot.id)) {
            if let Err(e) = super::settle::settle_and_release(state, &current, slot).await {
                warn!(error = %e, "dead live answer not settled");
                return interrupted(sink);
            }
            // The settle wrote the last checkpoint; read it like any other.
            match state
                .store
                .checkpoints(conversation.id, slot.id, self.last_seq, true)
                .await
            {
                Ok(c) if self.deliver(&c, sink) => return,
                _ => return interrupted(sink),
            }
        }
        match state.store.get_message(conversation.id, slot.id).await {
            Ok(Some(message)) => {
                if let Some(rest) = message.content.get(self.delivered..) {
                    if !rest.is_empty() {
                        sink.event(&json!({ "token": rest }));
                    }
                }
                match message.status {
                    MessageStatus::Complete => {
                        sink.event(&json!({ "done": true, "message_id": message.id }))
                    }
                    MessageStatus::Stopped => sink
                        .event(&json!({ "done": true, "message_id": message.id, "stopped": true })),
                    _ => {
                        sink.event(&json!({ "error": "inference_interrupted" }));
                        sink.event(&json!({ "done": true }));
                    }
                }
            }
            _ => interrupted(sink),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms_ago: u64) -> Checkpoint {
        Checkpoint {
            seq: 3,
            text: "x".into(),
            tokens: 1,
            at_ms: time_fmt::now_ms() - ms_ago,
            end: None,
        }
    }

    #[test]
    fn a_resumed_reader_reads_once_per_interval_just_after_each_checkpoint() {
        let interval = Duration::from_millis(1000);
        // Nothing new: a whole interval.
        assert_eq!(next_poll(None, interval), interval);
        // A checkpoint written 300 ms ago: the next is due in 700 ms, read 100 ms after.
        let wait = next_poll(Some(&at(300)), interval).as_millis();
        assert!((780..=800).contains(&wait), "{wait}");
        // Overdue (a slow writer or clocks apart): never more than two reads per interval.
        assert_eq!(next_poll(Some(&at(5000)), interval), interval / 2);
        // A writer clock ahead of ours: never longer than an interval.
        let ahead = Checkpoint {
            at_ms: time_fmt::now_ms() + 60_000,
            ..at(0)
        };
        assert_eq!(next_poll(Some(&ahead), interval), interval);
    }
}
