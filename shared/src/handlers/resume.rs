//! `GET /api/conversations/{id}/stream` (served by the `send` function): 204
//! when nothing is live, else the live answer's stream from its start.

use std::sync::Arc;

use http::header::{HeaderValue, ALLOW};
use http::{Method, Response, StatusCode};
use lambda_http::{Error, Request};
use tracing::{warn, Instrument};

use crate::adapters::api::{self, ResponseBody};
use crate::adapters::state::AppState;
use crate::domain::live;
use crate::domain::relay::Sink;
use crate::foundation::error::ApiError;

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
    if live::settle(state, &conversation, &slot).await? {
        return Ok(api::empty_response(StatusCode::NO_CONTENT));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let span =
        tracing::info_span!("resume", conversation_id = %id, user_id = %user, answer_id = %slot.id);
    tokio::spawn(live::follow(state.clone(), conversation, slot, Sink::new(tx)).instrument(span));
    Ok(api::stream_response(rx))
}
