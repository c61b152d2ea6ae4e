//! What `send` and `regenerate` share before their stream opens: the one
//! DynamoDB round trip (the chat Query, the live-slot claim and the user's
//! limits, side by side), the `Idempotency-Key`, refusals that give back what
//! they took, and the response.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use futures_util::future::maybe_done;
use http::Response;
use lambda_http::Request;
use serde_json::json;
use tracing::warn;
use uuid::Uuid;

use crate::adapters::api::{self, ResponseBody};
use crate::adapters::state::AppState;
use crate::adapters::store::{ChatContext, Claim, IdempotencyKey, Replay, StoreError};
use crate::adapters::upstream::ChatParams;
use crate::domain::answer::{self, Job};
use crate::domain::limits::{self, Admission};
use crate::domain::live;
use crate::foundation::error::ApiError;

/// What an accepted request turns into.
pub(crate) enum Prepared {
    /// A CORS preflight.
    Preflight,
    Stream(Box<Job>),
    /// A retry of a finished request with the same `Idempotency-Key`.
    Replay(Replay),
}

pub(crate) fn respond(
    state: &Arc<AppState>,
    req: &Request,
    prepared: Result<Prepared, ApiError>,
) -> Response<ResponseBody> {
    let mut resp = match prepared {
        Ok(Prepared::Stream(job)) => answer::open(*job, req),
        Ok(Prepared::Replay(replay)) => answer::replay(&replay),
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

/// The one DynamoDB round trip before the upstream call: the chat Query, the
/// claim of the conversation's live slot for `answer` and the user's limits
/// ([`limits::admit`]), side by side. When the claim had to settle a dead answer
/// first, the conversation is read again. A refused request keeps nothing: the
/// slot is released and the admission given back.
pub(crate) async fn load_and_claim(
    state: &AppState,
    user: Uuid,
    id: Uuid,
    answer: Uuid,
) -> Result<(ChatContext, Admission), ApiError> {
    // The history needs the newest `max_history - 1` stored messages besides the
    // new one; one more is read so regenerate and send share the Query shape.
    let limit = state.config.max_history + 1;
    // Once the three are on their way, the upstream connection is made (or the
    // kept one checked) while DynamoDB answers.
    let (ctx, claimed, admitted) = side_by_side(
        state.store.load_chat(user, id, limit),
        live::claim(state, user, id, answer),
        limits::admit(state, user, id, answer),
        || state.inference.connect_ahead(),
    )
    .await;
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
                live::release(state, id, answer).await;
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

/// Runs three DynamoDB requests side by side, each sent before the next is
/// built, then `sent` once all three are on their way.
///
/// With `tokio::join!` on the instance's one thread, all three requests were
/// built (serialized and signed) before the first left: their connections'
/// tasks only write once this task waits. Here each future is polled until it
/// waits for its reply, then this task yields, so its connection writes the
/// request at once and DynamoDB works on it while the next one is built.
async fn side_by_side<A, B, C>(
    a: A,
    b: B,
    c: C,
    sent: impl FnOnce(),
) -> (A::Output, B::Output, C::Output)
where
    A: Future,
    B: Future,
    C: Future,
{
    let (mut a, mut b, mut c) = (
        pin!(maybe_done(a)),
        pin!(maybe_done(b)),
        pin!(maybe_done(c)),
    );
    let _ = futures_util::poll!(a.as_mut());
    tokio::task::yield_now().await;
    let _ = futures_util::poll!(b.as_mut());
    tokio::task::yield_now().await;
    let _ = futures_util::poll!(c.as_mut());
    // What `sent` starts runs after the last request's connection has written it.
    sent();
    tokio::join!(a.as_mut(), b.as_mut(), c.as_mut());
    (
        // All three are done once joined.
        a.take_output().expect("a joined future has its output"),
        b.take_output().expect("a joined future has its output"),
        c.take_output().expect("a joined future has its output"),
    )
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
        live::release(state, id, answer).await;
    }
    ctx
}

/// A request that claimed the live slot but will not stream gives it back, and
/// its admission, so a refused request (or a replay) changes nothing.
pub(crate) async fn keep_slot_if_streaming(
    state: &AppState,
    id: Uuid,
    answer: Uuid,
    admission: &Admission,
    prepared: Result<Prepared, ApiError>,
) -> Result<Prepared, ApiError> {
    if !matches!(prepared, Ok(Prepared::Stream(_))) {
        tokio::join!(live::release(state, id, answer), admission.refund(state));
    }
    prepared
}

/// A request over a limit may still be the retry of one that was counted: its
/// `Idempotency-Key` record answers it (a replay, or 409 while it runs) without
/// counting it again. Any other refusal stands.
pub(crate) async fn replay_if_refused(
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

/// A digest of what a request asks for, so a retry can be told from a reuse of
/// its key for something else. `serde_json` maps are ordered, so it is stable.
pub(crate) fn fingerprint(
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
pub(crate) fn idempotency_key(
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
pub(crate) async fn claim(
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
