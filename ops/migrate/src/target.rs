//! The functions' table as the migration writes it: messages in batches of 25,
//! then each conversation's item together with its ledger entry in one
//! conditional transaction, so a conversation becomes visible only once all its
//! messages are in, and never over a conversation the functions have changed.
//!
//! The ledger records what each copied conversation was in PostgreSQL: one item
//! per conversation, `pk = MIGRATION#<first hex digit of its id>`, `sk = <id>`,
//! so that 16 Queries list every copied conversation in id order, the order the
//! source is read in. A conversation deleted on the new stack keeps its entry, so
//! a later run does not bring it back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, PutRequest, TransactWriteItem, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use samosachaat::foundation::time_fmt;
use samosachaat::store::{
    classify, conversation_item, conversation_pk, delete_request, message_item, Item, Store,
    StoreError, META_SK,
};
use uuid::Uuid;

use crate::plan::Planned;
use crate::Failure;

const LEDGER_PREFIX: &str = "MIGRATION#";
/// The record of the last finished run (not a ledger shard: those are one hex digit).
const RUN_PK: &str = "MIGRATION#RUN";
const RUN_SK: &str = "LAST";
/// The conversation item's record of the copy that wrote it.
const MIGRATED_VERSION: &str = "migrated_version";
const MIGRATED_UPDATED_AT: &str = "migrated_updated_at";
pub const BATCH_ITEMS: usize = 25;
/// Attempts of a transaction that meets another on the same items.
const TRANSACT_ATTEMPTS: u32 = 10;
const HEX: &[u8; 16] = b"0123456789abcdef";

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn str_attr<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

fn ledger_pk(id: Uuid) -> String {
    let first = id.simple().to_string().as_bytes()[0] as char;
    format!("{LEDGER_PREFIX}{first}")
}

/// What the ledger holds of one copied conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: Uuid,
    pub version: String,
    pub owner: Uuid,
}

/// How the conversation item stands against the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// No conversation item.
    Absent,
    /// As the migration wrote it at this version.
    Unchanged { version: String },
    /// The functions wrote to it since (a message, a rename, a live answer).
    Changed,
}

/// A conversation's partition as [`Target::inspect`] reads it.
#[derive(Debug)]
pub struct Partition {
    pub standing: Standing,
    pub conversation: Option<Item>,
    /// Every other item, in key order.
    pub others: Vec<Item>,
}

/// How often the table pushed back, for the report.
#[derive(Debug, Default)]
pub struct Pushback {
    pub unprocessed_retries: AtomicU64,
    pub throttled: AtomicU64,
}

pub struct Target {
    client: Client,
    /// The functions' store, for what the migration writes the same way.
    store: Store,
    table: String,
    pub pushback: Pushback,
}

impl Target {
    pub fn new(client: Client, table: String) -> Self {
        Self {
            store: Store::new(client.clone(), table.clone()),
            client,
            table,
            pushback: Pushback::default(),
        }
    }

    /// Fails unless the table exists and has the functions' user index.
    pub async fn check(&self) -> Result<(), Failure> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception())
                {
                    Failure::Input(format!(
                        "DynamoDB: table `{}` does not exist (deploy the stack first, or check --table and the region)",
                        self.table
                    ))
                } else {
                    self.sdk_failure(e)
                }
            })?;
        let has_index = out
            .table()
            .map(|t| {
                t.global_secondary_indexes()
                    .iter()
                    .any(|i| i.index_name() == Some(samosachaat::store::USER_INDEX))
            })
            .unwrap_or(false);
        if !has_index {
            return Err(Failure::Input(format!(
                "DynamoDB: table `{}` has no `{}` index: it is not the functions' table",
                self.table,
                samosachaat::store::USER_INDEX
            )));
        }
        Ok(())
    }

    /// The ledger's entries in id order, a page at a time.
    pub fn ledger(&self) -> Ledger<'_> {
        Ledger {
            target: self,
            shard: 0,
            start: None,
            page: Vec::new().into_iter(),
            shard_done: false,
        }
    }

    /// A conversation's partition, read strongly consistent: the conversation
    /// item's standing and item, and every other item of the partition (messages,
    /// live answers' checkpoints): whole, or only their keys.
    pub async fn inspect(&self, id: Uuid, whole: bool) -> Result<Partition, Failure> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(conversation_pk(id)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if !whole {
                query = query.projection_expression(
                    "pk, sk, updated_at, live_id, migrated_version, migrated_updated_at",
                );
            }
            let out = query.send().await.map_err(|e| self.sdk_failure(e))?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        let at = items
            .iter()
            .position(|i| str_attr(i, "sk") == Some(META_SK));
        let conversation = at.map(|at| items.swap_remove(at));
        items.sort_by(|a, b| str_attr(a, "sk").cmp(&str_attr(b, "sk")));
        Ok(Partition {
            standing: conversation.as_ref().map_or(Standing::Absent, standing_of),
            conversation,
            others: items,
        })
    }

    /// Writes (puts and deletes, 25 at most) with the store's BatchWriteItem,
    /// which retries what DynamoDB leaves unprocessed with exponential backoff.
    pub async fn batch(&self, requests: Vec<WriteRequest>) -> Result<(), Failure> {
        let retries = self
            .store
            .batch_write(requests)
            .await
            .map_err(|e| self.failure(e))?;
        self.pushback
            .unprocessed_retries
            .fetch_add(u64::from(retries), Ordering::Relaxed);
        Ok(())
    }

    /// Makes the conversation visible as planned, with its ledger entry, only if
    /// the conversation item is still what `previous` (the ledger's version, or
    /// none for a first copy) says the migration left there.
    /// `Ok(false)`: the functions got there first; nothing was changed.
    pub async fn commit(&self, planned: &Planned, previous: Option<&str>) -> Result<bool, Failure> {
        let c = &planned.conversation;
        let mut item = conversation_item(c);
        item.insert(MIGRATED_VERSION.into(), s(&planned.version));
        item.insert(MIGRATED_UPDATED_AT.into(), s(&c.updated_at));
        let mut meta = Put::builder().table_name(&self.table).set_item(Some(item));
        let mut entry = Put::builder()
            .table_name(&self.table)
            .item("pk", s(ledger_pk(c.id)))
            .item("sk", s(c.id.to_string()))
            .item("version", s(&planned.version))
            .item("owner", s(c.user_id.to_string()))
            .item("copied_at", s(time_fmt::format(time_fmt::now())));
        match previous {
            None => {
                meta = meta.condition_expression("attribute_not_exists(pk)");
                entry = entry.condition_expression("attribute_not_exists(pk)");
            }
            Some(v) => {
                meta = meta
                    .condition_expression(unchanged_condition())
                    .expression_attribute_values(":v", s(v));
                entry = entry
                    .condition_expression("version = :v")
                    .expression_attribute_values(":v", s(v));
            }
        }
        let items = vec![
            TransactWriteItem::builder()
                .put(meta.build().map_err(build)?)
                .build(),
            TransactWriteItem::builder()
                .put(entry.build().map_err(build)?)
                .build(),
        ];
        self.transact(items).await
    }

    /// Deletes the conversation item if the functions have not changed it
    /// since the copy at `version`. `Ok(false)`: they have; nothing was deleted.
    pub async fn delete_conversation_item(&self, id: Uuid, version: &str) -> Result<bool, Failure> {
        let delete = Delete::builder()
            .table_name(&self.table)
            .key("pk", s(conversation_pk(id)))
            .key("sk", s(META_SK))
            .condition_expression(unchanged_condition())
            .expression_attribute_values(":v", s(version))
            .build()
            .map_err(build)?;
        self.transact(vec![TransactWriteItem::builder().delete(delete).build()])
            .await
    }

    pub async fn delete_entry(&self, id: Uuid) -> Result<(), Failure> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(ledger_pk(id)))
            .key("sk", s(id.to_string()))
            .send()
            .await
            .map_err(|e| self.sdk_failure(e))?;
        Ok(())
    }

    /// Deletes every listed item (keys as a Query returns them).
    pub async fn delete_keys(&self, keys: Vec<Item>) -> Result<(), Failure> {
        for chunk in delete_requests(&keys)?.chunks(BATCH_ITEMS) {
            self.batch(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// The last finished copy or catch-up: its mode and when it finished.
    pub async fn last_run(&self) -> Result<Option<(String, String)>, Failure> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(RUN_PK))
            .key("sk", s(RUN_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.sdk_failure(e))?;
        Ok(out.item().and_then(|i| {
            Some((
                str_attr(i, "mode")?.to_owned(),
                str_attr(i, "finished_at")?.to_owned(),
            ))
        }))
    }

    pub async fn record_run(&self, mode: &str, started_at: &str) -> Result<(), Failure> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(RUN_PK))
            .item("sk", s(RUN_SK))
            .item("mode", s(mode))
            .item("started_at", s(started_at))
            .item("finished_at", s(time_fmt::format(time_fmt::now())))
            .send()
            .await
            .map_err(|e| self.sdk_failure(e))?;
        Ok(())
    }

    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<bool, Failure> {
        let mut attempt = 0;
        loop {
            let out = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let err = match out {
                Ok(_) => return Ok(true),
                Err(e) => e,
            };
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) =
                err.as_service_error()
            {
                let codes: Vec<&str> = cancel
                    .cancellation_reasons()
                    .iter()
                    .filter_map(|r| r.code())
                    .collect();
                if codes.contains(&"ConditionalCheckFailed") {
                    return Ok(false);
                }
            }
            let contended = err
                .code()
                .is_some_and(|c| c == "TransactionConflictException")
                || matches!(
                    err.as_service_error(),
                    Some(TransactWriteItemsError::TransactionCanceledException(_))
                );
            attempt += 1;
            if contended && attempt < TRANSACT_ATTEMPTS {
                self.pushback.throttled.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            return Err(self.sdk_failure(err));
        }
    }

    /// A failed request, with DynamoDB's own message: the operator's terminal
    /// gets what it says (an item too large, a missing permission).
    fn sdk_failure<E, R>(&self, err: aws_sdk_dynamodb::error::SdkError<E, R>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let message = err.message().map(str::to_owned);
        match (self.failure(classify(err)), message) {
            (Failure::Target(text), Some(m)) => Failure::Target(format!("{text}: {m}")),
            (f, _) => f,
        }
    }

    fn failure(&self, e: StoreError) -> Failure {
        if matches!(e, StoreError::Throttled(_)) {
            self.pushback.throttled.fetch_add(1, Ordering::Relaxed);
        }
        Failure::Target(format!("DynamoDB: {e}"))
    }
}

/// The conversation item is as a copy at `:v` left it: the functions move
/// `updated_at` with every message and rename, and hold `live_id` while an
/// answer generates.
fn unchanged_condition() -> &'static str {
    "migrated_version = :v AND updated_at = migrated_updated_at AND attribute_not_exists(live_id)"
}

pub fn standing_of(item: &Item) -> Standing {
    let version = str_attr(item, MIGRATED_VERSION);
    let unchanged = version.is_some()
        && str_attr(item, "updated_at").is_some()
        && str_attr(item, "updated_at") == str_attr(item, MIGRATED_UPDATED_AT)
        && !item.contains_key("live_id");
    match version {
        Some(v) if unchanged => Standing::Unchanged {
            version: v.to_owned(),
        },
        _ => Standing::Changed,
    }
}

/// A message's put, as the functions store it.
pub fn put_message(m: &samosachaat::store::Message) -> Result<WriteRequest, Failure> {
    let put = PutRequest::builder()
        .set_item(Some(message_item(m)))
        .build()
        .map_err(build)?;
    Ok(WriteRequest::builder().put_request(put).build())
}

/// Deletes of the listed items (anything but their keys is ignored).
pub fn delete_requests(items: &[Item]) -> Result<Vec<WriteRequest>, Failure> {
    items
        .iter()
        .map(|i| delete_request(i).map_err(|e| Failure::Target(format!("DynamoDB request: {e}"))))
        .collect()
}

/// The ledger, read shard by shard (0 to f), each in sort key order.
pub struct Ledger<'a> {
    target: &'a Target,
    shard: usize,
    start: Option<HashMap<String, AttributeValue>>,
    page: std::vec::IntoIter<Item>,
    shard_done: bool,
}

impl Ledger<'_> {
    pub async fn next(&mut self) -> Result<Option<Entry>, Failure> {
        loop {
            if let Some(item) = self.page.next() {
                let id = str_attr(&item, "sk").and_then(|v| Uuid::parse_str(v).ok());
                let owner = str_attr(&item, "owner").and_then(|v| Uuid::parse_str(v).ok());
                let version = str_attr(&item, "version");
                return match (id, owner, version) {
                    (Some(id), Some(owner), Some(version)) => Ok(Some(Entry {
                        id,
                        owner,
                        version: version.to_owned(),
                    })),
                    _ => Err(Failure::Target(
                        "DynamoDB: a migration ledger entry is malformed".into(),
                    )),
                };
            }
            if self.shard_done {
                self.shard += 1;
                self.shard_done = false;
                self.start = None;
            }
            if self.shard >= HEX.len() {
                return Ok(None);
            }
            let t = self.target;
            let out = t
                .client
                .query()
                .table_name(&t.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(
                    ":pk",
                    s(format!("{LEDGER_PREFIX}{}", HEX[self.shard] as char)),
                )
                .consistent_read(true)
                .set_exclusive_start_key(self.start.take())
                .send()
                .await
                .map_err(|e| t.sdk_failure(e))?;
            self.page = out.items().to_vec().into_iter();
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => self.start = Some(k.clone()),
                _ => self.shard_done = true,
            }
        }
    }
}

fn build(e: aws_sdk_dynamodb::error::BuildError) -> Failure {
    Failure::Target(format!("DynamoDB request: {e}"))
}

fn backoff(attempt: u32) -> Duration {
    let cap = 25u64 << attempt.min(7);
    let jitter = u64::from(time_fmt::now().nanosecond()) % cap.max(1);
    Duration::from_millis(cap / 2 + jitter / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_shards_list_ids_in_order() {
        let mut ids: Vec<Uuid> = (0..500).map(|_| Uuid::new_v4()).collect();
        let mut by_shard: Vec<(String, String)> = ids
            .iter()
            .map(|id| (ledger_pk(*id), id.to_string()))
            .collect();
        by_shard.sort();
        ids.sort();
        let listed: Vec<String> = by_shard.into_iter().map(|(_, sk)| sk).collect();
        let expected: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        assert_eq!(listed, expected);
        assert_eq!(ledger_pk(Uuid::max()), "MIGRATION#f");
        assert_eq!(ledger_pk(Uuid::nil()), "MIGRATION#0");
    }

    #[test]
    fn standing_reads_what_the_functions_change() {
        let mut item: Item = HashMap::from([
            ("updated_at".to_owned(), s("2026-01-01T00:00:00.000000Z")),
            (
                MIGRATED_UPDATED_AT.to_owned(),
                s("2026-01-01T00:00:00.000000Z"),
            ),
            (MIGRATED_VERSION.to_owned(), s("v1")),
        ]);
        assert_eq!(
            standing_of(&item),
            Standing::Unchanged {
                version: "v1".into()
            }
        );
        item.insert("live_id".into(), s(Uuid::now_v7().to_string()));
        assert_eq!(standing_of(&item), Standing::Changed);
        item.remove("live_id");
        item.insert("updated_at".into(), s("2026-01-02T00:00:00.000000Z"));
        assert_eq!(standing_of(&item), Standing::Changed);
        item.remove(MIGRATED_VERSION);
        assert_eq!(standing_of(&item), Standing::Changed);
    }
}
