//! The chat use cases: `send` and `regenerate` (SPEC sections 2-6).
//!
//! Both follow one path: authenticate, validate, one DynamoDB round trip (the
//! Query and the claim of the conversation's live slot, side by side), build the
//! prompt, open the stream, relay the upstream while checkpointing it
//! ([`live::Checkpointer`]), persist, `done`. They differ only in the history
//! they send and in how the answer is stored ([`Persist`]). The `send` function
//! also serves `GET .../stream` ([`live::resume`]).

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use lambda_http::{Error, Request, RequestExt};
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::api::{self, ChatParams, ResponseBody};
use crate::error::ApiError;
use crate::inference::InferenceRequest;
use crate::limits::{self, Admission};
use crate::live::{self, Checkpointer};
use crate::metrics::{self, Answer, Invocation};
use crate::prompt::{self, Role, Turn, DEFAULT_TITLE};
use crate::relay::{self, Ending, Interrupt, Outcome, Sink, Timing};
use crate::state::AppState;
use crate::store::{
    ChatContext, Claim, Conversation, IdempotencyKey, Message, MessageStatus, Replacing, Replay,
    SlotGuard, SlotState, StoreError,
};
use crate::time_fmt;

/// How the answer of a stream is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// A new turn: the answer goes after the user message, complete or partial.
    Append,
    /// Regenerate: the answer becomes the conversation's last message only if that
    /// is still the one it was; the answer it replaces (if any) is deleted in the
    /// same write.
    Replace(Replacing),
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
    /// The answer's id, claimed in the conversation's live slot.
    answer: Uuid,
    /// The user message to store alongside the upstream call (send only).
    user_message: Option<(Message, Option<String>)>,
    request: InferenceRequest,
    persist: Persist,
    idempotency: Option<IdempotencyKey>,
    /// Its place among the user's generating answers, given back at the end.
    admission: Admission,
}

/// `POST /api/conversations/{id}/messages`, and `GET .../stream` (resume).
pub async fn send(state: Arc<AppState>, req: Request) -> Result<Response<ResponseBody>, Error> {
    if api::route_action(&req).is_some_and(|[_, action]| action == "stream") {
        Invocation::of(&req).route("stream");
        return live::resume(state, req).await;
    }
    Invocation::of(&req).route("messages");
    Ok(respond(&state, &req, prepare_send(&state, &req).await))
}

/// `POST /api/conversations/{id}/regenerate`
pub async fn regenerate(
    state: Arc<AppState>,
    req: Request,
) -> Result<Response<ResponseBody>, Error> {
    Invocation::of(&req).route("regenerate");
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
        Ok(Prepared::Stream(job)) => open_stream(*job, req),
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
    let key = idempotency_key(req, user, || {
        fingerprint("send", id, Some(&body.content), &body.params)
    })?;

    // Made in this order, so the answer sorts after its question.
    let question = Uuid::now_v7();
    let answer = Uuid::now_v7();
    let (ctx, admission) = match load_and_claim(state, user, id, answer).await {
        Ok(loaded) => loaded,
        Err(refused) => return replay_if_refused(state, key, refused).await,
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
        let title = (ctx.recent.is_empty() && conversation.title == DEFAULT_TITLE)
            .then(|| prompt::title_from(&message.content));

        let mut turns: Vec<Turn> = ctx.recent.iter().map(Message::turn).collect();
        turns.push(message.turn());
        let idempotency = match claim(state, key).await? {
            Ok(idempotency) => idempotency,
            Err(replay) => return Ok(Prepared::Replay(replay)),
        };
        let request = upstream_request(state, &turns, &body.params);
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
    keep_slot_if_streaming(state, id, answer, &admission, prepared).await
}

async fn prepare_regenerate(state: &Arc<AppState>, req: &Request) -> Result<Prepared, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(Prepared::Preflight);
    }
    let id = api::chat_route(req, "regenerate")?;
    let user = state.verifier.authenticate(req.headers())?.id;
    let id = api::conversation_id(id)?;
    let params = api::decode_regenerate(api::body_bytes(req)?)?;
    let key = idempotency_key(req, user, || fingerprint("regenerate", id, None, &params))?;
    let answer = Uuid::now_v7();
    let (ctx, admission) = match load_and_claim(state, user, id, answer).await {
        Ok(loaded) => loaded,
        Err(refused) => return replay_if_refused(state, key, refused).await,
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
        let turns: Vec<Turn> = ctx.recent[..=last_user].iter().map(Message::turn).collect();
        let idempotency = match claim(state, key).await? {
            Ok(idempotency) => idempotency,
            Err(replay) => return Ok(Prepared::Replay(replay)),
        };
        let request = upstream_request(state, &turns, &params);
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
    keep_slot_if_streaming(state, id, answer, &admission, prepared).await
}

/// The one DynamoDB round trip before the upstream call: the chat Query, the
/// claim of the conversation's live slot for `answer` and the user's limits
/// ([`limits::admit`]), side by side. When the claim had to settle a dead answer
/// first, the conversation is read again. A refused request keeps nothing: the
/// slot is released and the admission given back.
async fn load_and_claim(
    state: &AppState,
    user: Uuid,
    id: Uuid,
    answer: Uuid,
) -> Result<(ChatContext, Admission), ApiError> {
    // The history needs the newest `max_history - 1` stored messages besides the
    // new one; one more is read so regenerate and send share the Query shape.
    let limit = state.config.max_history + 1;
    let (ctx, claimed, admitted) = tokio::join!(
        state.store.load_chat(user, id, limit),
        live::claim(state, user, id, answer),
        limits::admit(state, user, id, answer),
    );
    // Someone else's or a missing conversation is a 404 before it is a 429.
    let refused = match (&ctx, &claimed, admitted) {
        (Ok(None), _, admitted) | (_, Err(ApiError::NotFound), admitted) => {
            Err((ApiError::NotFound, admitted.ok()))
        }
        (_, _, Err(refused)) => Err((refused, None)),
        (_, _, Ok(admission)) => Ok(admission),
    };
    let admission = match refused {
        Ok(admission) => admission,
        Err((err, admission)) => {
            if let Some(admission) = admission {
                admission.refund(state).await;
            }
            if claimed.is_ok() {
                release(state, id, answer).await;
            }
            return Err(err);
        }
    };
    let loaded = load_claimed(state, user, id, answer, ctx, claimed).await;
    match loaded {
        Ok(ctx) => Ok((ctx, admission)),
        Err(e) => {
            admission.refund(state).await;
            Err(e)
        }
    }
}

/// The conversation as the request sees it once its slot is claimed.
async fn load_claimed(
    state: &AppState,
    user: Uuid,
    id: Uuid,
    answer: Uuid,
    ctx: Result<Option<ChatContext>, StoreError>,
    claimed: Result<bool, ApiError>,
) -> Result<ChatContext, ApiError> {
    let limit = state.config.max_history + 1;
    // A failed claim holds nothing: there is nothing to give back.
    let settled = claimed?;
    let ctx = match ctx {
        Ok(Some(ctx)) if !settled => Ok(ctx),
        Ok(None) if !settled => Err(ApiError::NotFound),
        Err(e) if !settled => Err(e.into()),
        _ => match state.store.load_chat(user, id, limit).await {
            Ok(Some(ctx)) => Ok(ctx),
            Ok(None) => Err(ApiError::NotFound),
            Err(e) => Err(e.into()),
        },
    };
    if ctx.is_err() {
        release(state, id, answer).await;
    }
    ctx
}

/// A request that claimed the live slot but will not stream gives it back, and
/// its admission, so a refused request (or a replay) changes nothing.
async fn keep_slot_if_streaming(
    state: &AppState,
    id: Uuid,
    answer: Uuid,
    admission: &Admission,
    prepared: Result<Prepared, ApiError>,
) -> Result<Prepared, ApiError> {
    if !matches!(prepared, Ok(Prepared::Stream(_))) {
        tokio::join!(release(state, id, answer), admission.refund(state));
    }
    prepared
}

/// A request over a limit may still be the retry of one that was counted: its
/// `Idempotency-Key` record answers it (a replay, or 409 while it runs) without
/// counting it again. Any other refusal stands.
async fn replay_if_refused(
    state: &AppState,
    key: Option<IdempotencyKey>,
    refused: ApiError,
) -> Result<Prepared, ApiError> {
    let (ApiError::TooManyRequests { .. }, Some(key)) = (&refused, key) else {
        return Err(refused);
    };
    match state.store.recorded(&key).await {
        Ok(Some(Claim::Finished(replay))) => Ok(Prepared::Replay(replay)),
        Ok(Some(Claim::Running)) => Err(in_progress()),
        Ok(_) => Err(refused),
        Err(e) => {
            warn!(error = %e, "idempotency record not read");
            Err(refused)
        }
    }
}

fn in_progress() -> ApiError {
    ApiError::Conflict("a request with this Idempotency-Key is still in progress".into())
}

async fn release(state: &AppState, id: Uuid, answer: Uuid) {
    if let Err(e) = state.store.release_slot(id, answer).await {
        warn!(error = %e, "live slot not released");
    }
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

/// The request's `Idempotency-Key`, if it has one, bound to its user and to a
/// digest of what it asks for (made only when there is a key).
fn idempotency_key(
    req: &Request,
    user: Uuid,
    fingerprint: impl FnOnce() -> String,
) -> Result<Option<IdempotencyKey>, ApiError> {
    Ok(
        api::idempotency_key(req.headers())?.map(|key| IdempotencyKey {
            user,
            key,
            fingerprint: fingerprint(),
        }),
    )
}

/// Claims the request's `Idempotency-Key`, if it has one. `Ok(Err(replay))` means a
/// retry of a finished request: answer it from the record, run nothing.
async fn claim(
    state: &AppState,
    key: Option<IdempotencyKey>,
) -> Result<Result<Option<IdempotencyKey>, Replay>, ApiError> {
    let Some(key) = key else {
        return Ok(Ok(None));
    };
    match state.store.claim(&key).await? {
        Claim::New => Ok(Ok(Some(key))),
        Claim::Finished(replay) => Ok(Err(replay)),
        Claim::Running => Err(in_progress()),
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

/// What a stream's task carries of its invocation: the metrics record (written
/// when the task ends, so it holds the whole answer) and the trace header.
struct Invoked {
    invocation: Invocation,
    trace: Option<String>,
    opened: Instant,
}

impl Invoked {
    /// Records how the answer ended for the browser, from the events it ended
    /// with; `deleted` when the live answer saw its conversation deleted (a
    /// failed write is never taken for a deletion: that would hide a
    /// `persist_failed` from its alarm).
    fn answer(&self, outcome: Option<&Outcome>, end: &[serde_json::Value], deleted: bool) {
        let code = end
            .iter()
            .find_map(|e| e.get("error").and_then(serde_json::Value::as_str));
        let stopped = end.iter().any(|e| e.get("stopped").is_some());
        let name = match code {
            _ if deleted => "deleted",
            Some(code) => metrics::OUTCOMES
                .iter()
                .find(|o| **o == code)
                .copied()
                .unwrap_or("other"),
            None if stopped => "stopped",
            None => "done",
        };
        self.invocation.answer(Answer {
            outcome: name,
            first_token: outcome.and_then(|o| o.first_token),
            upstream_started: outcome.map(|o| o.started),
            tokens: outcome.map_or(0, |o| o.token_count),
            stream_opened: Some(self.opened),
        });
    }
}

/// Starts the work in its own task and returns the streaming response at once.
/// The task owns the work: if the browser goes away, the upstream is still read
/// to its end and the answer stored. Its span is a child of the invocation's, so
/// its log lines carry the request id too.
fn open_stream(job: Job, req: &Request) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::unbounded_channel();
    let span = tracing::info_span!(
        "chat",
        conversation_id = %job.conversation.id,
        user_id = %job.user,
        kind = if job.user_message.is_some() { "send" } else { "regenerate" },
    );
    let invoked = Invoked {
        invocation: Invocation::of(req),
        trace: req
            .lambda_context_ref()
            .and_then(|c| c.xray_trace_id.clone()),
        opened: Instant::now(),
    };
    // The stream stays open until the answer has left the user's generating
    // set: after `done`, one more write, and the invocation is over.
    let open = tx.clone();
    let (state, admission) = (job.state.clone(), job.admission.clone());
    let work = async move {
        run(job, Sink::new(tx), invoked).await;
        admission.finish(&state).await;
        drop(open);
    };
    tokio::spawn(work.instrument(span));
    stream_response(rx)
}

pub(crate) fn stream_response(rx: mpsc::UnboundedReceiver<bytes::Bytes>) -> Response<ResponseBody> {
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
        None => sink.event(&done_event(replay.message_id, replay.stopped)),
    }
    stream_response(rx)
}

/// How long the user-message write may wait for the upstream's response head.
const WRITE_HOLD: Duration = Duration::from_millis(50);

async fn run(job: Job, mut sink: Sink, invoked: Invoked) {
    let config = &job.state.config;
    let timing = Timing {
        ping: config.ping_interval,
        deadline: Instant::now() + config.inference_deadline,
    };
    info!(
        history_len = job.request.messages.len(),
        model_tag = %job.conversation.model_tag,
        answer_id = %job.answer,
        "stream opened"
    );
    let mut live = Checkpointer::new(&job.state, job.conversation.id, job.answer);

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
                        .append_message_with(
                            job.user,
                            &job.conversation,
                            message,
                            title.as_deref(),
                            SlotGuard::Holds(job.answer),
                            Vec::new(),
                        )
                        .await
                }
                None => Ok(()),
            }
        };
        let upstream = async {
            let inference = &job.state.inference;
            let trace = invoked.trace.as_deref();
            let opened =
                relay::open(inference, &job.request, trace, &mut sink, timing, &mut live).await;
            head_seen.notify_one();
            relay::stream(opened, &mut sink, timing, &mut live).await
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

    let outcome = match (stored_user, outcome) {
        (Ok(()), Some(outcome)) => outcome,
        (result, upstream) => {
            if let Err(e) = &result {
                warn!(error = %e, "user message not stored");
            }
            let error = json!({ "error": "persist_failed" });
            record(&job, Some(&error), false).await;
            finish_with_error(&mut sink, error.clone());
            invoked.answer(upstream.as_ref(), std::slice::from_ref(&error), false);
            if matches!(result, Err(StoreError::NotFound)) {
                // The conversation is gone: nobody can resume it.
                release(&job.state, job.conversation.id, job.answer).await;
                live.discard().await;
            } else {
                let last = live.last(vec![error, json!({ "done": true })]).await;
                live.release_with(&last).await;
            }
            return;
        }
    };
    conclude(&job, outcome, &mut sink, live, &invoked).await;
}

async fn conclude(
    job: &Job,
    outcome: Outcome,
    sink: &mut Sink,
    mut live: Checkpointer,
    invoked: &Invoked,
) {
    let keep_partial = match job.persist {
        Persist::Append => true,
        // A failed regeneration never touches the answer it was meant to replace.
        Persist::Replace(Replacing { replaces, .. }) => replaces.is_none(),
    };
    let has_text = outcome.token_count > 0;
    let (status, store) = match outcome.ending {
        Ending::Done => (MessageStatus::Complete, has_text),
        Ending::Failed(_) => (MessageStatus::Incomplete, has_text && keep_partial),
        // The user saw this text and chose to keep it.
        Ending::Interrupted(Interrupt::Stop) => (MessageStatus::Stopped, has_text),
        // Settled by another request, or the conversation is gone.
        Ending::Interrupted(Interrupt::Lost | Interrupt::Gone) => {
            (MessageStatus::Incomplete, false)
        }
    };
    let stopped = outcome.ending == Ending::Interrupted(Interrupt::Stop);
    let failure = match outcome.ending {
        Ending::Failed(f) => Some(f.event()),
        Ending::Interrupted(Interrupt::Lost) => Some(json!({ "error": "inference_interrupted" })),
        Ending::Interrupted(Interrupt::Gone) => Some(json!({ "error": "persist_failed" })),
        Ending::Done | Ending::Interrupted(Interrupt::Stop) => None,
    };

    let mut stored = None;
    if store {
        let answer = Message {
            id: job.answer,
            conversation_id: job.conversation.id,
            role: Role::Assistant,
            content: outcome.content.clone(),
            token_count: Some(outcome.token_count),
            model_tag: Some(job.conversation.model_tag.clone()),
            inference_time_ms: Some(outcome.inference_time_ms),
            created_at: time_fmt::of_id(job.answer),
            status,
        };
        // What the stream ends with once the answer is stored; the last
        // checkpoint says so to resumed readers in the answer's own transaction.
        let end = match &failure {
            Some(error) => vec![error.clone(), json!({ "done": true })],
            None => vec![done_event(Some(answer.id), stopped)],
        };
        let last = live.last(end.clone()).await;
        let mut with = Vec::new();
        // The idempotency record finishes in the answer's own transaction too.
        if let Some(key) = &job.idempotency {
            let replay = Replay {
                content: answer.content.clone(),
                message_id: Some(answer.id),
                error: failure.as_ref().map(ToString::to_string),
                stopped,
            };
            with.extend(job.state.store.finish_item(key, &replay).ok());
        }
        // An answer whose stored message says everything (`done` with its id, or
        // `stopped`) and that never checkpointed needs no last checkpoint: a
        // resumed reader finds the slot free and ends from the message. Short
        // answers so leave no checkpoint item behind.
        if failure.is_some() || live.has_checkpointed() {
            with.extend(live.last_put(&last).ok());
        }
        let store = &job.state.store;
        let guard = SlotGuard::Ends(job.answer);
        let result = match job.persist {
            Persist::Append => {
                store
                    .append_message_with(job.user, &job.conversation, &answer, None, guard, with)
                    .await
            }
            Persist::Replace(replacing) => {
                store
                    .replace_answer(job.user, &job.conversation, replacing, &answer, guard, with)
                    .await
            }
        };
        stored = Some(match result {
            Ok(()) => Ok((answer.id, end)),
            Err(e) => Err(e),
        });
    }

    info!(
        token_count = outcome.token_count,
        inference_time_ms = outcome.inference_time_ms,
        ending = ending_name(outcome.ending),
        stored = matches!(stored, Some(Ok(_))),
        browser_connected = sink.browser_connected(),
        "stream finished"
    );

    if let Some(Ok((_, end))) = &stored {
        for event in end {
            sink.event(event);
        }
        invoked.answer(Some(&outcome), end, false);
        return;
    }
    // The answer's write found its conversation deleted: an append says so; a
    // regeneration's failed condition reads like a lost race, and one read of
    // the slot tells the two apart.
    let deleted_under = match (job.persist, &stored) {
        (Persist::Append, Some(Err(StoreError::NotFound))) => true,
        (Persist::Replace(_), Some(Err(StoreError::Conflict))) => matches!(
            job.state
                .store
                .slot_state(job.conversation.id, job.answer, true)
                .await,
            Ok(SlotState::Gone)
        ),
        _ => false,
    };
    // Nothing stored: the slot, the record (if any) and the last checkpoint end
    // on their own.
    let error = match (&stored, failure) {
        (Some(Err(e)), failure) => {
            warn!(error = %e, "answer not stored");
            match (e, failure) {
                (_, Some(failure)) => Some(failure),
                (StoreError::Conflict, None) if !deleted_under => {
                    Some(json!({ "error": "conflict" }))
                }
                (_, None) => Some(json!({ "error": "persist_failed" })),
            }
        }
        (_, failure) => failure,
    };
    record(job, error.as_ref(), stopped).await;
    let end = match error {
        Some(error) => vec![error, json!({ "done": true })],
        // `done` with no token at all: nothing to store, nothing lost.
        None => vec![done_event(None, stopped)],
    };
    for event in &end {
        sink.event(event);
    }
    // The conversation was deleted under the answer: nobody can resume it.
    let gone = outcome.ending == Ending::Interrupted(Interrupt::Gone) || deleted_under;
    let deleted = outcome.ending == Ending::Interrupted(Interrupt::Gone);
    invoked.answer(Some(&outcome), &end, deleted);
    if gone {
        release(&job.state, job.conversation.id, job.answer).await;
        live.discard().await;
        return;
    }
    let last = live.last(end).await;
    if matches!(stored, Some(Err(_))) {
        // The answer's transaction carried the last checkpoint and failed.
        release(&job.state, job.conversation.id, job.answer).await;
        live.write(&last).await;
    } else {
        live.release_with(&last).await;
    }
}

fn ending_name(ending: Ending) -> &'static str {
    match ending {
        Ending::Done => "done",
        Ending::Failed(failure) => failure.code(),
        Ending::Interrupted(Interrupt::Stop) => "stopped",
        Ending::Interrupted(Interrupt::Lost) => "settled_elsewhere",
        Ending::Interrupted(Interrupt::Gone) => "conversation_deleted",
    }
}

fn done_event(message_id: Option<Uuid>, stopped: bool) -> serde_json::Value {
    let mut done = json!({ "done": true });
    if let Some(id) = message_id {
        done["message_id"] = json!(id);
    }
    if stopped {
        done["stopped"] = json!(true);
    }
    done
}

/// Finishes the request's idempotency record when no answer carried it.
async fn record(job: &Job, error: Option<&serde_json::Value>, stopped: bool) {
    let Some(key) = &job.idempotency else {
        return;
    };
    let replay = Replay {
        content: String::new(),
        message_id: None,
        error: error.map(ToString::to_string),
        stopped,
    };
    if let Err(e) = job.state.store.finish(key, &replay).await {
        warn!(error = %e, "idempotency record not finished");
    }
}

fn finish_with_error(sink: &mut Sink, error: serde_json::Value) {
    sink.event(&error);
    sink.event(&json!({ "done": true }));
}
