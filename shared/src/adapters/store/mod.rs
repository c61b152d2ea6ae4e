//! Conversations and messages in one DynamoDB table.
//!
//! Keys (documented with every access pattern in `docs/table.md`):
//!
//! | item         | `pk`                | `sk`              | user index (`by_user`)          |
//! |--------------|---------------------|-------------------|---------------------------------|
//! | conversation | `CONV#<uuid>`       | `META`            | `user_id` / `updated_at`        |
//! | message      | `CONV#<uuid>`       | `M#<uuidv7>`      | not projected (no `user_id`)    |
//! | checkpoint   | `CONV#<uuid>`       | `L#<uuidv7>#<seq>`| not projected (no `user_id`)    |
//! | idempotency  | `IDEM#<user>#<key>` | `META`            | not projected                   |
//! | user limits  | `LIMIT#<user>`      | `LIMITS`          | not projected ([`limits`])      |
//!
//! `META` sorts after every `M#...` key (`#` < `E`), so one descending Query on the
//! partition returns the conversation first and then its newest messages: that is
//! the single request a send makes before it calls the upstream.
//!
//! Every message write is a transaction with a condition on the conversation item
//! (it exists and belongs to the user), so a message never outlives its
//! conversation and `updated_at` always moves with the message. The conversation
//! also records `last_message_id`; regenerate's replacement is conditional on it,
//! which is what makes two racing regenerates produce one answer, and the live
//! slot (`live_id`, see [`live`]): at most one answer generates per conversation.

mod conversation;
mod idempotency;
mod limits;
mod live;
mod message;
pub mod schema;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, TransactWriteItem, WriteRequest};
use aws_sdk_dynamodb::Client;
use uuid::Uuid;

pub use crate::foundation::error::StoreError;
use crate::foundation::time_fmt;

pub use conversation::{
    conversation_from, conversation_item, Conversation, CursorOr, Page, DEFAULT_TITLE,
};
pub use idempotency::{Claim, IdempotencyKey, Replay, IDEMPOTENCY_TTL_SECS};
pub use limits::{limit_pk, Counted, HeldAnswer, LimitRecord, Windows, LIMITS_SK};
pub use live::{Checkpoint, LiveSlot, SlotClaim, SlotGuard, SlotState, CHECKPOINT_TTL_SECS};
pub use message::{message_from, message_item, ChatContext, Message, MessageStatus, Replacing};

pub const USER_INDEX: &str = "by_user";
pub const META_SK: &str = "META";
const MSG_PREFIX: &str = "M#";
const CONV_PREFIX: &str = "CONV#";

/// How often a transaction that lost to a concurrent one on the same
/// conversation item is tried again.
const TRANSACTION_ATTEMPTS: u32 = 6;
const BATCH_ATTEMPTS: u32 = 8;

pub type Item = HashMap<String, AttributeValue>;

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

    /// An UpdateItem of the item `pk`/`sk`, its table and key set.
    fn update_at(
        &self,
        pk: String,
        sk: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
    }

    /// Every item a Query returns, following its pages to the end. `query` builds
    /// the request; the page's start key is added here.
    async fn query_all(
        &self,
        query: impl Fn() -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = query()
                .table_name(&self.table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(classify)?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(items),
            }
        }
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

/// Makes the SDK retry a single-item write (PutItem, UpdateItem, DeleteItem)
/// that DynamoDB refused with `TransactionConflictException`: the item was part
/// of a transaction in progress (a message write, a replacement, a slot release
/// on the conversation item), which ends within milliseconds. The SDK does not
/// count that error as retryable, and without this a stop, a slot claim or a
/// rename meeting a concurrent message write would fail the request.
/// (Transactions that lose are retried by [`Store::transact`].)
#[derive(Debug, Default, Clone, Copy)]
pub struct RetryTransactionConflicts;

impl aws_smithy_runtime_api::client::retries::classifiers::ClassifyRetry
    for RetryTransactionConflicts
{
    fn classify_retry(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::InterceptorContext,
    ) -> aws_smithy_runtime_api::client::retries::classifiers::RetryAction {
        use aws_sdk_dynamodb::operation::{
            delete_item::DeleteItemError, put_item::PutItemError, update_item::UpdateItemError,
        };
        use aws_smithy_runtime_api::client::retries::classifiers::RetryAction;

        let Some(Err(err)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let Some(err) = err.as_operation_error() else {
            return RetryAction::NoActionIndicated;
        };
        let conflict = err
            .downcast_ref::<UpdateItemError>()
            .is_some_and(UpdateItemError::is_transaction_conflict_exception)
            || err
                .downcast_ref::<PutItemError>()
                .is_some_and(PutItemError::is_transaction_conflict_exception)
            || err
                .downcast_ref::<DeleteItemError>()
                .is_some_and(DeleteItemError::is_transaction_conflict_exception);
        if conflict {
            RetryAction::transient_error()
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "retry transaction conflicts"
    }
}

impl Store {
    /// Puts and deletes (up to 25) in one BatchWriteItem, trying again with
    /// backoff what DynamoDB leaves unprocessed. Returns how many retries that took.
    pub async fn batch_write(&self, mut pending: Vec<WriteRequest>) -> Result<u32, StoreError> {
        for attempt in 0..BATCH_ATTEMPTS {
            if pending.is_empty() {
                return Ok(attempt.saturating_sub(1));
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
            Ok(BATCH_ATTEMPTS - 1)
        } else {
            Err(StoreError::Throttled(format!(
                "{} batched writes still unprocessed",
                pending.len()
            )))
        }
    }
}

/// The delete of the item with this key (a key as a Query returns it; other
/// attributes are left out).
pub fn delete_request(item: &Item) -> Result<WriteRequest, StoreError> {
    let key: Item = ["pk", "sk"]
        .iter()
        .filter_map(|n| item.get(*n).map(|v| ((*n).to_owned(), v.clone())))
        .collect();
    let delete = DeleteRequest::builder()
        .set_key(Some(key))
        .build()
        .map_err(build_err)?;
    Ok(WriteRequest::builder().delete_request(delete).build())
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

/// A conditional write's outcome: `false` when its condition failed (the
/// store reports that as [`StoreError::NotFound`]), any other error as it is.
fn applied<T>(written: Result<T, StoreError>) -> Result<bool, StoreError> {
    match written {
        Ok(_) => Ok(true),
        Err(StoreError::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
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
