//! `POST /api/conversations/{id}/messages`: a new turn, its answer streamed.
//! The `send` function also serves `GET .../stream` ([`super::resume`]).

use std::sync::Arc;

use http::{Method, Response};
use lambda_http::{Error, Request};
use uuid::Uuid;

use super::accept::{self, Prepared};
use super::resume;
use crate::adapters::api::{self, ResponseBody};
use crate::adapters::metrics::Invocation;
use crate::adapters::state::AppState;
use crate::adapters::store::{Message, MessageStatus};
use crate::adapters::upstream::Turn;
use crate::domain::answer::{Job, Persist};
use crate::domain::prompt;
use crate::foundation::error::ApiError;
use crate::foundation::role::Role;
use crate::foundation::time_fmt;

/// `POST /api/conversations/{id}/messages`, and `GET .../stream` (resume).
pub async fn send(state: Arc<AppState>, req: Request) -> Result<Response<ResponseBody>, Error> {
    if api::route_action(&req).is_some_and(|[_, action]| action == "stream") {
        Invocation::of(&req).route("stream");
        return resume::resume(state, req).await;
    }
    Invocation::of(&req).route("messages");
    Ok(accept::respond(&state, &req, prepare(&state, &req).await))
}

async fn prepare(state: &Arc<AppState>, req: &Request) -> Result<Prepared, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(Prepared::Preflight);
    }
    let id = api::chat_route(req, "messages")?;
    let user = state.verifier.authenticate(req.headers())?.id;
    let id = api::conversation_id(id)?;
    let body = api::decode_send(api::body_bytes(req)?)?;
    let key = accept::idempotency_key(req, user, || {
        accept::fingerprint("send", id, Some(&body.content), &body.params)
    })?;

    // Made in this order, so the answer sorts after its question.
    let question = Uuid::now_v7();
    let answer = Uuid::now_v7();
    let (ctx, admission) = match accept::load_and_claim(state, user, id, answer).await {
        Ok(loaded) => loaded,
        Err(refused) => return accept::replay_if_refused(state, key, refused).await,
    };
    let prepared = async {
        let conversation = ctx.conversation;
        let message = Message {
            id: question,
            conversation_id: conversation.id,
            role: Role::User,
            content: body.content,
            token_count: None,
            model_tag: Some(conversation.model_tag.clone()),
            inference_time_ms: None,
            created_at: time_fmt::of_id(question),
            status: MessageStatus::Complete,
        };
        let title = (ctx.recent.is_empty() && !conversation.renamed)
            .then(|| prompt::title_from(&message.content));

        let mut turns: Vec<Turn> = ctx.recent.iter().map(prompt::turn).collect();
        turns.push(prompt::turn(&message));
        let idempotency = match accept::claim(state, key).await? {
            Ok(idempotency) => idempotency,
            Err(replay) => return Ok(Prepared::Replay(replay)),
        };
        let request = prompt::upstream_request(&state.config, &turns, &body.params);
        Ok(Prepared::Stream(Box::new(Job {
            state: state.clone(),
            user,
            conversation,
            answer,
            user_message: Some((message, title)),
            request,
            persist: Persist::Append,
            idempotency,
            admission: admission.clone(),
        })))
    }
    .await;
    accept::keep_slot_if_streaming(state, id, answer, &admission, prepared).await
}
