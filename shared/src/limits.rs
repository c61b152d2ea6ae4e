//! Per-user limits on what reaches the upstream (README "Per-user limits"):
//! messages per minute (a fixed window), messages per UTC day, and answers
//! generating at once.
//!
//! [`admit`] runs beside the chat Query and the live-slot claim, in the same
//! round trip: three conditional UpdateItems, one per record (`store::limits`),
//! each atomic however many requests race. A request every record admits holds
//! an [`Admission`]; when one record refuses, what the others counted is taken
//! back and the user gets 429 with `Retry-After`. A request refused for any
//! other reason, or answered from its `Idempotency-Key` record, gives its
//! admission back ([`Admission::refund`]); an answer that ends leaves the
//! generating set ([`Admission::finish`]).
//!
//! A function that dies leaves its answer in the user's generating set. When the
//! set is full, its entries are checked against their conversations' live
//! slots: an answer that no longer holds its slot, or whose slot is dead
//! ([`live::settle`]), leaves the set. So a dead function blocks one of the
//! user's places for at most `LIVE_STALE_AFTER_MS` after its last checkpoint.

use std::time::Duration;

use futures_util::future::join_all;
use tracing::warn;
use uuid::Uuid;

use crate::error::ApiError;
use crate::live;
use crate::state::AppState;
use crate::store::{HeldAnswer, StoreError, Window};
use crate::time_fmt;

/// The limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `RATE_LIMIT_PER_MINUTE`: messages per user per clock minute.
    pub per_minute: u32,
    /// `DAILY_MESSAGE_QUOTA`: messages per user per UTC day.
    pub per_day: u32,
    /// `MAX_CONCURRENT_ANSWERS`: answers generating at once per user.
    pub concurrent: u32,
}

/// What a refused user is told to wait, in seconds, when answers are
/// generating: answers usually end within seconds.
pub const CONCURRENT_RETRY_AFTER_SECS: u64 = 5;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PerMinute { limit: u32, retry_after: u64 },
    PerDay { limit: u32, retry_after: u64 },
    Concurrent { limit: u32 },
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let (detail, retry_after) = match refusal {
            Refusal::PerMinute { limit, retry_after } => (
                format!("rate limit reached: at most {limit} messages per minute"),
                retry_after,
            ),
            Refusal::PerDay { limit, retry_after } => (
                format!("daily quota reached: at most {limit} messages per UTC day"),
                retry_after,
            ),
            Refusal::Concurrent { limit } => (
                format!(
                    "too many answers generating: at most {limit} at once; \
                     stop one or wait for it to finish"
                ),
                CONCURRENT_RETRY_AFTER_SECS,
            ),
        };
        ApiError::TooManyRequests {
            detail,
            retry_after,
        }
    }
}

/// The windows a message sent at `now_secs` (Unix seconds) counts in, and how
/// long until each resets.
fn windows(limits: &Limits, now_secs: i64) -> [(Window, u64); 2] {
    let minute = now_secs.div_euclid(60);
    let day = now_secs.div_euclid(86_400);
    let day_name = time::OffsetDateTime::from_unix_timestamp(day * 86_400)
        .map(|d| d.date().to_string())
        .unwrap_or_default();
    let until = |end: i64| u64::try_from(end - now_secs).unwrap_or(1).max(1);
    [
        (
            Window {
                sk: format!("M#{minute}"),
                exact: true,
                limit: limits.per_minute,
                // An hour past its end: nothing reads it after the minute.
                expires_at: (minute + 1) * 60 + 3_600,
            },
            until((minute + 1) * 60),
        ),
        (
            Window {
                sk: format!("D#{day_name}"),
                exact: false,
                limit: limits.per_day,
                expires_at: (day + 2) * 86_400,
            },
            until((day + 1) * 86_400),
        ),
    ]
}

/// One request counted against its user's limits, one of whose generating
/// places it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    user: Uuid,
    held: HeldAnswer,
    counted_in: [Window; 2],
}

/// Counts the request and holds a generating place for `answer`, or says which
/// limit refuses it (429). Nothing stays counted when it is refused.
pub async fn admit(
    state: &AppState,
    user: Uuid,
    conversation: Uuid,
    answer: Uuid,
) -> Result<Admission, ApiError> {
    let limits = state.config.limits;
    let store = &state.store;
    let [(minute, minute_retry), (day, day_retry)] =
        windows(&limits, time_fmt::now().unix_timestamp());
    let held = HeldAnswer {
        answer,
        conversation,
    };
    let expires_at = held_expiry(state);
    let (by_minute, by_day, holds) = tokio::join!(
        store.count_message(user, &minute, answer),
        store.count_message(user, &day, answer),
        store.hold_answer(user, held, limits.concurrent, expires_at),
    );
    // The set is full: the slow path frees what dead functions left there, but
    // only for a request the counters admitted.
    let holds = match (&by_minute, &by_day, holds) {
        (Ok(true), Ok(true), Ok(false)) => free_dead_and_hold(state, user, held).await,
        (_, _, holds) => holds,
    };

    let admission = Admission {
        user,
        held,
        counted_in: [minute, day],
    };
    let refusal = match (&by_minute, &by_day, &holds) {
        (Ok(true), Ok(true), Ok(true)) => return Ok(admission),
        (_, Ok(false), _) => Some(Refusal::PerDay {
            limit: limits.per_day,
            retry_after: day_retry,
        }),
        (Ok(false), _, _) => Some(Refusal::PerMinute {
            limit: limits.per_minute,
            retry_after: minute_retry,
        }),
        (_, _, Ok(false)) => Some(Refusal::Concurrent {
            limit: limits.concurrent,
        }),
        _ => None,
    };
    // Take back whatever one record counted when another refused or failed.
    let counted = [&by_minute, &by_day].map(|c| c.as_ref().is_ok_and(|c| *c));
    let held_too = holds.as_ref().is_ok_and(|h| *h);
    admission.give_back(state, counted, held_too).await;
    match refusal {
        Some(refusal) => Err(refusal.into()),
        None => {
            let error = [by_minute, by_day, holds]
                .into_iter()
                .find_map(Result::err)
                .unwrap_or_else(|| StoreError::Other("limits".into()));
            Err(error.into())
        }
    }
}

impl Admission {
    /// The request was refused for another reason, or answered from its
    /// `Idempotency-Key` record: it does not count.
    pub async fn refund(&self, state: &AppState) {
        self.give_back(state, [true, true], true).await;
    }

    /// The answer ended (whatever its ending): it no longer generates.
    pub async fn finish(&self, state: &AppState) {
        self.give_back(state, [false, false], true).await;
    }

    /// Takes the request out of the windows marked in `counted`, and out of the
    /// generating set when `held`.
    async fn give_back(&self, state: &AppState, counted: [bool; 2], held: bool) {
        let store = &state.store;
        let uncount = self
            .counted_in
            .iter()
            .zip(counted)
            .filter(|(_, counted)| *counted)
            .map(|(window, _)| store.uncount_message(self.user, window, self.held.answer));
        let drop_held = async {
            if held {
                store.drop_answers(self.user, &[self.held], &[]).await
            } else {
                Ok(())
            }
        };
        let (uncounted, dropped) = tokio::join!(join_all(uncount), drop_held);
        // A count not taken back only errs toward the user's limit for the rest
        // of its window; a place not given back is freed once its answer is
        // found not live.
        if let Some(e) = uncounted.into_iter().chain([dropped]).find_map(Result::err) {
            warn!(error = %e, "limit records not given back");
        }
    }
}

/// How long the generating set is kept after its last change: past the longest
/// an answer can live.
fn held_expiry(state: &AppState) -> i64 {
    let longest = state.config.inference_deadline + state.config.live_stale_after;
    let longest = i64::try_from(longest.as_secs()).unwrap_or(i64::MAX / 2);
    time_fmt::now().unix_timestamp() + longest + 3_600
}

/// The slow path of a full generating set: looks for an answer that is no
/// longer live, oldest first (the likeliest dead), and stops at the first one:
/// one free place is all this request needs. Then tries to hold `held` again.
async fn free_dead_and_hold(
    state: &AppState,
    user: Uuid,
    held: HeldAnswer,
) -> Result<bool, StoreError> {
    let (mut entries, unreadable) = state.store.held_answers(user).await?;
    entries.sort_by_key(|h| id_ms(h.answer));
    let mut dead = None;
    for entry in entries {
        if is_dead(state, user, entry).await? {
            dead = Some(entry);
            break;
        }
    }
    if dead.is_none() && unreadable.is_empty() {
        return Ok(false);
    }
    let dead: Vec<HeldAnswer> = dead.into_iter().collect();
    state.store.drop_answers(user, &dead, &unreadable).await?;
    let limits = state.config.limits;
    state
        .store
        .hold_answer(user, held, limits.concurrent, held_expiry(state))
        .await
}

/// Is a held answer over? A young one is taken as live: its request may still
/// be claiming its conversation's slot, beside its admission.
async fn is_dead(state: &AppState, user: Uuid, held: HeldAnswer) -> Result<bool, StoreError> {
    let age = Duration::from_millis(time_fmt::now_ms().saturating_sub(id_ms(held.answer)));
    if age < state.config.live_stale_after {
        return Ok(false);
    }
    let Some(conversation) = state
        .store
        .get_conversation(user, held.conversation)
        .await?
    else {
        return Ok(true);
    };
    match &conversation.live {
        Some(slot) if slot.id == held.answer => live::settle(state, &conversation, slot).await,
        _ => Ok(true),
    }
}

/// The creation time (epoch ms) a UUIDv7 answer id carries; 0 for any other id.
fn id_ms(id: Uuid) -> u64 {
    id.get_timestamp().map_or(0, |ts| {
        let (secs, nanos) = ts.to_unix();
        secs * 1000 + u64::from(nanos) / 1_000_000
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        per_minute: 20,
        per_day: 500,
        concurrent: 2,
    };

    #[test]
    fn windows_are_named_by_their_start_and_say_when_they_reset() {
        // 2026-12-01T16:09:20Z
        let now = 1_796_141_360;
        let [(minute, minute_retry), (day, day_retry)] = windows(&LIMITS, now);
        assert_eq!(minute.sk, format!("M#{}", now / 60));
        assert_eq!(minute.limit, 20);
        assert_eq!(minute_retry, 40);
        assert_eq!(day.sk, "D#2026-12-01");
        assert_eq!(day.limit, 500);
        assert_eq!(day_retry, 86_400 - (16 * 3600 + 9 * 60 + 20));
        assert!(minute.expires_at > now && day.expires_at > now + 86_400);
    }

    #[test]
    fn a_window_boundary_starts_a_new_window() {
        let midnight = 1_796_169_600; // 2026-12-02T00:00:00Z
        let [(before_m, before_retry), (before_d, _)] = windows(&LIMITS, midnight - 1);
        let [(after_m, after_retry), (after_d, after_day_retry)] = windows(&LIMITS, midnight);
        assert_ne!(before_m.sk, after_m.sk);
        assert_eq!(
            (before_d.sk.as_str(), after_d.sk.as_str()),
            ("D#2026-12-01", "D#2026-12-02")
        );
        assert_eq!((before_retry, after_retry), (1, 60));
        assert_eq!(after_day_retry, 86_400);
    }

    #[test]
    fn refusals_name_the_limit_and_the_wait() {
        let cases = [
            (
                Refusal::PerMinute {
                    limit: 10,
                    retry_after: 7,
                },
                "10 messages per minute",
                7,
            ),
            (
                Refusal::PerDay {
                    limit: 500,
                    retry_after: 3600,
                },
                "500 messages per UTC day",
                3600,
            ),
            (
                Refusal::Concurrent { limit: 2 },
                "at most 2 at once",
                CONCURRENT_RETRY_AFTER_SECS,
            ),
        ];
        for (refusal, says, wait) in cases {
            let err = ApiError::from(refusal);
            assert_eq!(err.status(), http::StatusCode::TOO_MANY_REQUESTS);
            assert!(err.detail().contains(says), "{}", err.detail());
            assert_eq!(err.retry_after(), Some(wait));
        }
    }

    #[test]
    fn answer_ids_carry_their_creation_time() {
        let before = time_fmt::now_ms();
        let id = Uuid::now_v7();
        assert!(id_ms(id) + 1 >= before && id_ms(id) <= time_fmt::now_ms());
        assert_eq!(id_ms(Uuid::new_v4()), 0);
    }
}
