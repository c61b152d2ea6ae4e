//! The chat use cases: `send` and `regenerate` (SPEC sections 2-6).
//!
//! Both follow one path: authenticate, validate, one Query, build the prompt, open
//! the stream, relay the upstream, persist, `done`. They differ only in the
//! history they send and in how the answer is stored ([`Persist`]).

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use lambda_http::{Error, Request};
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::api::{self, ChatParams, ResponseBody};
use crate::error::ApiError;
use crate::inference::InferenceRequest;
use crate::prompt::{self, Role, Turn, DEFAULT_TITLE};
use crate::relay::{self, Failure, Outcome, Sink, Timing};
use crate::state::AppState;
use crate::store::{
    Claim, Conversation, IdempotencyKey, Message, MessageStatus, Replay, StoreError,
};
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

/// What an accepted request turns into.
enum Prepared {
    /// A CORS preflight.
    Preflight,
    Stream(Box<Job>),
    /// A retry of a finished request with the same `Idempotency-Key`.
    Replay(Replay),
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
    idempotency: Option<IdempotencyKey>,
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
    prepared: Result<Prepared, ApiError>,
) -> Response<ResponseBody> {
    let mut resp = match prepared {
        Ok(Prepared::Stream(job)) => open_stream(*job),
        Ok(Prepared::Replay(replay)) => replay_stream(&replay),
        Ok(Prepared::Preflight) => api::preflight(&state.config, req),
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

async fn prepare_send(state: &Arc<AppState>, req: &Request) -> Result<Prepared, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(Prepared::Preflight);
    }
    let id = api::chat_route(req, "messages")?;
    let user = state.verifier.authenticate(req.headers())?.id;
    let id = api::conversation_id(id)?;
    let body = api::decode_send(api::body_bytes(req)?)?;
    let key = api::idempotency_key(req.headers())?;
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
    let fingerprint = || fingerprint("send", id, Some(&message.content), &body.params);
    let idempotency = match claim(state, user, key, fingerprint).await? {
        Ok(idempotency) => idempotency,
        Err(replay) => return Ok(Prepared::Replay(replay)),
    };
    let request = upstream_request(state, &turns, &body.params);
    Ok(Prepared::Stream(Box::new(Job {
        state: state.clone(),
        user,
        conversation,
        user_message: Some((message, title)),
        request,
        persist: Persist::Append,
        idempotency,
    })))
}

async fn prepare_regenerate(state: &Arc<AppState>, req: &Request) -> Result<Prepared, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(Prepared::Preflight);
    }
    let id = api::chat_route(req, "regenerate")?;
    let user = state.verifier.authenticate(req.headers())?.id;
    let id = api::conversation_id(id)?;
    let params = api::decode_regenerate(api::body_bytes(req)?)?;
    let key = api::idempotency_key(req.headers())?;
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
    let idempotency = match claim(state, user, key, || {
        fingerprint("regenerate", id, None, &params)
    })
    .await?
    {
        Ok(idempotency) => idempotency,
        Err(replay) => return Ok(Prepared::Replay(replay)),
    };
    let request = upstream_request(state, &turns, &params);
    Ok(Prepared::Stream(Box::new(Job {
        state: state.clone(),
        user,
        conversation: ctx.conversation,
        user_message: None,
        request,
        persist,
        idempotency,
    })))
}

/// A digest of what a request asks for, so a retry can be told from a reuse of
/// its key for something else. `serde_json` maps are ordered, so it is stable.
fn fingerprint(
    route: &str,
    conversation: Uuid,
    content: Option<&str>,
    params: &ChatParams,
) -> String {
    use sha2::{Digest, Sha256};
    let canonical = json!({
        "route": route,
        "conversation": conversation,
        "content": content,
        "temperature": params.temperature,
        "max_tokens": params.max_tokens,
        "top_k": params.top_k,
        "thinking_mode": params.thinking_mode,
        "force_web_search": params.force_web_search,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Claims the request's `Idempotency-Key`, if it has one. `Ok(Err(replay))` means a
/// retry of a finished request: answer it from the record, run nothing.
async fn claim(
    state: &AppState,
    user: Uuid,
    key: Option<String>,
    fingerprint: impl FnOnce() -> String,
) -> Result<Result<Option<IdempotencyKey>, Replay>, ApiError> {
    let Some(key) = key else {
        return Ok(Ok(None));
    };
    let key = IdempotencyKey {
        user,
        key,
        fingerprint: fingerprint(),
    };
    match state.store.claim(&key).await? {
        Claim::New => Ok(Ok(Some(key))),
        Claim::Finished(replay) => Ok(Err(replay)),
        Claim::Running => Err(ApiError::Conflict(
            "a request with this Idempotency-Key is still in progress".into(),
        )),
        Claim::Mismatch => Err(ApiError::invalid(
            "Idempotency-Key: already used for a different request",
        )),
    }
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
    stream_response(rx)
}

fn stream_response(rx: mpsc::UnboundedReceiver<bytes::Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::Stream(rx));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// What a finished request's retry sees: the stored answer as one token event,
/// then the ending the first request had.
fn replay_stream(replay: &Replay) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut sink = Sink::new(tx);
    if !replay.content.is_empty() {
        sink.event(&json!({ "token": replay.content }));
    }
    match replay
        .error
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
    {
        Some(Ok(error)) => finish_with_error(&mut sink, error),
        Some(Err(_)) => finish_with_error(&mut sink, json!({ "error": "persist_failed" })),
        None => match replay.message_id {
            Some(id) => sink.event(&json!({ "done": true, "message_id": id })),
            None => sink.event(&json!({ "done": true })),
        },
    }
    stream_response(rx)
}

/// How long the user-message write may wait for the upstream's response head.
const WRITE_HOLD: Duration = Duration::from_millis(50);

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

    // The user message is written while the upstream works; both must be done
    // before the answer is stored. The write waits for the upstream's response
    // head, for at most `WRITE_HOLD`: on the instance's one thread its work
    // (signing, connecting) would otherwise delay the upstream request.
    let (stored_user, outcome) = {
        let head_seen = Notify::new();
        let write = async {
            let _ = tokio::time::timeout(WRITE_HOLD, head_seen.notified()).await;
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
        let upstream = async {
            let opened = relay::open(&job.state.inference, &job.request, &mut sink, timing).await;
            head_seen.notify_one();
            relay::stream(opened, &mut sink, timing).await
        };
        tokio::pin!(write, upstream);
        let mut written = None;
        loop {
            // Biased, upstream first: a token waiting to be forwarded goes before
            // the write's next step.
            tokio::select! {
                biased;
                outcome = &mut upstream => {
                    let result = match written.take() {
                        Some(result) => result,
                        None => write.await,
                    };
                    break (result, Some(outcome));
                }
                result = &mut write, if written.is_none() => {
                    if result.is_err() {
                        // Without its question the answer would be an orphan:
                        // stop the upstream now.
                        break (result, None);
                    }
                    written = Some(result);
                }
            }
        }
    };

    if let Err(e) = stored_user {
        warn!(error = %e, "user message not stored");
        let error = json!({ "error": "persist_failed" });
        record(&job, Some(&error)).await;
        finish_with_error(&mut sink, error);
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
        // The idempotency record finishes in the answer's own transaction.
        let finish = match &job.idempotency {
            Some(key) => {
                let replay = Replay {
                    content: answer.content.clone(),
                    message_id: Some(answer.id),
                    error: outcome.failure.map(|f| f.event().to_string()),
                };
                job.state.store.finish_item(key, &replay).ok()
            }
            None => None,
        };
        let store = &job.state.store;
        let result = match job.persist {
            Persist::Append => {
                store
                    .append_message_with(job.user, &job.conversation, &answer, None, finish)
                    .await
            }
            Persist::Replace {
                expected_last,
                replaces,
            } => {
                store
                    .replace_answer(
                        job.user,
                        &job.conversation,
                        expected_last,
                        replaces,
                        &answer,
                        finish,
                    )
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

    let error = match (outcome.failure, &stored) {
        (Some(failure), stored) => {
            if let Some(Err(e)) = stored {
                warn!(error = %e, "partial answer not stored");
            }
            Some(failure.event())
        }
        (None, Some(Err(StoreError::Conflict))) => Some(json!({ "error": "conflict" })),
        (None, Some(Err(e))) => {
            warn!(error = %e, "answer not stored");
            Some(json!({ "error": "persist_failed" }))
        }
        (None, _) => None,
    };
    match (&stored, error) {
        (Some(Ok(id)), None) => sink.event(&json!({ "done": true, "message_id": id })),
        (Some(Ok(_)), Some(error)) => finish_with_error(sink, error),
        (_, error) => {
            // Nothing stored: the record (if any) is finished on its own.
            record(job, error.as_ref()).await;
            match error {
                Some(error) => finish_with_error(sink, error),
                // `done` with no token at all: nothing to store, nothing lost.
                None => sink.event(&json!({ "done": true })),
            }
        }
    }
}

/// Finishes the request's idempotency record when no answer carried it.
async fn record(job: &Job, error: Option<&serde_json::Value>) {
    let Some(key) = &job.idempotency else {
        return;
    };
    let replay = Replay {
        content: String::new(),
        message_id: None,
        error: error.map(ToString::to_string),
    };
    if let Err(e) = job.state.store.finish(key, &replay).await {
        warn!(error = %e, "idempotency record not finished");
    }
}

fn finish_with_error(sink: &mut Sink, error: serde_json::Value) {
    sink.event(&error);
    sink.event(&json!({ "done": true }));
}
