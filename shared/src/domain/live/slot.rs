//! The conversation's live slot: at most one answer generates per conversation.

use tracing::warn;
use uuid::Uuid;

use super::settle::settle;
use crate::adapters::state::AppState;
use crate::adapters::store::SlotClaim;
use crate::foundation::error::ApiError;
use crate::foundation::time_fmt;

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

/// Gives the slot back: the request that claimed it will not stream after all,
/// or its answer ended without a write that releases it.
pub async fn release(state: &AppState, id: Uuid, answer: Uuid) {
    if let Err(e) = state.store.release_slot(id, answer).await {
        warn!(error = %e, "live slot not released");
    }
}
