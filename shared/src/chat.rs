//! The chat use cases: `send` and `regenerate` (SPEC sections 2-6).
//!
//! Both follow one path: authenticate, validate, one Query, build the prompt, open
//! the stream, relay the upstream, persist, `done`. They differ only in the
//! history they send and in how the answer is stored ([`Persist`]).

use std::sync::Arc;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use lambda_http::{Error, Request};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::api::{self, ChatParams, ResponseBody};
use crate::error::ApiError;
use crate::inference::InferenceRequest;
use crate::prompt::{self, Role, Turn, DEFAULT_TITLE};
use crate::relay::{self, Failure, Outcome, Sink, Timing};
use crate::state::AppState;
use crate::store::{Conversation, Message, MessageStatus, StoreError};
use crate::time_fmt;

/// How the answer of a stream is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// A new turn: the answer goes after the user message, complete or partial.
    Append,
    /// Regenerate: the answer becomes the conversation's last message only if that
    /// is still `expected_last`; `replaces` (if any) is deleted in the same write.
    Replace {
        expected_last: Uuid,
        replaces: Option<Uuid>,
    },
}

/// Everything a stream needs once the request has been accepted.
struct Job {
    state: Arc<AppState>,
    user: Uuid,
    conversation: Conversation,
    /// The user message to store alongside the upstream call (send only).
    user_message: Option<(Message, Option<String>)>,
    request: InferenceRequest,
    persist: Persist,
}

/// `POST /api/conversations/{id}/messages`
pub async fn send(state: Arc<AppState>, req: Request) -> Result<Response<ResponseBody>, Error> {
    Ok(respond(&state, &req, prepare_send(&state, &req).await))
}

/// `POST /api/conversations/{id}/regenerate`
pub async fn regenerate(
    state: Arc<AppState>,
    req: Request,
) -> Result<Response<ResponseBody>, Error> {
    Ok(respond(
        &state,
        &req,
        prepare_regenerate(&state, &req).await,
    ))
}

fn respond(
    state: &Arc<AppState>,
    req: &Request,
    job: Result<Option<Job>, ApiError>,
) -> Response<ResponseBody> {
    let mut resp = match job {
        Ok(Some(job)) => open_stream(job),
        Ok(None) => api::preflight(&state.config, req),
        Err(err) => {
            if let ApiError::Store(e) = &err {
                warn!(error = %e, "store failure before the stream opened");
            }
            api::error_response(&err)
        }
    };
    api::apply_cors(&state.config, req.headers(), &mut resp);
    resp
}

async fn prepare_send(state: &Arc<AppState>, req: &Request) -> Result<Option<Job>, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(None);
    }
    let id = api::chat_route(req, "messages")?;
    let user = state.verifier.authenticate(req.headers())?.id;
    let id = api::conversation_id(id)?;
    let body = api::decode_send(api::body_bytes(req)?)?;
    let config = &state.config;

    // The history needs the newest `max_history - 1` stored messages besides the
    // new one; one more is read so regenerate and send share the Query shape.
    let ctx = state
        .store
        .load_chat(user, id, config.max_history + 1)
        .await?
        .ok_or(ApiError::NotFound)?;
    let conversation = ctx.conversation;

    let message = Message {
        id: Uuid::now_v7(),
        conversation_id: conversation.id,
        role: Role::User,
        content: body.content,
        token_count: None,
        model_tag: Some(conversation.model_tag.clone()),
        inference_time_ms: None,
        created_at: time_fmt::format(time_fmt::now()),
        status: MessageStatus::Complete,
    };
    let title = (ctx.recent.is_empty() && conversation.title == DEFAULT_TITLE)
        .then(|| prompt::title_from(&message.content));

    let mut turns: Vec<Turn> = ctx.recent.iter().map(Message::turn).collect();
    turns.push(message.turn());
    let request = upstream_request(state, &turns, &body.params);
    Ok(Some(Job {
        state: state.clone(),
        user,
        conversation,
        user_message: Some((message, title)),
        request,
        persist: Persist::Append,
    }))
}

async fn prepare_regenerate(state: &Arc<AppState>, req: &Request) -> Result<Option<Job>, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(None);
    }
    let id = api::chat_route(req, "regenerate")?;
    let user = state.verifier.authenticate(req.headers())?.id;
    let id = api::conversation_id(id)?;
    let params = api::decode_regenerate(api::body_bytes(req)?)?;
    let ctx = state
        .store
        .load_chat(user, id, state.config.max_history + 1)
        .await?
        .ok_or(ApiError::NotFound)?;

    let no_user_message =
        || ApiError::BadRequest("conversation has no user messages to regenerate from".into());
    let last_user = ctx
        .recent
        .iter()
        .rposition(|m| m.role == Role::User)
        .ok_or_else(no_user_message)?;
    let last = ctx.recent.last().ok_or_else(no_user_message)?;
    let persist = Persist::Replace {
        expected_last: last.id,
        // Only the very last message is ever replaced; a conversation ending with
        // its user message gets the missing answer and loses nothing.
        replaces: (last.role == Role::Assistant).then_some(last.id),
    };
    let turns: Vec<Turn> = ctx.recent[..=last_user].iter().map(Message::turn).collect();
    let request = upstream_request(state, &turns, &params);
    Ok(Some(Job {
        state: state.clone(),
        user,
        conversation: ctx.conversation,
        user_message: None,
        request,
        persist,
    }))
}

fn upstream_request(state: &AppState, turns: &[Turn], params: &ChatParams) -> InferenceRequest {
    let config = &state.config;
    let window = prompt::history_window(turns, config.max_history, config.max_token_budget);
    let messages = prompt::with_system_prompt(window, params.thinking_mode);
    InferenceRequest::new(messages, params, &config.defaults)
}

/// Starts the work in its own task and returns the streaming response at once.
/// The task owns the work: if the browser goes away, the upstream is still read
/// to its end and the answer stored.
fn open_stream(job: Job) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::unbounded_channel();
    let span = tracing::info_span!(
        "chat",
        conversation_id = %job.conversation.id,
        user_id = %job.user,
        kind = if job.user_message.is_some() { "send" } else { "regenerate" },
    );
    tokio::spawn(run(job, Sink::new(tx)).instrument(span));

    let mut resp = Response::new(ResponseBody::Stream(rx));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

async fn run(job: Job, mut sink: Sink) {
    let config = &job.state.config;
    let timing = Timing {
        ping: config.ping_interval,
        deadline: Instant::now() + config.inference_deadline,
    };
    info!(
        history_len = job.request.messages.len(),
        model_tag = %job.conversation.model_tag,
        "stream opened"
    );

    // The user message is written while the upstream is already working; both
    // must be done before the answer is stored.
    let (stored_user, outcome) = {
        let write = async {
            match &job.user_message {
                Some((message, title)) => {
                    job.state
                        .store
                        .append_message(job.user, &job.conversation, message, title.as_deref())
                        .await
                }
                None => Ok(()),
            }
        };
        let upstream = relay::relay(&job.state.inference, &job.request, &mut sink, timing);
        tokio::pin!(write, upstream);
        let mut written = None;
        loop {
            tokio::select! {
                result = &mut write, if written.is_none() => {
                    if result.is_err() {
                        // Without its question the answer would be an orphan:
                        // stop the upstream now.
                        break (result, None);
                    }
                    written = Some(result);
                }
                outcome = &mut upstream => {
                    let result = match written.take() {
                        Some(result) => result,
                        None => write.await,
                    };
                    break (result, Some(outcome));
                }
            }
        }
    };

    if let Err(e) = stored_user {
        warn!(error = %e, "user message not stored");
        finish_with_error(&mut sink, json!({ "error": "persist_failed" }));
        return;
    }
    let Some(outcome) = outcome else {
        return;
    };
    conclude(&job, outcome, &mut sink).await;
}

async fn conclude(job: &Job, outcome: Outcome, sink: &mut Sink) {
    let status = match outcome.failure {
        None => MessageStatus::Complete,
        Some(_) => MessageStatus::Incomplete,
    };
    let keep_partial = match job.persist {
        Persist::Append => true,
        // A failed regeneration never touches the answer it was meant to replace.
        Persist::Replace { replaces, .. } => replaces.is_none(),
    };
    let store = outcome.token_count > 0 && (outcome.failure.is_none() || keep_partial);

    let mut stored = None;
    if store {
        let answer = Message {
            // Made now, after the user message was written, so it sorts after it.
            id: Uuid::now_v7(),
            conversation_id: job.conversation.id,
            role: Role::Assistant,
            content: outcome.content.clone(),
            token_count: Some(outcome.token_count),
            model_tag: Some(job.conversation.model_tag.clone()),
            inference_time_ms: Some(outcome.inference_time_ms),
            created_at: time_fmt::format(time_fmt::now()),
            status,
        };
        let conversation = &job.conversation;
        let result = match job.persist {
            Persist::Append => {
                job.state
                    .store
                    .append_message(job.user, conversation, &answer, None)
                    .await
            }
            Persist::Replace {
                expected_last,
                replaces,
            } => {
                job.state
                    .store
                    .replace_answer(job.user, conversation, expected_last, replaces, &answer)
                    .await
            }
        };
        stored = Some(result.map(|()| answer.id));
    }

    info!(
        token_count = outcome.token_count,
        inference_time_ms = outcome.inference_time_ms,
        failure = outcome.failure.map(Failure::code),
        stored = matches!(stored, Some(Ok(_))),
        browser_connected = sink.browser_connected(),
        "stream finished"
    );

    match (outcome.failure, stored) {
        (None, Some(Ok(id))) => {
            sink.event(&json!({ "done": true, "message_id": id }));
        }
        (None, Some(Err(StoreError::Conflict))) => {
            finish_with_error(sink, json!({ "error": "conflict" }));
        }
        (None, Some(Err(e))) => {
            warn!(error = %e, "answer not stored");
            finish_with_error(sink, json!({ "error": "persist_failed" }));
        }
        (None, None) => {
            // `done` with no token at all: nothing to store, nothing lost.
            sink.event(&json!({ "done": true }));
        }
        (Some(failure), stored) => {
            if let Some(Err(e)) = stored {
                warn!(error = %e, "partial answer not stored");
            }
            finish_with_error(sink, failure.event());
        }
    }
}

fn finish_with_error(sink: &mut Sink, error: serde_json::Value) {
    sink.event(&error);
    sink.event(&json!({ "done": true }));
}
