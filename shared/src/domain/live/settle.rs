//! Whether a live answer is live, dead or ended, and settling the ones that are
//! not: a dead answer's checkpointed text is stored `incomplete` and its slot
//! freed.

use tracing::warn;
use uuid::Uuid;

use crate::adapters::state::AppState;
use crate::adapters::store::{
    Checkpoint, Conversation, HeldAnswer, LiveSlot, Message, MessageStatus, StoreError,
};
use crate::foundation::role::Role;
use crate::foundation::time_fmt;

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

/// Settles the answer ([`crate::adapters::store::Store::settle`]) and, if this
/// request did, gives its place among its user's generating answers back: its
/// function died before it could (or ended without releasing it), and nothing
/// else would until the user's set is next full.
pub async fn settle_and_release(
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

/// The conversation's messages as a reader should see them: a live answer is
/// shown as a `streaming` message with its checkpointed text; a dead one is
/// settled first.
pub async fn with_live_answer(
    state: &AppState,
    conversation: &Conversation,
) -> Result<Option<Message>, StoreError> {
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
    Ok(Some(Message {
        id: slot.id,
        conversation_id: conversation.id,
        role: Role::Assistant,
        content: checkpoints.iter().map(|c| c.text.as_str()).collect(),
        token_count: checkpoints.last().map(|c| c.tokens),
        model_tag: Some(conversation.model_tag.clone()),
        inference_time_ms: None,
        created_at: time_fmt::of_id(slot.id),
        status: MessageStatus::Streaming,
    }))
}
