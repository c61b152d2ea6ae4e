//! Conversation items: create, read, list by user, rename, delete.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use base64::Engine;
use serde::Serialize;
use uuid::Uuid;

use super::{
    classify, conversation_pk, delete_request, s, str_attr, string_attr, uuid_attr, Item, LiveSlot,
    Store, StoreError, CONV_PREFIX, META_SK, USER_INDEX,
};
use crate::foundation::time_fmt;

/// The title a conversation has until its first message names it (or a rename).
pub const DEFAULT_TITLE: &str = "New conversation";

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
    /// The user renamed it (`PUT`): its first message does not title it.
    #[serde(skip)]
    pub renamed: bool,
    /// The answer being generated, if any.
    #[serde(skip)]
    pub live: Option<LiveSlot>,
}

#[derive(Debug, Clone, Default)]
pub struct Page {
    pub items: Vec<Conversation>,
    pub next_cursor: Option<String>,
}

/// A list request fails either on its cursor (the caller's fault) or the store.
#[derive(Debug)]
pub enum CursorOr<E> {
    BadCursor,
    Store(E),
}

impl Store {
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
            renamed: false,
            live: None,
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
        match self.conversation_item(id, None).await? {
            Some(item) => {
                let c = conversation_from(&item)?;
                Ok((c.user_id == user).then_some(c))
            }
            None => Ok(None),
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
            .update_expression("SET title = :t, updated_at = :now, renamed = :renamed")
            .expression_attribute_values(":u", s(user.to_string()))
            .expression_attribute_values(":t", s(title))
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":renamed", AttributeValue::Bool(true))
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
    /// Returns the answer that held its live slot, if one did (its place among
    /// the user's generating answers is the caller's to give back).
    pub async fn delete_conversation(
        &self,
        user: Uuid,
        id: Uuid,
    ) -> Result<Option<Uuid>, StoreError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(conversation_pk(id)))
            .key("sk", s(META_SK))
            .condition_expression("attribute_exists(pk) AND user_id = :u")
            .expression_attribute_values(":u", s(user.to_string()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(classify);
        let out = match deleted {
            Ok(out) => out,
            // Missing, or another user's. It may also be this very delete, an
            // earlier attempt applied and its response lost (the SDK retried
            // it): once the conversation item is gone, whatever its partition
            // still holds belongs to no conversation, so it goes too.
            Err(StoreError::NotFound) => {
                if self.conversation_item_gone(id).await? {
                    self.delete_messages(id).await?;
                }
                return Err(StoreError::NotFound);
            }
            Err(e) => return Err(e),
        };
        let live = out
            .attributes()
            .and_then(|item| str_attr(item, "live_id"))
            .and_then(|v| Uuid::parse_str(v).ok());
        self.delete_messages(id).await?;
        Ok(live)
    }

    /// No conversation item, whoever's.
    async fn conversation_item_gone(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self.conversation_item(id, Some("pk")).await?.is_none())
    }

    /// The conversation item, whoever's (one strongly consistent GetItem),
    /// with only the `projection`'s attributes when one is given.
    async fn conversation_item(
        &self,
        id: Uuid,
        projection: Option<&str>,
    ) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(conversation_pk(id)))
            .key("sk", s(META_SK))
            .set_projection_expression(projection.map(str::to_owned))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        Ok(out.item)
    }

    async fn delete_messages(&self, id: Uuid) -> Result<(), StoreError> {
        for chunk in self.partition_keys(id).await?.chunks(25) {
            self.batch_delete(chunk).await?;
        }
        Ok(())
    }

    /// The keys of every item left in a conversation's partition (messages and
    /// live answers' checkpoints), following the Query's pages to the end.
    async fn partition_keys(&self, id: Uuid) -> Result<Vec<Item>, StoreError> {
        let keys = self
            .query_all(|| {
                self.client
                    .query()
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(conversation_pk(id)))
                    .projection_expression("pk, sk")
                    .consistent_read(true)
            })
            .await?;
        Ok(keys
            .into_iter()
            .filter(|k| str_attr(k, "sk") != Some(META_SK))
            .collect())
    }

    pub(super) async fn batch_delete(&self, keys: &[Item]) -> Result<(), StoreError> {
        let requests = keys
            .iter()
            .map(delete_request)
            .collect::<Result<_, StoreError>>()?;
        self.batch_write(requests).await.map(|_| ())
    }
}

pub fn conversation_item(c: &Conversation) -> Item {
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
    if c.renamed {
        item.insert("renamed".to_owned(), AttributeValue::Bool(true));
    }
    item
}

pub fn conversation_from(item: &Item) -> Result<Conversation, StoreError> {
    Ok(Conversation {
        id: uuid_attr(item, "id")?,
        user_id: uuid_attr(item, "user_id")?,
        title: string_attr(item, "title")?,
        model_tag: str_attr(item, "model_tag").unwrap_or("default").to_owned(),
        is_favorited: matches!(item.get("is_favorited"), Some(AttributeValue::Bool(true))),
        created_at: string_attr(item, "created_at")?,
        updated_at: string_attr(item, "updated_at")?,
        last_message_id: str_attr(item, "last_message_id").and_then(|v| Uuid::parse_str(v).ok()),
        renamed: matches!(item.get("renamed"), Some(AttributeValue::Bool(true))),
        live: LiveSlot::from_item(item),
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
