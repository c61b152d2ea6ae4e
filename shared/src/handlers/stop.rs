//! `POST /api/conversations/{id}/stop` (served by the `conversations`
//! function): the generating function sees the request at its next checkpoint.

use http::{Response, StatusCode};
use serde_json::json;
use tracing::info;
use uuid::Uuid;

use crate::adapters::api;
use crate::adapters::state::AppState;
use crate::domain::live;
use crate::foundation::error::ApiError;

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
    if live::settle(state, &conversation, slot).await? {
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
