//! Per-user limit record (the rules are `domain::limits`): one item per user, in its own
//! partition, so no partition is shared by everyone and every limit is checked
//! and counted by one conditional UpdateItem.
//!
//! | `pk`           | `sk`     | attributes |
//! |----------------|----------|------------|
//! | `LIMIT#<user>` | `LIMITS` | `min_<epoch minute>` (string set of request ids), `day_<yyyy-mm-dd>` (number), `answers` (string set of `<answer>/<conversation>`), `expires_at` (TTL) |
//!
//! A window's attribute names the window, so a counter is never reset: a new
//! window is a new attribute. Attributes of past windows are removed when an
//! answer ends ([`Store::release_answers`]), so the item stays a few hundred
//! bytes (one write unit).
//!
//! The minute's attribute is a set of short request ids rather than a number,
//! and the update counts a request only if its id is not already in that set:
//! an SDK retry of an update that was applied (its response lost) then changes
//! nothing, so the minute and the day are both counted exactly however many
//! requests race or retry; a refund is likewise applied at most once.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use uuid::Uuid;

use super::{applied, classify, n, s, Store, StoreError};

const LIMIT_PREFIX: &str = "LIMIT#";
/// The sort key of a user's limit record.
pub const LIMITS_SK: &str = "LIMITS";
const MINUTE_PREFIX: &str = "min_";
const DAY_PREFIX: &str = "day_";

/// The windows and limits one request is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    /// The clock minute since the Unix epoch.
    pub minute: i64,
    /// The UTC day, `yyyy-mm-dd`.
    pub day: String,
    pub per_minute: u32,
    pub per_day: u32,
    pub concurrent: u32,
    /// When the record may go (epoch seconds): past the day's end and past the
    /// longest an answer can live.
    pub expires_at: i64,
}

impl Windows {
    fn minute_attr(&self) -> String {
        format!("{MINUTE_PREFIX}{}", self.minute)
    }

    fn day_attr(&self) -> String {
        format!("{DAY_PREFIX}{}", self.day)
    }
}

/// One generating answer in a user's `answers` set: the answer and its
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

/// A user's limit record as one request's windows see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitRecord {
    /// Requests counted in the request's minute.
    pub this_minute: usize,
    /// Whether the request itself is among them.
    pub counts_request: bool,
    /// Messages counted in the request's day.
    pub today: u64,
    /// Answers generating, and entries that do not parse (to be dropped).
    pub held: Vec<HeldAnswer>,
    pub unreadable: Vec<String>,
    /// Attributes of windows that are over: minutes more than two minutes
    /// before the request's (no refund can still need them) and days before its
    /// day.
    pub past_windows: Vec<String>,
}

impl LimitRecord {
    fn read(item: &HashMap<String, AttributeValue>, windows: &Windows, id: &str) -> Self {
        let mut record = Self::default();
        let (minute_attr, day_attr) = (windows.minute_attr(), windows.day_attr());
        for (name, value) in item {
            if *name == minute_attr {
                if let AttributeValue::Ss(ids) = value {
                    record.this_minute = ids.len();
                    record.counts_request = ids.iter().any(|i| i == id);
                }
            } else if *name == day_attr {
                if let AttributeValue::N(count) = value {
                    record.today = count.parse().unwrap_or(u64::MAX);
                }
            } else if name == "answers" {
                if let AttributeValue::Ss(entries) = value {
                    for entry in entries {
                        match HeldAnswer::decode(entry) {
                            Some(h) => record.held.push(h),
                            None => record.unreadable.push(entry.clone()),
                        }
                    }
                }
            } else if let Some(minute) = name.strip_prefix(MINUTE_PREFIX) {
                if minute.parse::<i64>().is_ok_and(|m| m < windows.minute - 2) {
                    record.past_windows.push(name.clone());
                }
            } else if let Some(day) = name.strip_prefix(DAY_PREFIX) {
                // ISO dates order as strings.
                if day < windows.day.as_str() {
                    record.past_windows.push(name.clone());
                }
            }
        }
        record.past_windows.sort();
        record
    }
}

/// What counting a request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counted {
    /// Counted, and its answer holds a generating place; the record before.
    Admitted(LimitRecord),
    /// Refused: the record as it was, which says which limit is reached.
    Full(LimitRecord),
}

/// A request's id in a minute's set: the last 12 hex digits of its UUIDv7 (48
/// random bits; one user's requests of one minute do not collide).
fn short_id(id: Uuid) -> String {
    let simple = id.simple().to_string();
    simple[simple.len() - 12..].to_owned()
}

/// The partition key of a user's limit record.
pub fn limit_pk(user: Uuid) -> String {
    format!("{LIMIT_PREFIX}{user}")
}

impl Store {
    /// Counts request `id` in its minute and day and holds a generating place
    /// for `held`, if every limit has room: one conditional UpdateItem, atomic
    /// however many requests race. A retry of an update that was applied finds
    /// its id in the minute and reports it admitted, counting nothing again.
    pub async fn count_request(
        &self,
        user: Uuid,
        windows: &Windows,
        id: Uuid,
        held: HeldAnswer,
    ) -> Result<Counted, StoreError> {
        let id = short_id(id);
        let result = self
            .update_at(limit_pk(user), LIMITS_SK)
            .update_expression("ADD #m :ids, #d :one, answers :held SET expires_at = :exp")
            .condition_expression(
                "NOT contains(#m, :id) \
                 AND (attribute_not_exists(#m) OR size(#m) < :per_minute) \
                 AND (attribute_not_exists(#d) OR #d < :per_day) \
                 AND (attribute_not_exists(answers) OR size(answers) < :concurrent)",
            )
            .expression_attribute_names("#m", windows.minute_attr())
            .expression_attribute_names("#d", windows.day_attr())
            .expression_attribute_values(":ids", AttributeValue::Ss(vec![id.clone()]))
            .expression_attribute_values(":id", s(id.clone()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":held", AttributeValue::Ss(vec![held.encode()]))
            .expression_attribute_values(":exp", AttributeValue::N(windows.expires_at.to_string()))
            .expression_attribute_values(":per_minute", n(u64::from(windows.per_minute)))
            .expression_attribute_values(":per_day", n(u64::from(windows.per_day)))
            .expression_attribute_values(":concurrent", n(u64::from(windows.concurrent)))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let before = out.attributes().cloned().unwrap_or_default();
                Ok(Counted::Admitted(LimitRecord::read(&before, windows, &id)))
            }
            Err(err) => {
                let refused_item = match &err {
                    aws_sdk_dynamodb::error::SdkError::ServiceError(service) => {
                        match service.err() {
                            UpdateItemError::ConditionalCheckFailedException(failed) => {
                                Some(failed.item().cloned().unwrap_or_default())
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                };
                let Some(item) = refused_item else {
                    return Err(classify(err));
                };
                let record = LimitRecord::read(&item, windows, &id);
                // Its own earlier attempt was applied.
                if record.counts_request {
                    Ok(Counted::Admitted(record))
                } else {
                    Ok(Counted::Full(record))
                }
            }
        }
    }

    /// Takes request `id` back out of its minute, day and generating set (it
    /// was refused for another reason). Applied at most once: only while the
    /// minute still holds its id.
    pub async fn uncount_request(
        &self,
        user: Uuid,
        windows: &Windows,
        id: Uuid,
        held: HeldAnswer,
    ) -> Result<(), StoreError> {
        let id = short_id(id);
        let update = self
            .update_at(limit_pk(user), LIMITS_SK)
            .update_expression("DELETE #m :ids, answers :held ADD #d :minus")
            .condition_expression("contains(#m, :id) AND #d > :zero")
            .expression_attribute_names("#m", windows.minute_attr())
            .expression_attribute_names("#d", windows.day_attr())
            .expression_attribute_values(":ids", AttributeValue::Ss(vec![id.clone()]))
            .expression_attribute_values(":id", s(id))
            .expression_attribute_values(":held", AttributeValue::Ss(vec![held.encode()]))
            .expression_attribute_values(":minus", AttributeValue::N("-1".into()))
            .expression_attribute_values(":zero", n(0));
        applied(update.send().await.map_err(classify)).map(|_| ())
    }

    /// Removes answers (ended, or found dead) and unreadable entries from the
    /// user's generating set, and the attributes of windows that are over.
    /// Removing what is not there is fine.
    pub async fn release_answers(
        &self,
        user: Uuid,
        held: &[HeldAnswer],
        unreadable: &[String],
        past_windows: &[String],
    ) -> Result<(), StoreError> {
        let entries: Vec<String> = held
            .iter()
            .map(HeldAnswer::encode)
            .chain(unreadable.iter().cloned())
            .collect();
        let mut expression = String::new();
        let mut update = self.update_at(limit_pk(user), LIMITS_SK);
        if !entries.is_empty() {
            expression.push_str("DELETE answers :gone");
            update = update.expression_attribute_values(":gone", AttributeValue::Ss(entries));
        }
        for (i, name) in past_windows.iter().enumerate() {
            expression.push_str(if i == 0 { " REMOVE " } else { ", " });
            expression.push_str(&format!("#w{i}"));
            update = update.expression_attribute_names(format!("#w{i}"), name);
        }
        if expression.is_empty() {
            return Ok(());
        }
        let released = update
            .update_expression(expression.trim_start())
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .map_err(classify);
        // No record: nothing to release.
        applied(released).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows() -> Windows {
        Windows {
            minute: 1_000,
            day: "2026-12-01".into(),
            per_minute: 20,
            per_day: 500,
            concurrent: 2,
            expires_at: 0,
        }
    }

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

    #[test]
    fn a_record_is_read_for_the_request_windows() {
        let held = HeldAnswer {
            answer: Uuid::now_v7(),
            conversation: Uuid::new_v4(),
        };
        let set = |v: &[&str]| AttributeValue::Ss(v.iter().map(|s| (*s).to_owned()).collect());
        let item = HashMap::from([
            ("pk".to_owned(), s("LIMIT#u")),
            ("sk".to_owned(), s(LIMITS_SK)),
            ("min_1000".to_owned(), set(&["aaa", "bbb"])),
            ("min_999".to_owned(), set(&["ccc"])),
            ("min_998".to_owned(), set(&["ddd"])),
            ("min_997".to_owned(), set(&["eee"])),
            ("day_2026-12-01".to_owned(), n(7)),
            ("day_2026-11-30".to_owned(), n(3)),
            ("answers".to_owned(), set(&[&held.encode(), "junk"])),
            ("expires_at".to_owned(), n(5)),
        ]);
        let record = LimitRecord::read(&item, &windows(), "bbb");
        assert_eq!(record.this_minute, 2);
        assert!(record.counts_request);
        assert_eq!(record.today, 7);
        assert_eq!(record.held, vec![held]);
        assert_eq!(record.unreadable, vec!["junk".to_owned()]);
        assert_eq!(record.past_windows, vec!["day_2026-11-30", "min_997"]);
        assert!(!LimitRecord::read(&item, &windows(), "zzz").counts_request);
        assert_eq!(
            LimitRecord::read(&HashMap::new(), &windows(), "a"),
            LimitRecord::default()
        );
    }
}
