//! Per-user limit records (see [`crate::limits`]), one partition per user so no
//! partition is shared by everyone:
//!
//! | item                 | `pk`            | `sk`                 | attributes                     |
//! |----------------------|-----------------|----------------------|--------------------------------|
//! | messages this minute | `LIMIT#<user>`  | `M#<epoch minute>`   | `ids` (string set), `expires_at` (TTL) |
//! | messages this day    | `LIMIT#<user>`  | `D#<yyyy-mm-dd>`     | `n`, `expires_at` (TTL)        |
//! | answers generating   | `LIMIT#<user>`  | `ACTIVE`             | `answers` (string set), `expires_at` |
//!
//! A window's key names the window, so a counter never has to be reset: a new
//! window is a new item, and the old one expires by TTL.
//!
//! The minute's record is a set of short request ids rather than a number: an
//! SDK retry of an update that was applied (its response lost) then adds
//! nothing, so racing bursts are counted exactly. The day's record is a number
//! (a set of 500 ids would cost several write units per message); such a retry
//! can count a message twice there, which errs toward the user's quota by one.

use aws_sdk_dynamodb::types::AttributeValue;
use uuid::Uuid;

use super::{applied, classify, n, s, Store, StoreError};

const LIMIT_PREFIX: &str = "LIMIT#";
const ACTIVE_SK: &str = "ACTIVE";

/// A counting window of one user's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The window's sort key (`M#<epoch minute>` or `D#<yyyy-mm-dd>`).
    pub sk: String,
    /// Counted as a set of request ids (exact under retries) or as a number.
    pub exact: bool,
    /// How many messages it admits.
    pub limit: u32,
    /// When its record may go (epoch seconds).
    pub expires_at: i64,
}

/// One generating answer in a user's `ACTIVE` set: the answer and its
/// conversation, which says whether it is still live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeldAnswer {
    pub answer: Uuid,
    pub conversation: Uuid,
}

impl HeldAnswer {
    fn encode(&self) -> String {
        format!("{}/{}", self.answer, self.conversation)
    }

    fn decode(raw: &str) -> Option<Self> {
        let (answer, conversation) = raw.split_once('/')?;
        Some(Self {
            answer: Uuid::parse_str(answer).ok()?,
            conversation: Uuid::parse_str(conversation).ok()?,
        })
    }
}

/// A request's id in a minute's set: the last 12 hex digits of its UUIDv7 (48
/// random bits; one user's requests of one minute do not collide).
fn short_id(id: Uuid) -> String {
    let simple = id.simple().to_string();
    simple[simple.len() - 12..].to_owned()
}

fn limit_pk(user: Uuid) -> String {
    format!("{LIMIT_PREFIX}{user}")
}

impl Store {
    /// Counts request `id` in `window` if it has room: one conditional
    /// UpdateItem, atomic however many requests race. `false` when the window is
    /// full.
    pub async fn count_message(
        &self,
        user: Uuid,
        window: &Window,
        id: Uuid,
    ) -> Result<bool, StoreError> {
        let update = self
            .update_at(limit_pk(user), &window.sk)
            .expression_attribute_values(":limit", n(u64::from(window.limit)))
            .expression_attribute_values(":exp", AttributeValue::N(window.expires_at.to_string()));
        let update = if window.exact {
            update
                .update_expression("ADD ids :id SET expires_at = :exp")
                .condition_expression(
                    "attribute_not_exists(ids) OR size(ids) < :limit OR contains(ids, :one_id)",
                )
                .expression_attribute_values(":id", AttributeValue::Ss(vec![short_id(id)]))
                .expression_attribute_values(":one_id", s(short_id(id)))
        } else {
            update
                .update_expression("ADD n :one SET expires_at = :exp")
                .condition_expression("attribute_not_exists(n) OR n < :limit")
                .expression_attribute_values(":one", n(1))
        };
        applied(update.send().await.map_err(classify))
    }

    /// Takes back request `id` counted in `window` (it was refused for another
    /// reason). A number never goes below zero.
    pub async fn uncount_message(
        &self,
        user: Uuid,
        window: &Window,
        id: Uuid,
    ) -> Result<(), StoreError> {
        let update = self.update_at(limit_pk(user), &window.sk);
        let update = if window.exact {
            update
                .update_expression("DELETE ids :id")
                .condition_expression("attribute_exists(ids)")
                .expression_attribute_values(":id", AttributeValue::Ss(vec![short_id(id)]))
        } else {
            update
                .update_expression("ADD n :minus")
                .condition_expression("n > :zero")
                .expression_attribute_values(":minus", AttributeValue::N("-1".into()))
                .expression_attribute_values(":zero", n(0))
        };
        applied(update.send().await.map_err(classify)).map(|_| ())
    }

    /// Adds `held` to the user's generating answers if fewer than `cap` are
    /// there. `false` when the set is full.
    pub async fn hold_answer(
        &self,
        user: Uuid,
        held: HeldAnswer,
        cap: u32,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .update_at(limit_pk(user), ACTIVE_SK)
            .update_expression("ADD answers :held SET expires_at = :exp")
            // A retry of an applied update finds its own entry there.
            .condition_expression(
                "attribute_not_exists(answers) OR size(answers) < :cap OR contains(answers, :one)",
            )
            .expression_attribute_values(":held", AttributeValue::Ss(vec![held.encode()]))
            .expression_attribute_values(":one", s(held.encode()))
            .expression_attribute_values(":cap", n(u64::from(cap)))
            .expression_attribute_values(":exp", AttributeValue::N(expires_at.to_string()))
            .send()
            .await;
        applied(result.map_err(classify))
    }

    /// The user's generating answers, strongly consistent. Entries that do not
    /// parse are returned as they are, so they can be dropped.
    pub async fn held_answers(
        &self,
        user: Uuid,
    ) -> Result<(Vec<HeldAnswer>, Vec<String>), StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(limit_pk(user)))
            .key("sk", s(ACTIVE_SK))
            .projection_expression("answers")
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        let raw = match out.item().and_then(|item| item.get("answers")) {
            Some(AttributeValue::Ss(entries)) => entries.clone(),
            _ => Vec::new(),
        };
        let mut held = Vec::new();
        let mut unreadable = Vec::new();
        for entry in raw {
            match HeldAnswer::decode(&entry) {
                Some(h) => held.push(h),
                None => unreadable.push(entry),
            }
        }
        Ok((held, unreadable))
    }

    /// Removes answers (ended, or found dead) from the user's generating set.
    /// Removing one that is not there is fine.
    pub async fn drop_answers(
        &self,
        user: Uuid,
        held: &[HeldAnswer],
        unreadable: &[String],
    ) -> Result<(), StoreError> {
        let entries: Vec<String> = held
            .iter()
            .map(HeldAnswer::encode)
            .chain(unreadable.iter().cloned())
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let dropped = self
            .update_at(limit_pk(user), ACTIVE_SK)
            .update_expression("DELETE answers :gone")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":gone", AttributeValue::Ss(entries))
            .send()
            .await
            .map_err(classify);
        // No record: nothing to drop.
        applied(dropped).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_answers_round_trip_and_refuse_garbage() {
        let held = HeldAnswer {
            answer: Uuid::now_v7(),
            conversation: Uuid::new_v4(),
        };
        assert_eq!(HeldAnswer::decode(&held.encode()), Some(held));
        for bad in ["", "/", "x/y", &format!("{}", held.answer)] {
            assert_eq!(HeldAnswer::decode(bad), None, "{bad}");
        }
    }
}
