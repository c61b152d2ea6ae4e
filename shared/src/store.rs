//! Conversations and messages in one DynamoDB table.
//!
//! Keys (documented with every access pattern in the README):
//!
//! | item         | `pk`                | `sk`              | user index (`by_user`)          |
//! |--------------|---------------------|-------------------|---------------------------------|
//! | conversation | `CONV#<uuid>`       | `META`            | `user_id` / `updated_at`        |
//! | message      | `CONV#<uuid>`       | `M#<uuidv7>`      | not projected (no `user_id`)    |
//!
//! `META` sorts after every `M#...` key (`#` < `E`), so one descending Query on the
//! partition returns the conversation first and then its newest messages: that is
//! the single request a send makes before it calls the upstream.
//!
//! Every message write is a transaction with a condition on the conversation item
//! (it exists and belongs to the user), so a message never outlives its
//! conversation and `updated_at` always moves with the message. The conversation
//! also records `last_message_id`; regenerate's replacement is conditional on it,
//! which is what makes two racing regenerates produce one answer.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, DeleteRequest, Put, ReturnValue, TransactWriteItem, Update,
    WriteRequest,
};
use aws_sdk_dynamodb::Client;
use base64::Engine;
use serde::Serialize;
use thiserror::Error;
use uuid::Uuid;

use crate::prompt::{Role, Turn, DEFAULT_TITLE};
use crate::time_fmt;

pub const USER_INDEX: &str = "by_user";
pub const META_SK: &str = "META";
const MSG_PREFIX: &str = "M#";
const CONV_PREFIX: &str = "CONV#";

/// How often a transaction that lost to a concurrent one on the same
/// conversation item is tried again.
const TRANSACTION_ATTEMPTS: u32 = 6;
const BATCH_ATTEMPTS: u32 = 8;

type Item = HashMap<String, AttributeValue>;

#[derive(Debug, Error)]
pub enum StoreError {
    /// The conversation is gone or is not the caller's (a condition failed).
    #[error("conversation not found")]
    NotFound,
    /// A conditional replacement lost: the conversation moved on.
    #[error("conflict")]
    Conflict,
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("store: {0}")]
    Other(String),
    #[error("corrupt item: {0}")]
    Corrupt(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conversation {
    pub id: Uuid,
    pub user_id: Uuid,
    pub title: String,
    pub model_tag: String,
    pub is_favorited: bool,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub last_message_id: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Complete,
    Incomplete,
}

impl MessageStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Incomplete => "incomplete",
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

impl Message {
    pub fn turn(&self) -> Turn {
        Turn {
            role: self.role,
            content: self.content.clone(),
        }
    }
}

/// What one Query gives a chat request: the conversation and its newest messages.
#[derive(Debug, Clone)]
pub struct ChatContext {
    pub conversation: Conversation,
    /// Newest messages, oldest first.
    pub recent: Vec<Message>,
}

#[derive(Debug, Clone, Default)]
pub struct Page {
    pub items: Vec<Conversation>,
    pub next_cursor: Option<String>,
}

/// The persistence port. Tests and the local stack use the same DynamoDB code
/// against a DynamoDB-protocol server, so there is no second implementation.
#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    table: String,
}

pub fn conversation_pk(id: Uuid) -> String {
    format!("{CONV_PREFIX}{id}")
}

pub fn message_sk(id: Uuid) -> String {
    format!("{MSG_PREFIX}{id}")
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

impl Store {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The one request a chat makes before calling the upstream: the conversation
    /// item and up to `messages` newest messages, in one strongly consistent Query.
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
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(conversation_pk(id)))
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

    pub async fn create_conversation(
        &self,
        user: Uuid,
        title: &str,
        model_tag: &str,
    ) -> Result<Conversation, StoreError> {
        let now = time_fmt::format(time_fmt::now());
        let conversation = Conversation {
            id: Uuid::new_v4(),
            user_id: user,
            title: title.to_owned(),
            model_tag: model_tag.to_owned(),
            is_favorited: false,
            created_at: now.clone(),
            updated_at: now,
            last_message_id: None,
        };
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(conversation_item(&conversation)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(classify)?;
        Ok(conversation)
    }

    /// The conversation item, if it is `user`'s.
    pub async fn get_conversation(
        &self,
        user: Uuid,
        id: Uuid,
    ) -> Result<Option<Conversation>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(conversation_pk(id)))
            .key("sk", s(META_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        match out.item() {
            Some(item) => {
                let c = conversation_from(item)?;
                Ok((c.user_id == user).then_some(c))
            }
            None => Ok(None),
        }
    }

    /// Every message of a conversation, oldest first, however many pages it takes.
    pub async fn all_messages(&self, id: Uuid) -> Result<Vec<Message>, StoreError> {
        self.message_items(id, false)
            .await?
            .iter()
            .map(message_from)
            .collect()
    }

    /// Every message item of a conversation (only its keys if `keys_only`),
    /// oldest first, following the Query's pages to the end.
    async fn message_items(&self, id: Uuid, keys_only: bool) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :m)")
                .expression_attribute_values(":pk", s(conversation_pk(id)))
                .expression_attribute_values(":m", s(MSG_PREFIX))
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if keys_only {
                query = query.projection_expression("pk, sk");
            }
            let out = query.send().await.map_err(classify)?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(items),
            }
        }
    }

    /// The user's conversations, most recently updated first, from the user index.
    pub async fn list_conversations(
        &self,
        user: Uuid,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page, CursorOr<StoreError>> {
        let start = match cursor {
            Some(c) => Some(decode_cursor(c, user).ok_or(CursorOr::BadCursor)?),
            None => None,
        };
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(USER_INDEX)
            .key_condition_expression("user_id = :u")
            .expression_attribute_values(":u", s(user.to_string()))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| CursorOr::Store(classify(e)))?;
        let items = out
            .items()
            .iter()
            .map(conversation_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(CursorOr::Store)?;
        let next_cursor = out
            .last_evaluated_key()
            .filter(|k| !k.is_empty())
            .and_then(encode_cursor);
        Ok(Page { items, next_cursor })
    }

    pub async fn rename(
        &self,
        user: Uuid,
        id: Uuid,
        title: &str,
    ) -> Result<Conversation, StoreError> {
        let previous = self
            .get_conversation(user, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let now = time_fmt::format(time_fmt::after(Some(&previous.updated_at)));
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(conversation_pk(id)))
            .key("sk", s(META_SK))
            .condition_expression("attribute_exists(pk) AND user_id = :u")
            .update_expression("SET title = :t, updated_at = :now")
            .expression_attribute_values(":u", s(user.to_string()))
            .expression_attribute_values(":t", s(title))
            .expression_attribute_values(":now", s(now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(classify)?;
        out.attributes()
            .ok_or(StoreError::Corrupt("update returned no item"))
            .and_then(conversation_from)
    }

    /// Deletes the conversation item first (so no message write can succeed after
    /// it: every one is conditional on it), then every message in batches.
    pub async fn delete_conversation(&self, user: Uuid, id: Uuid) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(conversation_pk(id)))
            .key("sk", s(META_SK))
            .condition_expression("attribute_exists(pk) AND user_id = :u")
            .expression_attribute_values(":u", s(user.to_string()))
            .send()
            .await
            .map_err(classify)?;
        self.delete_messages(id).await
    }

    async fn delete_messages(&self, id: Uuid) -> Result<(), StoreError> {
        for chunk in self.message_items(id, true).await?.chunks(25) {
            self.batch_delete(chunk).await?;
        }
        Ok(())
    }

    async fn batch_delete(&self, keys: &[Item]) -> Result<(), StoreError> {
        let mut pending: Vec<WriteRequest> = keys
            .iter()
            .map(|k| {
                let key = DeleteRequest::builder()
                    .set_key(Some(k.clone()))
                    .build()
                    .map_err(|e| StoreError::Other(e.to_string()))?;
                Ok(WriteRequest::builder().delete_request(key).build())
            })
            .collect::<Result<_, StoreError>>()?;
        for attempt in 0..BATCH_ATTEMPTS {
            if pending.is_empty() {
                return Ok(());
            }
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, pending)
                .send()
                .await
                .map_err(classify)?;
            pending = out
                .unprocessed_items()
                .and_then(|m| m.get(&self.table))
                .cloned()
                .unwrap_or_default();
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Throttled("unprocessed deletes remain".into()))
        }
    }

    /// Stores a message at the end of the conversation and moves `updated_at`;
    /// `title` is set too when given and the title is still the default.
    pub async fn append_message(
        &self,
        user: Uuid,
        conversation: &Conversation,
        message: &Message,
        title: Option<&str>,
    ) -> Result<(), StoreError> {
        self.append_message_with(user, conversation, message, title, None)
            .await
    }

    /// [`Store::append_message`], with `extra` (an idempotency record's
    /// completion) written in the same transaction.
    pub async fn append_message_with(
        &self,
        user: Uuid,
        conversation: &Conversation,
        message: &Message,
        title: Option<&str>,
        extra: Option<TransactWriteItem>,
    ) -> Result<(), StoreError> {
        let mut title = title;
        loop {
            let updated_at = time_fmt::format(time_fmt::after(Some(&conversation.updated_at)));
            let mut update = Update::builder()
                .table_name(&self.table)
                .key("pk", s(conversation_pk(conversation.id)))
                .key("sk", s(META_SK))
                .expression_attribute_values(":u", s(user.to_string()))
                .expression_attribute_values(":now", s(&updated_at))
                .expression_attribute_values(":mid", s(message.id.to_string()));
            update = match title {
                Some(t) => update
                    .condition_expression(
                        "attribute_exists(pk) AND user_id = :u AND title = :default",
                    )
                    .update_expression("SET updated_at = :now, last_message_id = :mid, title = :t")
                    .expression_attribute_values(":default", s(DEFAULT_TITLE))
                    .expression_attribute_values(":t", s(t)),
                None => update
                    .condition_expression("attribute_exists(pk) AND user_id = :u")
                    .update_expression("SET updated_at = :now, last_message_id = :mid"),
            };
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
                // The title condition failed (renamed meanwhile): keep the user's
                // title and store the message anyway.
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
        expected_last: Uuid,
        replaces: Option<Uuid>,
        answer: &Message,
        extra: Option<TransactWriteItem>,
    ) -> Result<(), StoreError> {
        let updated_at = time_fmt::format(time_fmt::after(Some(&conversation.updated_at)));
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(conversation_pk(conversation.id)))
            .key("sk", s(META_SK))
            .condition_expression(
                "attribute_exists(pk) AND user_id = :u AND last_message_id = :expected",
            )
            .update_expression("SET updated_at = :now, last_message_id = :mid")
            .expression_attribute_values(":u", s(user.to_string()))
            .expression_attribute_values(":expected", s(expected_last.to_string()))
            .expression_attribute_values(":now", s(updated_at))
            .expression_attribute_values(":mid", s(answer.id.to_string()))
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

    /// Runs a transaction, trying again with backoff while it loses to a
    /// concurrent one on the same conversation item.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<(), TxFailure> {
        let mut attempt = 0;
        loop {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            match result.map_err(classify_tx) {
                Err(TxError::Contended) if attempt + 1 < TRANSACTION_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(TxError::Contended) => {
                    return Err(TxFailure::Store(StoreError::Throttled("contended".into())))
                }
                Err(TxError::ConditionFailed(failed)) => {
                    return Err(TxFailure::ConditionFailed(failed))
                }
                Err(TxError::Store(e)) => return Err(TxFailure::Store(e)),
                Ok(_) => return Ok(()),
            }
        }
    }
}

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL_SECS: i64 = 600;
const IDEM_PREFIX: &str = "IDEM#";

/// An `Idempotency-Key` as recorded: scoped to its user, bound to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub user: Uuid,
    pub key: String,
    /// A digest of the request (route, conversation, decoded body).
    pub fingerprint: String,
}

/// What a finished request left for its retries to replay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replay {
    /// The stored answer's text ("" when none was stored).
    pub content: String,
    pub message_id: Option<Uuid>,
    /// The error event the stream ended with, as JSON.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use of the key: go ahead.
    New,
    /// The first request is still streaming.
    Running,
    /// The key was used for a different request.
    Mismatch,
    Finished(Replay),
}

impl IdempotencyKey {
    fn pk(&self) -> String {
        format!("{IDEM_PREFIX}{}#{}", self.user, self.key)
    }
}

impl Store {
    /// Records the key as running unless a live record exists; then says what
    /// that record is. A record past its TTL counts as absent even before
    /// DynamoDB's TTL sweep removes it.
    pub async fn claim(&self, key: &IdempotencyKey) -> Result<Claim, StoreError> {
        let now = time_fmt::now().unix_timestamp();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(key.pk()))
            .item("sk", s(META_SK))
            .item("fingerprint", s(&key.fingerprint))
            .item("state", s("running"))
            .item(
                "expires_at",
                AttributeValue::N((now + IDEMPOTENCY_TTL_SECS).to_string()),
            )
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .send()
            .await;
        match put {
            Ok(_) => return Ok(Claim::New),
            Err(e) => match classify(e) {
                StoreError::NotFound => {}
                other => return Err(other),
            },
        }
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key.pk()))
            .key("sk", s(META_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        // Gone between the two requests (swept): the caller may simply retry.
        let Some(item) = out.item() else {
            return Ok(Claim::Running);
        };
        if str_attr(item, "fingerprint") != Some(key.fingerprint.as_str()) {
            return Ok(Claim::Mismatch);
        }
        if str_attr(item, "state") != Some("finished") {
            return Ok(Claim::Running);
        }
        Ok(Claim::Finished(Replay {
            content: str_attr(item, "content").unwrap_or_default().to_owned(),
            message_id: str_attr(item, "message_id").and_then(|v| Uuid::parse_str(v).ok()),
            error: str_attr(item, "error").map(str::to_owned),
        }))
    }

    /// The write that marks a claimed key finished, for inclusion in the
    /// transaction that stores the answer (so the two cannot disagree).
    pub fn finish_item(
        &self,
        key: &IdempotencyKey,
        replay: &Replay,
    ) -> Result<TransactWriteItem, StoreError> {
        let (expression, values, names) = finish_update(key, replay);
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(key.pk()))
            .key("sk", s(META_SK))
            .condition_expression("fingerprint = :fp")
            .update_expression(expression);
        for (name, value) in values {
            update = update.expression_attribute_values(name, value);
        }
        for (placeholder, name) in names {
            update = update.expression_attribute_names(placeholder, name);
        }
        Ok(TransactWriteItem::builder()
            .update(update.build().map_err(build_err)?)
            .build())
    }

    /// Marks a claimed key finished on its own (no answer was stored).
    pub async fn finish(&self, key: &IdempotencyKey, replay: &Replay) -> Result<(), StoreError> {
        let (expression, values, names) = finish_update(key, replay);
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(key.pk()))
            .key("sk", s(META_SK))
            .condition_expression("fingerprint = :fp")
            .update_expression(expression)
            .set_expression_attribute_values(Some(
                values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            ))
            .set_expression_attribute_names(Some(
                names
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

type Values = Vec<(&'static str, AttributeValue)>;
type Names = Vec<(&'static str, &'static str)>;

/// `state` and `error` are DynamoDB reserved words, hence the `#` names.
fn finish_update(key: &IdempotencyKey, replay: &Replay) -> (String, Values, Names) {
    let mut names = vec![("#state", "state")];
    let mut sets = vec!["#state = :finished", "content = :content"];
    let mut values = vec![
        (":fp", s(&key.fingerprint)),
        (":finished", s("finished")),
        (":content", s(&replay.content)),
    ];
    if let Some(id) = replay.message_id {
        sets.push("message_id = :mid");
        values.push((":mid", s(id.to_string())));
    }
    if let Some(error) = &replay.error {
        sets.push("#error = :error");
        values.push((":error", s(error)));
        names.push(("#error", "error"));
    }
    (format!("SET {}", sets.join(", ")), values, names)
}

/// A list request fails either on its cursor (the caller's fault) or the store.
#[derive(Debug)]
pub enum CursorOr<E> {
    BadCursor,
    Store(E),
}

/// How a transaction finally failed, after retries of contention.
enum TxFailure {
    /// Which items' conditions failed, in the order they were sent.
    ConditionFailed(Vec<bool>),
    Store(StoreError),
}

enum TxError {
    /// Which items' conditions failed, in the order they were sent.
    ConditionFailed(Vec<bool>),
    Contended,
    Store(StoreError),
}

fn classify_tx<R>(err: SdkError<TransactWriteItemsError, R>) -> TxError
where
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(service) = &err {
        if let TransactWriteItemsError::TransactionCanceledException(cancel) = service.err() {
            let reasons = cancel.cancellation_reasons();
            let codes: Vec<&str> = reasons.iter().filter_map(|r| r.code()).collect();
            if codes.contains(&"ConditionalCheckFailed") {
                return TxError::ConditionFailed(
                    reasons
                        .iter()
                        .map(|r| r.code() == Some("ConditionalCheckFailed"))
                        .collect(),
                );
            }
            if codes.iter().any(|c| {
                matches!(
                    *c,
                    "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded"
                )
            }) {
                return TxError::Contended;
            }
        }
        if service.err().code() == Some("TransactionConflictException") {
            return TxError::Contended;
        }
    }
    TxError::Store(classify(err))
}

/// The message Put is conditional on its key being free, and message ids are
/// made fresh for each write: if that condition failed, the item there is this
/// very message, written by an earlier attempt whose response was lost (a
/// timeout or a reset after DynamoDB applied it). The write is done.
fn already_written(failed: &[bool], put_at: usize) -> bool {
    failed.get(put_at).copied().unwrap_or(false)
}

/// Maps an SDK error to what callers act on. The SDK has already retried what
/// AWS marks retryable; what reaches here is final for this request.
pub fn classify<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let code = err.code().map(str::to_owned);
    match code.as_deref() {
        Some("ConditionalCheckFailedException") => StoreError::NotFound,
        Some(
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded",
        ) => StoreError::Throttled(code.unwrap_or_default()),
        _ => StoreError::Other(describe(&err)),
    }
}

/// An error description safe to log: service messages can echo item values (a
/// user's message text), so only their code is kept.
fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(e) => {
            format!("service error {}", e.err().code().unwrap_or("(no code)"))
        }
        SdkError::TimeoutError(_) => "timeout".to_owned(),
        SdkError::DispatchFailure(_) => {
            format!("dispatch failure: {}", DisplayErrorContext(err))
        }
        SdkError::ResponseError(_) => "unreadable response".to_owned(),
        SdkError::ConstructionFailure(_) => "request construction failed".to_owned(),
        _ => "unknown error".to_owned(),
    }
}

fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Other(e.to_string())
}

fn backoff(attempt: u32) -> Duration {
    // Full jitter from the clock's sub-second noise; no RNG dependency needed.
    let cap = 20u64 << attempt.min(6);
    let jitter = u64::from(time_fmt::now().nanosecond()) % cap.max(1);
    Duration::from_millis(cap / 2 + jitter / 2)
}

fn conversation_item(c: &Conversation) -> Item {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(conversation_pk(c.id))),
        ("sk".to_owned(), s(META_SK)),
        ("id".to_owned(), s(c.id.to_string())),
        ("user_id".to_owned(), s(c.user_id.to_string())),
        ("title".to_owned(), s(&c.title)),
        ("model_tag".to_owned(), s(&c.model_tag)),
        (
            "is_favorited".to_owned(),
            AttributeValue::Bool(c.is_favorited),
        ),
        ("created_at".to_owned(), s(&c.created_at)),
        ("updated_at".to_owned(), s(&c.updated_at)),
    ]);
    if let Some(last) = c.last_message_id {
        item.insert("last_message_id".to_owned(), s(last.to_string()));
    }
    item
}

fn message_item(m: &Message) -> Item {
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

fn str_attr<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

fn num_attr(item: &Item, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

fn uuid_attr(item: &Item, name: &'static str) -> Result<Uuid, StoreError> {
    str_attr(item, name)
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or(StoreError::Corrupt(name))
}

fn string_attr(item: &Item, name: &'static str) -> Result<String, StoreError> {
    str_attr(item, name)
        .map(str::to_owned)
        .ok_or(StoreError::Corrupt(name))
}

fn conversation_from(item: &Item) -> Result<Conversation, StoreError> {
    Ok(Conversation {
        id: uuid_attr(item, "id")?,
        user_id: uuid_attr(item, "user_id")?,
        title: string_attr(item, "title")?,
        model_tag: str_attr(item, "model_tag").unwrap_or("default").to_owned(),
        is_favorited: matches!(item.get("is_favorited"), Some(AttributeValue::Bool(true))),
        created_at: string_attr(item, "created_at")?,
        updated_at: string_attr(item, "updated_at")?,
        last_message_id: str_attr(item, "last_message_id").and_then(|v| Uuid::parse_str(v).ok()),
    })
}

fn message_from(item: &Item) -> Result<Message, StoreError> {
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
            _ => MessageStatus::Complete,
        },
    })
}

/// The cursor is the index's last evaluated key, base64url JSON. It is checked on
/// the way back in: it must name the caller's own index partition.
fn encode_cursor(key: &Item) -> Option<String> {
    let fields = ["pk", "sk", "user_id", "updated_at"];
    let mut map = serde_json::Map::new();
    for f in fields {
        map.insert(
            f.to_owned(),
            serde_json::Value::String(str_attr(key, f)?.to_owned()),
        );
    }
    let json = serde_json::to_vec(&map).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
}

fn decode_cursor(cursor: &str, user: Uuid) -> Option<Item> {
    if cursor.len() > 1024 {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let map: HashMap<String, String> = serde_json::from_slice(&raw).ok()?;
    let pk = map.get("pk")?;
    let id = Uuid::parse_str(pk.strip_prefix(CONV_PREFIX)?).ok()?;
    let updated_at = map.get("updated_at")?;
    time_fmt::parse(updated_at)?;
    if map.get("sk")? != META_SK || map.get("user_id")? != &user.to_string() || map.len() != 4 {
        return None;
    }
    Some(HashMap::from([
        ("pk".to_owned(), s(conversation_pk(id))),
        ("sk".to_owned(), s(META_SK)),
        ("user_id".to_owned(), s(user.to_string())),
        ("updated_at".to_owned(), s(updated_at)),
    ]))
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
        std::thread::sleep(Duration::from_millis(2));
        let b = Uuid::now_v7();
        assert!(message_sk(a) < message_sk(b));
    }

    #[test]
    fn cursor_round_trips_only_for_its_user() {
        let user = Uuid::new_v4();
        let key = HashMap::from([
            ("pk".to_owned(), s(conversation_pk(Uuid::new_v4()))),
            ("sk".to_owned(), s(META_SK)),
            ("user_id".to_owned(), s(user.to_string())),
            ("updated_at".to_owned(), s("2026-01-02T03:04:05.000007Z")),
        ]);
        let cursor = encode_cursor(&key).expect("cursor");
        assert_eq!(decode_cursor(&cursor, user), Some(key));
        assert_eq!(decode_cursor(&cursor, Uuid::new_v4()), None);
        for bad in ["", "!!", "e30", &"A".repeat(2000)] {
            assert_eq!(decode_cursor(bad, user), None, "{bad}");
        }
    }
}
