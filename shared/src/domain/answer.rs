//! An accepted answer, from its stream's opening to its end: the upstream
//! relayed while a [`Checkpointer`] keeps it live in DynamoDB, the user message
//! written meanwhile, the answer persisted ([`Persist`]), the stream ended. The
//! work runs in its own task, so a browser that leaves still gets its answer
//! stored.

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use lambda_http::{Request, RequestExt};
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::adapters::api::{self, ResponseBody};
use crate::adapters::metrics::{self, Answer, Invocation};
use crate::adapters::state::AppState;
use crate::adapters::store::{
    Conversation, IdempotencyKey, Message, MessageStatus, Replacing, Replay, SlotGuard, SlotState,
    StoreError,
};
use crate::adapters::upstream::InferenceRequest;
use crate::domain::limits::Admission;
use crate::domain::live::{self, Checkpointer};
use crate::domain::relay::{self, Ending, Interrupt, Outcome, Sink, Timing, Watch};
use crate::foundation::role::Role;
use crate::foundation::time_fmt;

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

/// Everything a stream needs once the request has been accepted.
pub struct Job {
    pub(crate) state: Arc<AppState>,
    pub(crate) user: Uuid,
    pub(crate) conversation: Conversation,
    /// The answer's id, claimed in the conversation's live slot.
    pub(crate) answer: Uuid,
    /// The user message to store alongside the upstream call (send only).
    pub(crate) user_message: Option<(Message, Option<String>)>,
    pub(crate) request: InferenceRequest,
    pub(crate) persist: Persist,
    pub(crate) idempotency: Option<IdempotencyKey>,
    /// Its place among the user's generating answers, given back at the end.
    pub(crate) admission: Admission,
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
pub fn open(job: Job, req: &Request) -> Response<ResponseBody> {
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
    api::stream_response(rx)
}

/// What a finished request's retry sees: the stored answer as one token event,
/// then the ending the first request had.
pub fn replay(replay: &Replay) -> Response<ResponseBody> {
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
    api::stream_response(rx)
}

/// How long the user-message write may wait for the first token.
const WRITE_HOLD: Duration = Duration::from_millis(50);

/// A [`Watch`] passed through, that tells `seen` when the first token's text
/// has been handed to the browser's stream.
struct FirstToken<'a, W> {
    inner: &'a mut W,
    seen: &'a Notify,
    told: bool,
}

impl<W: Watch> Watch for FirstToken<'_, W> {
    fn text(&mut self, text: &str, tokens: u64) {
        self.inner.text(text, tokens);
        if !self.told {
            self.told = true;
            self.seen.notify_one();
        }
    }

    fn interrupted(&mut self) -> impl std::future::Future<Output = Interrupt> + Send {
        self.inner.interrupted()
    }
}

async fn run(job: Job, mut sink: Sink, invoked: Invoked) {
    let config = &job.state.config;
    let timing = Timing {
        ping: config.ping_interval,
        deadline: Instant::now() + config.inference_deadline,
    };
    let mut live = Checkpointer::new(&job.state, job.conversation.id, job.answer);

    // The user message is written while the upstream works; both must be done
    // before the answer is stored. The write waits until the first token has
    // gone to the browser (or the upstream gave none), for at most
    // `WRITE_HOLD`: on the instance's one thread its work (serializing,
    // signing, sending) would otherwise delay the upstream request or the
    // first token.
    let (stored_user, outcome) = {
        let first_token = Notify::new();
        let write = async {
            if tokio::time::timeout(WRITE_HOLD, first_token.notified())
                .await
                .is_ok()
            {
                // Lets the Runtime API connection write the token out first.
                tokio::task::yield_now().await;
            }
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
            // Logged once the upstream has answered, not before its request:
            // on the one thread, the line would delay it.
            info!(
                history_len = job.request.messages.len(),
                model_tag = %job.conversation.model_tag,
                answer_id = %job.answer,
                "stream opened"
            );
            let mut watch = FirstToken {
                inner: &mut live,
                seen: &first_token,
                told: false,
            };
            let outcome = relay::stream(opened, &mut sink, timing, &mut watch).await;
            // An answer without any token: the write need not wait longer.
            first_token.notify_one();
            outcome
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
                live::release(&job.state, job.conversation.id, job.answer).await;
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
        live::release(&job.state, job.conversation.id, job.answer).await;
        live.discard().await;
        return;
    }
    let last = live.last(end).await;
    if matches!(stored, Some(Err(_))) {
        // The answer's transaction carried the last checkpoint and failed.
        live::release(&job.state, job.conversation.id, job.answer).await;
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
