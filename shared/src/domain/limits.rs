//! Per-user limits on what reaches the upstream (`docs/limits.md`):
//! messages per minute (a fixed window), messages per UTC day, and answers
//! generating at once.
//!
//! [`admit`] runs beside the chat Query and the live-slot claim, in the same
//! round trip: one conditional UpdateItem of the user's limit record
//! (`store::limits`), atomic however many requests race, checks all three
//! limits and counts the request only if all have room. An admitted request
//! holds an [`Admission`]; a refused one changes nothing, and the record as it
//! was says which limit refused it (429 with `Retry-After`). A request refused
//! for any other reason, or answered from its `Idempotency-Key` record, gives
//! its admission back ([`Admission::refund`]); an answer that ends leaves the
//! generating set ([`Admission::finish`]).
//!
//! A function that dies leaves its answer in the user's generating set. When the
//! set is full, its entries are checked against their conversations' live
//! slots: an answer that no longer holds its slot, or whose slot is dead
//! ([`live::settle`]), leaves the set. So a dead function blocks one of the
//! user's places for at most `LIVE_STALE_AFTER_MS` after its last checkpoint.

use std::time::Duration;

use tracing::warn;
use uuid::Uuid;

use crate::adapters::state::AppState;
use crate::adapters::store::{Counted, HeldAnswer, LimitRecord, StoreError, Windows};
use crate::domain::live;
use crate::foundation::config::Limits;
use crate::foundation::error::ApiError;
use crate::foundation::time_fmt;

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
/// long until the minute and the day reset. The record is kept `keep_secs`
/// past the day's end.
fn windows(limits: &Limits, now_secs: i64, keep_secs: i64) -> (Windows, u64, u64) {
    let minute = now_secs.div_euclid(60);
    let day = now_secs.div_euclid(86_400);
    let day_name = time::OffsetDateTime::from_unix_timestamp(day * 86_400)
        .map(|d| d.date().to_string())
        .unwrap_or_default();
    let until = |end: i64| u64::try_from(end - now_secs).unwrap_or(1).max(1);
    let windows = Windows {
        minute,
        day: day_name,
        per_minute: limits.per_minute,
        per_day: limits.per_day,
        concurrent: limits.concurrent,
        expires_at: (day + 1) * 86_400 + keep_secs,
    };
    (windows, until((minute + 1) * 60), until((day + 1) * 86_400))
}

/// One request counted against its user's limits, one of whose generating
/// places it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    user: Uuid,
    held: HeldAnswer,
    windows: Windows,
    /// Attributes of windows that were over when it was admitted, removed when
    /// its answer ends.
    past_windows: Vec<String>,
}

/// Counts the request and holds a generating place for `answer`, or says which
/// limit refuses it (429). A refused request changes nothing.
pub async fn admit(
    state: &AppState,
    user: Uuid,
    conversation: Uuid,
    answer: Uuid,
) -> Result<Admission, ApiError> {
    let limits = state.config.limits;
    let (windows, minute_retry, day_retry) = windows(
        &limits,
        time_fmt::now().unix_timestamp(),
        held_for_secs(state),
    );
    let held = HeldAnswer {
        answer,
        conversation,
    };
    // At most one more attempt: after a dead function's place was freed.
    let mut retried = false;
    loop {
        let record = match state
            .store
            .count_request(user, &windows, answer, held)
            .await?
        {
            Counted::Admitted(record) => {
                return Ok(Admission {
                    user,
                    held,
                    windows,
                    past_windows: record.past_windows,
                })
            }
            Counted::Full(record) => record,
        };
        let refusal = if record.today >= u64::from(limits.per_day) {
            Refusal::PerDay {
                limit: limits.per_day,
                retry_after: day_retry,
            }
        } else if record.this_minute >= limits.per_minute as usize {
            Refusal::PerMinute {
                limit: limits.per_minute,
                retry_after: minute_retry,
            }
        } else if record.held.len() + record.unreadable.len() >= limits.concurrent as usize {
            // The set is full: the slow path frees what dead functions left
            // there, then this request tries again.
            if !retried && free_dead(state, user, &record).await? {
                retried = true;
                continue;
            }
            Refusal::Concurrent {
                limit: limits.concurrent,
            }
        } else if !retried {
            // The record changed between the condition and its read-back
            // (DynamoDB returns the item the condition saw, so only a store
            // that does not would get here): try once more.
            retried = true;
            continue;
        } else {
            return Err(StoreError::Other("limits: refused with room left".into()).into());
        };
        return Err(refusal.into());
    }
}

impl Admission {
    /// The request was refused for another reason, or answered from its
    /// `Idempotency-Key` record: it does not count.
    pub async fn refund(&self, state: &AppState) {
        let refunded = state
            .store
            .uncount_request(self.user, &self.windows, self.held.answer, self.held)
            .await;
        // A count not taken back only errs toward the user's limit for the rest
        // of its window; a place not given back is freed once its answer is
        // found not live.
        if let Err(e) = refunded {
            warn!(error = %e, "limit record not given back");
        }
    }

    /// The answer ended (whatever its ending): it no longer generates, and the
    /// windows that were over when it was admitted leave the record.
    pub async fn finish(&self, state: &AppState) {
        let released = state
            .store
            .release_answers(self.user, &[self.held], &[], &self.past_windows)
            .await;
        if let Err(e) = released {
            warn!(error = %e, "generating place not given back");
        }
    }
}

/// How long the record is kept after its last change (seconds): past the
/// longest an answer can live.
fn held_for_secs(state: &AppState) -> i64 {
    let longest = state.config.inference_deadline + state.config.live_stale_after;
    i64::try_from(longest.as_secs()).unwrap_or(i64::MAX / 2) + 3_600
}

/// The slow path of a full generating set: looks for an answer that is no
/// longer live, oldest first (the likeliest dead), and stops at the first one:
/// one free place is all this request needs. Drops it, and any entry that does
/// not parse; `true` if a place was freed.
async fn free_dead(state: &AppState, user: Uuid, record: &LimitRecord) -> Result<bool, StoreError> {
    let mut entries = record.held.clone();
    entries.sort_by_key(|h| id_ms(h.answer));
    let mut dead = None;
    for entry in entries {
        if is_dead(state, user, entry).await? {
            dead = Some(entry);
            break;
        }
    }
    if dead.is_none() && record.unreadable.is_empty() {
        return Ok(false);
    }
    let dead: Vec<HeldAnswer> = dead.into_iter().collect();
    state
        .store
        .release_answers(user, &dead, &record.unreadable, &[])
        .await?;
    Ok(true)
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
        let (w, minute_retry, day_retry) = windows(&LIMITS, now, 100);
        assert_eq!(w.minute, now / 60);
        assert_eq!(w.day, "2026-12-01");
        assert_eq!((w.per_minute, w.per_day, w.concurrent), (20, 500, 2));
        assert_eq!(minute_retry, 40);
        assert_eq!(day_retry, 86_400 - (16 * 3600 + 9 * 60 + 20));
        assert_eq!(w.expires_at, now + i64::try_from(day_retry).unwrap() + 100);
    }

    #[test]
    fn a_window_boundary_starts_a_new_window() {
        let midnight = 1_796_169_600; // 2026-12-02T00:00:00Z
        let (before, before_retry, _) = windows(&LIMITS, midnight - 1, 0);
        let (after, after_retry, after_day_retry) = windows(&LIMITS, midnight, 0);
        assert_eq!(after.minute, before.minute + 1);
        assert_eq!(
            (before.day.as_str(), after.day.as_str()),
            ("2026-12-01", "2026-12-02")
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
