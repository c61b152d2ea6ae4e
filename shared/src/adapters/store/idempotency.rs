//! `Idempotency-Key` records: one per user and key, expiring by TTL.

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use uuid::Uuid;

use super::{build_err, classify, num_attr, s, str_attr, Store, StoreError, META_SK};
use crate::foundation::time_fmt;

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
    /// The answer was stopped by a stop request.
    pub stopped: bool,
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
        // Gone between the two requests (swept): the caller may simply retry.
        Ok(self.recorded(key).await?.unwrap_or(Claim::Running))
    }

    /// What the key's record says, read strongly consistent; `None` when there
    /// is no live record.
    pub async fn recorded(&self, key: &IdempotencyKey) -> Result<Option<Claim>, StoreError> {
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
        let now = time_fmt::now().unix_timestamp();
        let Some(item) = out.item() else {
            return Ok(None);
        };
        if num_attr(item, "expires_at").is_some_and(|at| i64::try_from(at).is_ok_and(|at| at < now))
        {
            return Ok(None);
        }
        if str_attr(item, "fingerprint") != Some(key.fingerprint.as_str()) {
            return Ok(Some(Claim::Mismatch));
        }
        if str_attr(item, "state") != Some("finished") {
            return Ok(Some(Claim::Running));
        }
        Ok(Some(Claim::Finished(Replay {
            content: str_attr(item, "content").unwrap_or_default().to_owned(),
            message_id: str_attr(item, "message_id").and_then(|v| Uuid::parse_str(v).ok()),
            error: str_attr(item, "error").map(str::to_owned),
            stopped: matches!(item.get("stopped"), Some(AttributeValue::Bool(true))),
        })))
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
    if replay.stopped {
        sets.push("stopped = :stopped");
        values.push((":stopped", AttributeValue::Bool(true)));
    }
    if let Some(error) = &replay.error {
        sets.push("#error = :error");
        values.push((":error", s(error)));
        names.push(("#error", "error"));
    }
    (format!("SET {}", sets.join(", ")), values, names)
}
