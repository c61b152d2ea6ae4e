//! Live answers: the slot on the conversation item and the checkpoint items.
//!
//! While an answer streams, the conversation item carries its slot (`live_id`,
//! `live_at`, `live_deadline`, and `live_stop` once a stop was asked for); the
//! answer's text goes to checkpoint items `L#<answer id>#<seq>` in the same
//! partition, each holding only the text since the previous one, so a checkpoint
//! costs one write unit whatever the length of the answer. `L#` sorts before
//! `M#`, so the chat Query (`sk` from `M#` to `META`) never reads them.
//!
//! The last checkpoint of an answer carries `end`: the events its stream ended
//! with, written after the answer itself was stored. Checkpoints expire by TTL;
//! nobody deletes them one by one (deletes would cost as much as the writes).

use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
use serde_json::Value;
use uuid::Uuid;

use super::{
    applied, build_err, classify, conversation_pk, message_sk, n, num_attr, s, str_attr,
    Conversation, Item, Message, MessageStatus, Store, StoreError, TxFailure, META_SK,
};
use crate::foundation::role::Role;
use crate::foundation::time_fmt;

const LIVE_PREFIX: &str = "L#";
/// The update that empties a conversation's live slot.
const RELEASE: &str = "REMOVE live_id, live_at, live_deadline, live_stop";
/// How long checkpoint items are kept after they are written. A dead answer is
/// settled from them, so they must outlive any realistic wait for a next request;
/// after that DynamoDB's TTL sweep removes them without consuming write units.
pub const CHECKPOINT_TTL_SECS: u64 = 7 * 24 * 3600;

/// The answer a conversation is generating, as its item records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSlot {
    pub id: Uuid,
    /// When the slot was claimed, epoch milliseconds.
    pub since_ms: u64,
    /// After this (epoch milliseconds) the answer is over whatever its checkpoints say.
    pub deadline_ms: u64,
    pub stop_requested: bool,
}

impl LiveSlot {
    pub(super) fn from_item(item: &Item) -> Option<Self> {
        let id = str_attr(item, "live_id").and_then(|v| Uuid::parse_str(v).ok())?;
        Some(Self {
            id,
            since_ms: num_attr(item, "live_at").unwrap_or(0),
            deadline_ms: num_attr(item, "live_deadline").unwrap_or(0),
            stop_requested: str_attr(item, "live_stop") == Some(id.to_string().as_str()),
        })
    }
}

/// What a claim of the conversation's live slot found.
#[derive(Debug)]
pub enum SlotClaim {
    Claimed,
    /// Another answer holds the slot (it may be dead: the caller decides).
    Busy(Conversation),
    /// No such conversation, or not the user's.
    Missing,
}

/// What a generating function learns when it looks at its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Live {
        stop_requested: bool,
    },
    /// The slot holds another answer or none: this one was settled by someone else.
    Lost,
    /// The conversation was deleted.
    Gone,
}

/// One checkpoint: the text since the previous one.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub seq: u32,
    pub text: String,
    /// Token events received up to this checkpoint.
    pub tokens: u64,
    pub at_ms: u64,
    /// The events the stream ended with, on the last checkpoint only.
    pub end: Option<Vec<Value>>,
}

/// How a message write relates to the live slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotGuard {
    /// No condition on the slot.
    Free,
    /// The slot must still hold this answer.
    Holds(Uuid),
    /// The slot must hold this answer, and is released by the write.
    Ends(Uuid),
}

impl SlotGuard {
    /// The condition and update clauses to add to a conversation update.
    pub(super) fn clauses(self) -> (Option<&'static str>, Option<&'static str>, Option<Uuid>) {
        match self {
            Self::Free => (None, None, None),
            Self::Holds(id) => (Some("live_id = :live"), None, Some(id)),
            Self::Ends(id) => (Some("live_id = :live"), Some(RELEASE), Some(id)),
        }
    }
}

fn checkpoint_sk(answer: Uuid, seq: u32) -> String {
    format!("{LIVE_PREFIX}{answer}#{seq:08}")
}

/// Every checkpoint key of `answer` is within `[L#<id>#, L#<id>#~]`.
fn checkpoint_range(answer: Uuid) -> (String, String) {
    (
        format!("{LIVE_PREFIX}{answer}#"),
        format!("{LIVE_PREFIX}{answer}#~"),
    )
}

fn checkpoint_item(conversation: Uuid, answer: Uuid, c: &Checkpoint) -> Item {
    let mut item = Item::from([
        ("pk".to_owned(), s(conversation_pk(conversation))),
        ("sk".to_owned(), s(checkpoint_sk(answer, c.seq))),
        ("tokens".to_owned(), n(c.tokens)),
        ("at".to_owned(), n(c.at_ms)),
        (
            "expires_at".to_owned(),
            n(c.at_ms / 1000 + CHECKPOINT_TTL_SECS),
        ),
    ]);
    if !c.text.is_empty() {
        item.insert("text".to_owned(), s(&c.text));
    }
    if let Some(end) = &c.end {
        item.insert("end".to_owned(), s(Value::Array(end.clone()).to_string()));
    }
    item
}

fn checkpoint_from(item: &Item) -> Result<Checkpoint, StoreError> {
    let seq = str_attr(item, "sk")
        .and_then(|sk| sk.rsplit('#').next())
        .and_then(|seq| seq.parse().ok())
        .ok_or(StoreError::Corrupt("checkpoint sk"))?;
    let end = match str_attr(item, "end") {
        Some(raw) => {
            Some(serde_json::from_str(raw).map_err(|_| StoreError::Corrupt("checkpoint end"))?)
        }
        None => None,
    };
    Ok(Checkpoint {
        seq,
        text: str_attr(item, "text").unwrap_or_default().to_owned(),
        tokens: num_attr(item, "tokens").unwrap_or(0),
        at_ms: num_attr(item, "at").unwrap_or(0),
        end,
    })
}

impl Store {
    /// Claims the conversation's live slot for `answer`, if the conversation is
    /// `user`'s and no answer holds it. One UpdateItem; when it fails, one GetItem
    /// says why.
    pub async fn claim_slot(
        &self,
        user: Uuid,
        conversation: Uuid,
        answer: Uuid,
        deadline_ms: u64,
    ) -> Result<SlotClaim, StoreError> {
        let claimed = self
            .update_at(conversation_pk(conversation), META_SK)
            .condition_expression(
                "attribute_exists(pk) AND user_id = :u AND attribute_not_exists(live_id)",
            )
            .update_expression(
                "SET live_id = :a, live_at = :now, live_deadline = :deadline REMOVE live_stop",
            )
            .expression_attribute_values(":u", s(user.to_string()))
            .expression_attribute_values(":a", s(answer.to_string()))
            .expression_attribute_values(":now", n(time_fmt::now_ms()))
            .expression_attribute_values(":deadline", n(deadline_ms))
            .send()
            .await
            .map_err(classify);
        match claimed {
            Ok(_) => Ok(SlotClaim::Claimed),
            // Busy with another answer, or released between the two requests
            // (`live` empty): the caller settles or simply retries. Busy with
            // this very answer: an earlier attempt of this update was applied and
            // its response lost (the SDK retried it), so the slot is ours.
            Err(StoreError::NotFound) => match self.get_conversation(user, conversation).await? {
                Some(c) if c.live.as_ref().is_some_and(|slot| slot.id == answer) => {
                    Ok(SlotClaim::Claimed)
                }
                Some(c) => Ok(SlotClaim::Busy(c)),
                None => Ok(SlotClaim::Missing),
            },
            Err(e) => Err(e),
        }
    }

    /// Empties the slot if it still holds `answer` (a claim whose request was then
    /// refused, an answer that stored nothing, an ended one); `false` when it no
    /// longer did, which is fine too.
    pub async fn release_slot(&self, conversation: Uuid, answer: Uuid) -> Result<bool, StoreError> {
        let released = self
            .update_at(conversation_pk(conversation), META_SK)
            .condition_expression("live_id = :a")
            .update_expression(RELEASE)
            .expression_attribute_values(":a", s(answer.to_string()))
            .send()
            .await
            .map_err(classify);
        applied(released)
    }

    /// Records a stop for `answer`; `false` when the slot no longer holds it.
    pub async fn request_stop(
        &self,
        user: Uuid,
        conversation: Uuid,
        answer: Uuid,
    ) -> Result<bool, StoreError> {
        let result = self
            .update_at(conversation_pk(conversation), META_SK)
            .condition_expression("user_id = :u AND live_id = :a")
            .update_expression("SET live_stop = :a")
            .expression_attribute_values(":u", s(user.to_string()))
            .expression_attribute_values(":a", s(answer.to_string()))
            .send()
            .await
            .map_err(classify);
        applied(result)
    }

    /// Is `answer` still the live answer, and was it asked to stop: one GetItem
    /// of the conversation item (strongly consistent for the generating function;
    /// eventually, at half the price, for a resumed reader).
    pub async fn slot_state(
        &self,
        conversation: Uuid,
        answer: Uuid,
        consistent: bool,
    ) -> Result<SlotState, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(conversation_pk(conversation)))
            .key("sk", s(META_SK))
            .projection_expression("live_id, live_stop")
            .consistent_read(consistent)
            .send()
            .await
            .map_err(classify)?;
        let Some(item) = out.item() else {
            return Ok(SlotState::Gone);
        };
        let me = answer.to_string();
        if str_attr(item, "live_id") != Some(me.as_str()) {
            return Ok(SlotState::Lost);
        }
        Ok(SlotState::Live {
            stop_requested: str_attr(item, "live_stop") == Some(me.as_str()),
        })
    }

    /// Writes one checkpoint (a PutItem; writing the same `seq` again replaces it,
    /// which is how a write whose response was lost is retried).
    pub async fn put_checkpoint(
        &self,
        conversation: Uuid,
        answer: Uuid,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(checkpoint_item(conversation, answer, checkpoint)))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// A checkpoint's Put, for a transaction (an answer's last checkpoint goes
    /// with the answer itself).
    pub fn checkpoint_put(
        &self,
        conversation: Uuid,
        answer: Uuid,
        checkpoint: &Checkpoint,
    ) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(checkpoint_item(conversation, answer, checkpoint)))
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Empties the slot if it still holds `answer` and writes the answer's last
    /// checkpoint, in one transaction (an answer that stored nothing). Already
    /// released (settled by someone else) is fine: that one wrote its own.
    pub async fn release_slot_with(
        &self,
        conversation: Uuid,
        answer: Uuid,
        last: &Checkpoint,
    ) -> Result<(), StoreError> {
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(conversation_pk(conversation)))
            .key("sk", s(META_SK))
            .condition_expression("live_id = :a")
            .update_expression(RELEASE)
            .expression_attribute_values(":a", s(answer.to_string()))
            .build()
            .map_err(build_err)?;
        let items = vec![
            TransactWriteItem::builder().update(update).build(),
            self.checkpoint_put(conversation, answer, last)?,
        ];
        match self.transact(items).await {
            Ok(()) | Err(TxFailure::ConditionFailed(_)) => Ok(()),
            Err(TxFailure::Store(e)) => Err(e),
        }
    }

    /// The checkpoints of `answer` after `after` (all when `None`), in order,
    /// following the Query's pages. Eventually consistent reads cost half.
    pub async fn checkpoints(
        &self,
        conversation: Uuid,
        answer: Uuid,
        after: Option<u32>,
        consistent: bool,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let (from, to) = checkpoint_range(answer);
        let from = match after {
            // `sk > L#<id>#<seq>`: BETWEEN is inclusive, so start just past it.
            Some(seq) => format!("{}!", checkpoint_sk(answer, seq)),
            None => from,
        };
        let items = self
            .query_all(|| {
                self.client
                    .query()
                    .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                    .expression_attribute_values(":pk", s(conversation_pk(conversation)))
                    .expression_attribute_values(":from", s(&from))
                    .expression_attribute_values(":to", s(&to))
                    .consistent_read(consistent)
            })
            .await?;
        items.iter().map(checkpoint_from).collect()
    }

    /// Deletes the first `count` checkpoints of `answer`: a function whose
    /// conversation was deleted under it removes what it wrote after the delete.
    pub async fn delete_checkpoints(
        &self,
        conversation: Uuid,
        answer: Uuid,
        count: u32,
    ) -> Result<(), StoreError> {
        let keys: Vec<Item> = (0..count)
            .map(|seq| {
                Item::from([
                    ("pk".to_owned(), s(conversation_pk(conversation))),
                    ("sk".to_owned(), s(checkpoint_sk(answer, seq))),
                ])
            })
            .collect();
        for chunk in keys.chunks(25) {
            self.batch_delete(chunk).await?;
        }
        Ok(())
    }

    /// The newest checkpoint of `answer`, strongly consistent (one Query, Limit 1).
    pub async fn newest_checkpoint(
        &self,
        conversation: Uuid,
        answer: Uuid,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let (from, to) = checkpoint_range(answer);
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", s(conversation_pk(conversation)))
            .expression_attribute_values(":from", s(from))
            .expression_attribute_values(":to", s(to))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        out.items().first().map(checkpoint_from).transpose()
    }

    /// Settles a dead live answer: its checkpointed text is stored `incomplete`
    /// (when there is text and the conversation's last message is the question it
    /// answers; a regeneration of an existing answer keeps that answer), the slot
    /// is released, and a final checkpoint tells resumed readers it ended. `false`
    /// when someone else settled or finished it first.
    pub async fn settle(
        &self,
        conversation: &Conversation,
        slot: &LiveSlot,
    ) -> Result<bool, StoreError> {
        let checkpoints = self
            .checkpoints(conversation.id, slot.id, None, true)
            .await?;
        if checkpoints.iter().any(|c| c.end.is_some()) {
            // It finished; only its slot release may be missing (checked below).
            return self.release_slot(conversation.id, slot.id).await;
        }
        let text: String = checkpoints.iter().map(|c| c.text.as_str()).collect();
        let tokens = checkpoints.last().map_or(0, |c| c.tokens);
        let answers_a_question = match conversation.last_message_id {
            Some(last) => self
                .get_message(conversation.id, last)
                .await?
                .is_some_and(|m| m.role == Role::User),
            None => false,
        };
        let stored = !text.is_empty() && answers_a_question;
        let settled = if stored {
            let answer = Message {
                id: slot.id,
                conversation_id: conversation.id,
                role: Role::Assistant,
                content: text,
                token_count: Some(tokens),
                model_tag: Some(conversation.model_tag.clone()),
                inference_time_ms: checkpoints
                    .last()
                    .map(|c| c.at_ms.saturating_sub(slot.since_ms)),
                created_at: time_fmt::of_id(slot.id),
                status: MessageStatus::Incomplete,
            };
            // The answer's own write, as its function would have made it.
            applied(
                self.append_message_with(
                    conversation.user_id,
                    conversation,
                    &answer,
                    None,
                    SlotGuard::Ends(slot.id),
                    Vec::new(),
                )
                .await,
            )?
        } else {
            self.release_slot(conversation.id, slot.id).await?
        };
        if settled {
            let mut end = vec![serde_json::json!({ "error": "inference_interrupted" })];
            end.push(if stored {
                serde_json::json!({ "done": true, "message_id": slot.id })
            } else {
                serde_json::json!({ "done": true })
            });
            let last = Checkpoint {
                seq: checkpoints.last().map_or(0, |c| c.seq + 1),
                text: String::new(),
                tokens,
                at_ms: time_fmt::now_ms(),
                end: Some(end),
            };
            self.put_checkpoint(conversation.id, slot.id, &last).await?;
        }
        Ok(settled)
    }

    /// One message, strongly consistent.
    pub async fn get_message(
        &self,
        conversation: Uuid,
        id: Uuid,
    ) -> Result<Option<Message>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(conversation_pk(conversation)))
            .key("sk", s(message_sk(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        out.item().map(super::message::message_from).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_keys_stay_out_of_the_chat_query_and_sort_by_seq() {
        let answer = Uuid::now_v7();
        let (from, to) = checkpoint_range(answer);
        let mut keys: Vec<String> = [0, 1, 9, 10, 99_999_999]
            .iter()
            .map(|seq| checkpoint_sk(answer, *seq))
            .collect();
        let sorted = {
            let mut k = keys.clone();
            k.sort();
            k
        };
        assert_eq!(keys, sorted);
        for key in keys.drain(..) {
            assert!(key.as_str() > from.as_str() && key.as_str() < to.as_str());
            // The chat Query reads `sk` from `M#` up to `META` only.
            assert!(key.as_str() < "M#");
            // Past any seq of this answer, before any other answer's range.
            assert!(format!("{}!", checkpoint_sk(answer, 5)) > checkpoint_sk(answer, 5));
        }
        let other = checkpoint_range(Uuid::now_v7());
        assert!(to < other.0);
    }
}
