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
//! - [`resume`] and [`stop`] serve the two routes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::TransactWriteItem;
use bytes::Bytes;
use http::header::{HeaderValue, ALLOW};
use http::{Method, Response, StatusCode};
use lambda_http::{Error, Request};
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::api::{self, ResponseBody};
use crate::chat::stream_response;
use crate::error::ApiError;
use crate::relay::{Interrupt, Sink, Watch};
use crate::state::AppState;

use crate::store::{
    Checkpoint, Conversation, HeldAnswer, LiveSlot, MessageStatus, SlotClaim, SlotState, Store,
    StoreError,
};
use crate::time_fmt;

/// What a live slot's records say about its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Its function is checkpointing.
    Live,
    /// Its function is gone: nothing checkpointed for the stale time, or past
    /// the deadline.
    Dead,
    /// It ended (its last checkpoint is written); only the slot's release is
    /// missing or on its way.
    Ended,
}

/// Tells a live answer from a dead or ended one (one Query of its newest
/// checkpoint, strongly consistent).
pub async fn assess(
    state: &AppState,
    conversation: Uuid,
    slot: &LiveSlot,
) -> Result<Liveness, StoreError> {
    let newest = state.store.newest_checkpoint(conversation, slot.id).await?;
    Ok(liveness(state, slot, newest.as_ref()))
}

/// What the slot and its newest checkpoint say about the answer.
fn liveness(state: &AppState, slot: &LiveSlot, newest: Option<&Checkpoint>) -> Liveness {
    if newest.is_some_and(|c| c.end.is_some()) {
        return Liveness::Ended;
    }
    let beat = newest.map_or(slot.since_ms, |c| c.at_ms.max(slot.since_ms));
    let now = time_fmt::now_ms();
    let stale = u64::try_from(state.config.live_stale_after.as_millis()).unwrap_or(u64::MAX);
    if now > slot.deadline_ms || now.saturating_sub(beat) > stale {
        Liveness::Dead
    } else {
        Liveness::Live
    }
}

/// Settles the conversation's live answer if it is dead or ended; `true` when
/// the slot is free afterwards (as far as this request knows).
pub async fn settle(
    state: &AppState,
    conversation: &Conversation,
    slot: &LiveSlot,
) -> Result<bool, StoreError> {
    let liveness = assess(state, conversation.id, slot).await?;
    settle_as(state, conversation, slot, liveness).await
}

async fn settle_as(
    state: &AppState,
    conversation: &Conversation,
    slot: &LiveSlot,
    liveness: Liveness,
) -> Result<bool, StoreError> {
    match liveness {
        Liveness::Live => Ok(false),
        liveness => {
            let settled = settle_and_release(state, conversation, slot).await?;
            if settled && liveness == Liveness::Dead {
                warn!(conversation_id = %conversation.id, answer_id = %slot.id,
                      "live answer of a dead function settled");
            }
            Ok(true)
        }
    }
}

/// Settles the answer ([`Store::settle`]) and, if this request did, gives its
/// place among its user's generating answers back: its function died before
/// it could (or ended without releasing it), and nothing else would until the
/// user's set is next full.
async fn settle_and_release(
    state: &AppState,
    conversation: &Conversation,
    slot: &LiveSlot,
) -> Result<bool, StoreError> {
    let settled = state.store.settle(conversation, slot).await?;
    if settled {
        let held = HeldAnswer {
            answer: slot.id,
            conversation: conversation.id,
        };
        let released = state
            .store
            .release_answers(conversation.user_id, &[held], &[], &[])
            .await;
        // The full set's check still frees it.
        if let Err(e) = released {
            warn!(error = %e, "generating place of a settled answer not given back");
        }
    }
    Ok(settled)
}

/// Claims the conversation's live slot for a new answer. A dead answer holding
/// it is settled first; `Ok(true)` then, since the conversation changed and the
/// caller's view of it must be read again.
pub async fn claim(
    state: &AppState,
    user: Uuid,
    conversation: Uuid,
    answer: Uuid,
) -> Result<bool, ApiError> {
    let deadline = state.config.inference_deadline + state.config.live_stale_after;
    let deadline_ms = time_fmt::now_ms() + u64::try_from(deadline.as_millis()).unwrap_or(0);
    let mut settled = false;
    for _ in 0..3 {
        match state
            .store
            .claim_slot(user, conversation, answer, deadline_ms)
            .await?
        {
            SlotClaim::Claimed => return Ok(settled),
            SlotClaim::Missing => return Err(ApiError::NotFound),
            SlotClaim::Busy(c) => {
                if let Some(slot) = &c.live {
                    if !settle(state, &c, slot).await? {
                        return Err(ApiError::Conflict(
                            "an answer is still being generated in this conversation; \
                             stop it or wait for it to finish"
                                .into(),
                        ));
                    }
                    settled = true;
                }
            }
        }
    }
    Err(ApiError::Conflict(
        "the conversation is busy, retry shortly".into(),
    ))
}

/// `POST /api/conversations/{id}/stop`: 202 with the live answer's id, or 204
/// when nothing is live.
pub async fn stop<B: From<String>>(
    state: &AppState,
    user: Uuid,
    id: Uuid,
) -> Result<Response<B>, ApiError> {
    let conversation = state
        .store
        .get_conversation(user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let Some(slot) = &conversation.live else {
        return Ok(api::empty_response(StatusCode::NO_CONTENT));
    };
    if settle(state, &conversation, slot).await? {
        return Ok(api::empty_response(StatusCode::NO_CONTENT));
    }
    if !state.store.request_stop(user, id, slot.id).await? {
        return Ok(api::empty_response(StatusCode::NO_CONTENT));
    }
    info!(conversation_id = %id, user_id = %user, answer_id = %slot.id, "stop requested");
    Ok(api::json_response(
        StatusCode::ACCEPTED,
        &json!({ "message_id": slot.id }),
    ))
}

/// The conversation's messages as a reader should see them: a live answer is
/// shown as a `streaming` message with its checkpointed text; a dead one is
/// settled first.
pub async fn with_live_answer(
    state: &AppState,
    conversation: &Conversation,
) -> Result<Option<crate::store::Message>, StoreError> {
    let Some(slot) = &conversation.live else {
        return Ok(None);
    };
    // One read of its checkpoints gives both its liveness and its text.
    let checkpoints = state
        .store
        .checkpoints(conversation.id, slot.id, None, true)
        .await?;
    let now = liveness(state, slot, checkpoints.last());
    if settle_as(state, conversation, slot, now).await? {
        return Ok(None);
    }
    Ok(Some(crate::store::Message {
        id: slot.id,
        conversation_id: conversation.id,
        role: crate::prompt::Role::Assistant,
        content: checkpoints.iter().map(|c| c.text.as_str()).collect(),
        token_count: checkpoints.last().map(|c| c.tokens),
        model_tag: Some(conversation.model_tag.clone()),
        inference_time_ms: None,
        created_at: time_fmt::of_id(slot.id),
        status: MessageStatus::Streaming,
    }))
}

/// `GET /api/conversations/{id}/stream` (served by the `send` function).
pub async fn resume(state: Arc<AppState>, req: Request) -> Result<Response<ResponseBody>, Error> {
    let mut resp = match open_resume(&state, &req).await {
        Ok(resp) => resp,
        Err(err) => {
            if let ApiError::Store(e) = &err {
                warn!(error = %e, "store failure before the resumed stream opened");
            }
            let mut resp = api::error_response(&err);
            if matches!(err, ApiError::MethodNotAllowed) {
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET"));
            }
            resp
        }
    };
    api::apply_cors(&state.config, req.headers(), &mut resp);
    Ok(resp)
}

async fn open_resume(
    state: &Arc<AppState>,
    req: &Request,
) -> Result<Response<ResponseBody>, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(api::preflight(&state.config, req));
    }
    let id = api::action_route(req, "stream", &Method::GET)?;
    let user = state.verifier.authenticate(req.headers())?.id;
    let id = api::conversation_id(id)?;
    let conversation = state
        .store
        .get_conversation(user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let Some(slot) = conversation.live.clone() else {
        return Ok(api::empty_response(StatusCode::NO_CONTENT));
    };
    if settle(state, &conversation, &slot).await? {
        return Ok(api::empty_response(StatusCode::NO_CONTENT));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let span =
        tracing::info_span!("resume", conversation_id = %id, user_id = %user, answer_id = %slot.id);
    tokio::spawn(follow(state.clone(), conversation, slot, Sink::new(tx)).instrument(span));
    Ok(stream_response(rx))
}

/// Streams a live answer to one resumed reader: its text so far, then each new
/// checkpoint, then the events its stream ended with.
async fn follow(state: Arc<AppState>, conversation: Conversation, slot: LiveSlot, mut sink: Sink) {
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
            if let Err(e) = settle_and_release(state, &current, slot).await {
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
