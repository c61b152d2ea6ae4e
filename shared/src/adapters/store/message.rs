//! Message items: the chat Query, every message of a conversation, and the
//! transactions that store a message together with its conversation's update.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};
use serde::Serialize;
use uuid::Uuid;

use super::conversation::conversation_from;
use super::{
    already_written, build_err, classify, conversation_pk, message_sk, n, num_attr, s, str_attr,
    string_attr, uuid_attr, Conversation, Item, SlotGuard, Store, StoreError, TxFailure, META_SK,
    MSG_PREFIX,
};
use crate::foundation::role::Role;
use crate::foundation::time_fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Complete,
    /// The upstream broke, or the function generating it died.
    Incomplete,
    /// Stopped by a stop request: the text the user saw before the stop.
    Stopped,
    /// Still generating (only ever shown, never stored as a message item).
    Streaming,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Incomplete => "incomplete",
            Self::Stopped => "stopped",
            Self::Streaming => "streaming",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub role: Role,
    pub content: String,
    pub token_count: Option<u64>,
    pub model_tag: Option<String>,
    pub inference_time_ms: Option<u64>,
    pub created_at: String,
    pub status: MessageStatus,
}

/// Which answer a regeneration replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replacing {
    /// The conversation's last message when the regeneration began.
    pub expected_last: Uuid,
    /// The answer to delete (which is `expected_last`), if the turn had one.
    pub replaces: Option<Uuid>,
}

/// What one Query gives a chat request: the conversation and its newest messages.
#[derive(Debug, Clone)]
pub struct ChatContext {
    pub conversation: Conversation,
    /// Newest messages, oldest first.
    pub recent: Vec<Message>,
}

impl Store {
    /// The one Query a chat makes before calling the upstream: the conversation
    /// item and up to `messages` newest messages, strongly consistent. The key
    /// range (`M#` to `META`) leaves out live answers' checkpoint items.
    /// `None` when the conversation does not exist or is not `user`'s.
    pub async fn load_chat(
        &self,
        user: Uuid,
        id: Uuid,
        messages: usize,
    ) -> Result<Option<ChatContext>, StoreError> {
        let limit = i32::try_from(messages.saturating_add(1)).unwrap_or(i32::MAX);
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :m AND :meta")
            .expression_attribute_values(":pk", s(conversation_pk(id)))
            .expression_attribute_values(":m", s(MSG_PREFIX))
            .expression_attribute_values(":meta", s(META_SK))
            .scan_index_forward(false)
            .consistent_read(true)
            .limit(limit)
            .send()
            .await
            .map_err(classify)?;
        let mut items = out.items().iter();
        let Some(first) = items.next() else {
            return Ok(None);
        };
        if str_attr(first, "sk") != Some(META_SK) {
            return Ok(None);
        }
        let conversation = conversation_from(first)?;
        if conversation.user_id != user {
            return Ok(None);
        }
        let mut recent = items.map(message_from).collect::<Result<Vec<_>, _>>()?;
        recent.reverse();
        Ok(Some(ChatContext {
            conversation,
            recent,
        }))
    }

    /// Every message of a conversation, oldest first, however many pages it takes.
    pub async fn all_messages(&self, id: Uuid) -> Result<Vec<Message>, StoreError> {
        let items = self
            .query_all(|| {
                self.client
                    .query()
                    .key_condition_expression("pk = :pk AND begins_with(sk, :m)")
                    .expression_attribute_values(":pk", s(conversation_pk(id)))
                    .expression_attribute_values(":m", s(MSG_PREFIX))
                    .consistent_read(true)
            })
            .await?;
        items.iter().map(message_from).collect()
    }

    /// Stores a message at the end of the conversation and moves `updated_at`;
    /// `title` is set too when given, if this is the conversation's first
    /// message and the user has not renamed it.
    pub async fn append_message(
        &self,
        user: Uuid,
        conversation: &Conversation,
        message: &Message,
        title: Option<&str>,
    ) -> Result<(), StoreError> {
        self.append_message_with(
            user,
            conversation,
            message,
            title,
            SlotGuard::Free,
            Vec::new(),
        )
        .await
    }

    /// [`Store::append_message`], conditional on the live slot as `guard` says,
    /// with `extra` (an idempotency record's completion, an answer's last
    /// checkpoint) in the same transaction.
    pub async fn append_message_with(
        &self,
        user: Uuid,
        conversation: &Conversation,
        message: &Message,
        title: Option<&str>,
        guard: SlotGuard,
        extra: Vec<TransactWriteItem>,
    ) -> Result<(), StoreError> {
        let mut title = title;
        let (slot_condition, slot_update, slot) = guard.clauses();
        loop {
            let updated_at = time_fmt::format(time_fmt::after(Some(&conversation.updated_at)));
            let mut update = Update::builder()
                .table_name(&self.table)
                .key("pk", s(conversation_pk(conversation.id)))
                .key("sk", s(META_SK))
                .expression_attribute_values(":u", s(user.to_string()))
                .expression_attribute_values(":now", s(&updated_at))
                .expression_attribute_values(":mid", s(message.id.to_string()));
            let mut condition = String::from("attribute_exists(pk) AND user_id = :u");
            let mut set = String::from("SET updated_at = :now, last_message_id = :mid");
            if let Some(t) = title {
                // The first message titles the conversation, whatever title it
                // was created with, unless the user renamed it (a rename wins).
                condition.push_str(
                    " AND attribute_not_exists(last_message_id) AND attribute_not_exists(renamed)",
                );
                set.push_str(", title = :t");
                update = update.expression_attribute_values(":t", s(t));
            }
            update = guarded(update, condition, set, slot_condition, slot_update, slot);
            let mut items = vec![
                TransactWriteItem::builder()
                    .update(update.build().map_err(build_err)?)
                    .build(),
                self.put_message(message)?,
            ];
            items.extend(extra.clone());
            match self.transact(items).await {
                Ok(()) => return Ok(()),
                Err(TxFailure::ConditionFailed(failed)) if already_written(&failed, 1) => {
                    return Ok(())
                }
                // The title's condition failed (renamed, or another first
                // message, meanwhile): keep that title and store the message.
                Err(TxFailure::ConditionFailed(_)) if title.is_some() => title = None,
                Err(TxFailure::ConditionFailed(_)) => return Err(StoreError::NotFound),
                Err(TxFailure::Store(e)) => return Err(e),
            }
        }
    }

    /// Puts `answer` as the answer to the conversation's last turn, only if the
    /// conversation's last message is still `expected_last`; `replaces` (the old
    /// answer, which is `expected_last`) is deleted in the same transaction.
    pub async fn replace_answer(
        &self,
        user: Uuid,
        conversation: &Conversation,
        Replacing {
            expected_last,
            replaces,
        }: Replacing,
        answer: &Message,
        guard: SlotGuard,
        extra: Vec<TransactWriteItem>,
    ) -> Result<(), StoreError> {
        let updated_at = time_fmt::format(time_fmt::after(Some(&conversation.updated_at)));
        let (slot_condition, slot_update, slot) = guard.clauses();
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(conversation_pk(conversation.id)))
            .key("sk", s(META_SK))
            .expression_attribute_values(":u", s(user.to_string()))
            .expression_attribute_values(":expected", s(expected_last.to_string()))
            .expression_attribute_values(":now", s(updated_at))
            .expression_attribute_values(":mid", s(answer.id.to_string()));
        let update = guarded(
            update,
            "attribute_exists(pk) AND user_id = :u AND last_message_id = :expected".into(),
            "SET updated_at = :now, last_message_id = :mid".into(),
            slot_condition,
            slot_update,
            slot,
        )
        .build()
        .map_err(build_err)?;
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        if let Some(old) = replaces {
            let delete = Delete::builder()
                .table_name(&self.table)
                .key("pk", s(conversation_pk(conversation.id)))
                .key("sk", s(message_sk(old)))
                .condition_expression("attribute_exists(pk)")
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().delete(delete).build());
        }
        let put_at = items.len();
        items.push(self.put_message(answer)?);
        items.extend(extra.clone());
        match self.transact(items).await {
            Ok(()) => Ok(()),
            Err(TxFailure::ConditionFailed(failed)) if already_written(&failed, put_at) => Ok(()),
            Err(TxFailure::ConditionFailed(_)) => Err(StoreError::Conflict),
            Err(TxFailure::Store(e)) => Err(e),
        }
    }

    fn put_message(&self, message: &Message) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(message_item(message)))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }
}

/// A conversation update with its condition and update expressions, extended by
/// the live slot's clauses.
fn guarded(
    update: aws_sdk_dynamodb::types::builders::UpdateBuilder,
    mut condition: String,
    mut set: String,
    slot_condition: Option<&str>,
    slot_update: Option<&str>,
    slot: Option<Uuid>,
) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
    if let Some(c) = slot_condition {
        condition.push_str(" AND ");
        condition.push_str(c);
    }
    if let Some(u) = slot_update {
        set.push(' ');
        set.push_str(u);
    }
    let update = match slot {
        Some(id) => update.expression_attribute_values(":live", s(id.to_string())),
        None => update,
    };
    update
        .condition_expression(condition)
        .update_expression(set)
}

pub fn message_item(m: &Message) -> Item {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(conversation_pk(m.conversation_id))),
        ("sk".to_owned(), s(message_sk(m.id))),
        ("id".to_owned(), s(m.id.to_string())),
        (
            "conversation_id".to_owned(),
            s(m.conversation_id.to_string()),
        ),
        ("role".to_owned(), s(m.role.as_str())),
        ("content".to_owned(), s(&m.content)),
        ("created_at".to_owned(), s(&m.created_at)),
        ("status".to_owned(), s(m.status.as_str())),
    ]);
    if let Some(v) = m.token_count {
        item.insert("token_count".to_owned(), n(v));
    }
    if let Some(v) = &m.model_tag {
        item.insert("model_tag".to_owned(), s(v));
    }
    if let Some(v) = m.inference_time_ms {
        item.insert("inference_time_ms".to_owned(), n(v));
    }
    item
}

pub fn message_from(item: &Item) -> Result<Message, StoreError> {
    Ok(Message {
        id: uuid_attr(item, "id")?,
        conversation_id: uuid_attr(item, "conversation_id")?,
        role: str_attr(item, "role")
            .and_then(Role::parse)
            .ok_or(StoreError::Corrupt("role"))?,
        content: string_attr(item, "content")?,
        token_count: num_attr(item, "token_count"),
        model_tag: str_attr(item, "model_tag").map(str::to_owned),
        inference_time_ms: num_attr(item, "inference_time_ms"),
        created_at: string_attr(item, "created_at")?,
        status: match str_attr(item, "status") {
            Some("incomplete") => MessageStatus::Incomplete,
            Some("stopped") => MessageStatus::Stopped,
            _ => MessageStatus::Complete,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_key_sorts_after_every_message_key() {
        for id in [Uuid::nil(), Uuid::max(), Uuid::now_v7()] {
            assert!(META_SK > message_sk(id).as_str());
        }
    }

    #[test]
    fn message_keys_sort_by_time() {
        let a = Uuid::now_v7();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = Uuid::now_v7();
        assert!(message_sk(a) < message_sk(b));
    }
}
