//! `POST /api/conversations/{id}/regenerate`: a new answer to the last
//! question, replacing the last answer if there is one.

use std::sync::Arc;

use http::{Method, Response};
use lambda_http::{Error, Request};
use uuid::Uuid;

use super::accept::{self, Prepared};
use crate::adapters::api::{self, ResponseBody};
use crate::adapters::metrics::Invocation;
use crate::adapters::state::AppState;
use crate::adapters::store::Replacing;
use crate::adapters::upstream::Turn;
use crate::domain::answer::{Job, Persist};
use crate::domain::prompt;
use crate::foundation::error::ApiError;
use crate::foundation::role::Role;

/// `POST /api/conversations/{id}/regenerate`
pub async fn regenerate(
    state: Arc<AppState>,
    req: Request,
) -> Result<Response<ResponseBody>, Error> {
    Invocation::of(&req).route("regenerate");
    Ok(accept::respond(&state, &req, prepare(&state, &req).await))
}

async fn prepare(state: &Arc<AppState>, req: &Request) -> Result<Prepared, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(Prepared::Preflight);
    }
    let id = api::chat_route(req, "regenerate")?;
    let user = state.verifier.authenticate(req.headers())?.id;
    let id = api::conversation_id(id)?;
    let params = api::decode_regenerate(api::body_bytes(req)?)?;
    let key = accept::idempotency_key(req, user, || {
        accept::fingerprint("regenerate", id, None, &params)
    })?;
    let answer = Uuid::now_v7();
    let (ctx, admission) = match accept::load_and_claim(state, user, id, answer).await {
        Ok(loaded) => loaded,
        Err(refused) => return accept::replay_if_refused(state, key, refused).await,
    };

    let prepared = async {
        let no_user_message =
            || ApiError::BadRequest("conversation has no user messages to regenerate from".into());
        let last_user = ctx
            .recent
            .iter()
            .rposition(|m| m.role == Role::User)
            .ok_or_else(no_user_message)?;
        let last = ctx.recent.last().ok_or_else(no_user_message)?;
        let persist = Persist::Replace(Replacing {
            expected_last: last.id,
            // Only the very last message is ever replaced; a conversation ending
            // with its user message gets the missing answer and loses nothing.
            replaces: (last.role == Role::Assistant).then_some(last.id),
        });
        let turns: Vec<Turn> = ctx.recent[..=last_user].iter().map(prompt::turn).collect();
        let idempotency = match accept::claim(state, key).await? {
            Ok(idempotency) => idempotency,
            Err(replay) => return Ok(Prepared::Replay(replay)),
        };
        let request = prompt::upstream_request(&state.config, &turns, &params);
        Ok(Prepared::Stream(Box::new(Job {
            state: state.clone(),
            user,
            conversation: ctx.conversation,
            answer,
            user_message: None,
            request,
            persist,
            idempotency,
            admission: admission.clone(),
        })))
    }
    .await;
    accept::keep_slot_if_streaming(state, id, answer, &admission, prepared).await
}
