//! What a legacy conversation becomes in the table: the same conversation and
//! user ids, messages under time-ordered ids, and a decision for every row the
//! table cannot hold as it is. Pure: the copy writes it, the dry run prints it,
//! verify compares the table with it.

use samosachaat::foundation::role::Role;
use samosachaat::foundation::time_fmt;
use samosachaat::store::DEFAULT_TITLE;
use samosachaat::store::{message_item, Conversation, Item, Message, MessageStatus};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::source::{LegacyConversation, LegacyMessage};

/// DynamoDB's item size limit is 400 KB (attribute names and values); this
/// stays under it, and under the local engines' counts of it, with a margin
/// for the attributes a later write may add.
const MAX_ITEM_BYTES: usize = 399_000;
/// A number attribute's largest size in an item.
const MAX_NUMBER_BYTES: usize = 21;

pub const DEFAULT_MODEL_TAG: &str = "default";

/// A row that could not be copied as it is, and what was done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub conversation_id: Uuid,
    /// The legacy message id, for a message row.
    pub message_id: Option<Uuid>,
    pub reason: String,
    pub action: &'static str,
}

/// A conversation as the copy writes it.
#[derive(Debug, Clone)]
pub struct Planned {
    pub conversation: Conversation,
    pub messages: Vec<Message>,
    /// Identifies the source rows this was made from (see [`version`]).
    pub version: String,
    pub notes: Vec<Note>,
    /// Bytes of message content read from the source.
    pub content_bytes: u64,
}

/// What the ledger records of a copied conversation: a digest of the
/// conversation's row and of its messages' ids and times. The chat-api never
/// edits a stored message (a regeneration deletes the answer and adds a new
/// one), so this changes whenever what users see changes.
pub fn version(c: &LegacyConversation) -> String {
    let mut h = Sha256::new();
    let fields = [
        c.id.to_string(),
        c.user_id.to_string(),
        c.title.clone().unwrap_or_else(|| "\u{0}null".into()),
        c.model_tag.clone().unwrap_or_else(|| "\u{0}null".into()),
        c.is_favorited.to_string(),
        c.created_at.map(time_fmt::format).unwrap_or_default(),
        c.updated_at.map(time_fmt::format).unwrap_or_default(),
        c.messages.to_string(),
        c.messages_digest.clone(),
    ];
    for f in fields {
        h.update((f.len() as u64).to_le_bytes());
        h.update(f.as_bytes());
    }
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The table's form of one legacy conversation. `now` stands in for a
/// conversation without any timestamp at all.
pub fn plan(c: &LegacyConversation, rows: &[LegacyMessage], now: OffsetDateTime) -> Planned {
    let mut notes = Vec::new();
    let mut note = |message_id: Option<Uuid>, reason: String, action: &'static str| {
        notes.push(Note {
            conversation_id: c.id,
            message_id,
            reason,
            action,
        })
    };

    let title = c.title.clone().unwrap_or_else(|| {
        note(
            None,
            "title is NULL".into(),
            "titled \"New conversation\", as the functions title a conversation created without one",
        );
        DEFAULT_TITLE.to_owned()
    });
    let model_tag = c.model_tag.clone().unwrap_or_else(|| {
        note(None, "model_tag is NULL".into(), "model_tag \"default\"");
        DEFAULT_MODEL_TAG.to_owned()
    });
    let first_message_at = rows.iter().find_map(|m| m.created_at);
    let created_at = match (c.created_at, c.updated_at) {
        (Some(t), _) => t,
        (None, Some(u)) => {
            note(None, "created_at is NULL".into(), "created_at = updated_at");
            u
        }
        (None, None) => {
            let t = first_message_at.unwrap_or(now);
            note(
                None,
                "created_at and updated_at are NULL".into(),
                "created_at = the first message's time (the copy's time without messages)",
            );
            t
        }
    };

    let mut messages = Vec::with_capacity(rows.len());
    let mut content_bytes = 0u64;
    let mut previous: Option<OffsetDateTime> = None;
    let mut last_key: Option<(i64, u16)> = None;
    let mut rank: u32 = 0;
    for row in rows {
        content_bytes += row.content.len() as u64;
        let role = match row.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                note(
                    Some(row.id),
                    format!("role `{other}`: the functions hold user and assistant messages only"),
                    "not copied",
                );
                continue;
            }
        };
        let at = match row.created_at {
            Some(t) => t,
            None => {
                let t = previous.map_or(created_at, |p| p + Duration::microseconds(1));
                note(
                    Some(row.id),
                    "created_at is NULL (the chat-api lists it last)".into(),
                    "created_at = one microsecond after the message before it",
                );
                t
            }
        };
        previous = Some(at);
        let key = id_time(at);
        if key.0 < 0 || key.0 >= 1 << 48 {
            note(
                Some(row.id),
                format!(
                    "created_at {} is outside a time-ordered id's range",
                    time_fmt::format(at)
                ),
                "its id carries the nearest time it can; created_at and order are kept",
            );
        }
        let clamped = (key.0.clamp(0, (1 << 48) - 1), key.1);
        rank = if last_key == Some(clamped) {
            rank + 1
        } else {
            0
        };
        last_key = Some(clamped);
        let id = message_id(c.id, row.id, clamped, rank);
        let mut message = Message {
            id,
            conversation_id: c.id,
            role,
            content: row.content.clone(),
            token_count: count(row.token_count, row.id, "token_count", &mut note),
            model_tag: row.model_tag.clone(),
            inference_time_ms: count(
                row.inference_time_ms,
                row.id,
                "inference_time_ms",
                &mut note,
            ),
            created_at: time_fmt::format(at),
            status: MessageStatus::Complete,
        };
        let room = content_room(&message);
        if message.content.len() > room {
            let kept = floor_char_boundary(&message.content, room);
            note(
                Some(row.id),
                format!(
                    "content is {} bytes, over DynamoDB's 400 KB item limit",
                    message.content.len()
                ),
                "stored as its first bytes that fit, at a character boundary, with status \"incomplete\"",
            );
            message.content.truncate(kept);
            message.status = MessageStatus::Incomplete;
        }
        messages.push(message);
    }

    let updated_at = match c.updated_at {
        Some(u) => u,
        None => {
            let latest = messages
                .iter()
                .filter_map(|m| time_fmt::parse(&m.created_at))
                .fold(created_at, OffsetDateTime::max);
            if c.created_at.is_some() {
                note(
                    None,
                    "updated_at is NULL".into(),
                    "updated_at = the latest of created_at and its messages' times",
                );
            }
            latest
        }
    };
    let conversation = Conversation {
        id: c.id,
        user_id: c.user_id,
        title,
        model_tag,
        is_favorited: c.is_favorited,
        created_at: time_fmt::format(created_at),
        updated_at: time_fmt::format(updated_at),
        last_message_id: messages.last().map(|m| m.id),
        renamed: false,
        live: None,
    };
    Planned {
        conversation,
        messages,
        version: version(c),
        notes,
        content_bytes,
    }
}

/// A count the table stores as a number: a negative one is left out.
fn count(
    value: Option<i32>,
    row: Uuid,
    name: &str,
    note: &mut impl FnMut(Option<Uuid>, String, &'static str),
) -> Option<u64> {
    let v = value?;
    match u64::try_from(v) {
        Ok(v) => Some(v),
        Err(_) => {
            note(
                Some(row),
                format!("{name} is negative ({v})"),
                "left out (served as null)",
            );
            None
        }
    }
}

/// Milliseconds since the epoch and the microseconds within that millisecond.
fn id_time(at: OffsetDateTime) -> (i64, u16) {
    let micros = at.unix_timestamp_nanos() / 1_000;
    let ms = micros.div_euclid(1_000);
    let us = micros.rem_euclid(1_000);
    (
        i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX }),
        us as u16,
    )
}

/// A UUIDv7 made from the message's time, so the table's key order is the
/// chat-api's order (`created_at`, then id): the millisecond in the time field,
/// the microsecond within it in `rand_a`, and in `rand_b` the message's rank
/// among messages of the same microsecond (the source's rows come in id order)
/// above a digest of the legacy ids. The same rows always make the same ids, so
/// a copy run again writes the same items.
pub fn message_id(conversation: Uuid, legacy: Uuid, (ms, us): (i64, u16), rank: u32) -> Uuid {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    let mut h = Sha256::new();
    h.update(conversation.as_bytes());
    h.update(legacy.as_bytes());
    let digest = h.finalize();
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&digest[..8]);
    let noise = u64::from_be_bytes(tail) & ((1 << 40) - 1);
    let rand_b = (u64::from(rank.min((1 << 22) - 1)) << 40) | noise;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    let rand_a = us.min(999) & 0x0fff;
    bytes[6] = 0x70 | (rand_a >> 8) as u8;
    bytes[7] = (rand_a & 0xff) as u8;
    bytes[8..].copy_from_slice(&rand_b.to_be_bytes());
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    Uuid::from_bytes(bytes)
}

/// How many bytes of content the message's item has room for.
fn content_room(m: &Message) -> usize {
    let item = message_item(&Message {
        content: String::new(),
        ..m.clone()
    });
    MAX_ITEM_BYTES.saturating_sub(item_size(&item))
}

/// An item's size as DynamoDB counts it (numbers at their largest).
pub fn item_size(item: &Item) -> usize {
    use aws_sdk_dynamodb::types::AttributeValue as V;
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    V::S(s) => s.len(),
                    V::N(_) => MAX_NUMBER_BYTES,
                    V::Bool(_) | V::Null(_) => 1,
                    _ => 0,
                }
        })
        .sum()
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn conversation() -> LegacyConversation {
        LegacyConversation {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            title: Some("Trip to Goa".into()),
            model_tag: Some("d20".into()),
            is_favorited: true,
            created_at: Some(datetime!(2026-01-02 03:04:05.000007 UTC)),
            updated_at: Some(datetime!(2026-01-02 03:05:00 UTC)),
            messages: 0,
            messages_digest: String::new(),
        }
    }

    fn row(role: &str, content: &str, at: Option<OffsetDateTime>) -> LegacyMessage {
        LegacyMessage {
            id: Uuid::new_v4(),
            role: role.into(),
            content: content.into(),
            token_count: None,
            model_tag: None,
            inference_time_ms: None,
            created_at: at,
        }
    }

    #[test]
    fn keeps_ids_fields_and_order() {
        let c = conversation();
        let t = datetime!(2026-01-02 03:04:06.123456 UTC);
        let mut rows = vec![
            row("user", "hi", Some(t)),
            row("assistant", "hello", Some(t + Duration::seconds(2))),
        ];
        rows[1].token_count = Some(7);
        rows[1].inference_time_ms = Some(812);
        rows[1].model_tag = Some("d20".into());
        let p = plan(&c, &rows, OffsetDateTime::now_utc());
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert_eq!(p.conversation.id, c.id);
        assert_eq!(p.conversation.user_id, c.user_id);
        assert_eq!(p.conversation.title, "Trip to Goa");
        assert!(p.conversation.is_favorited);
        assert_eq!(p.conversation.created_at, "2026-01-02T03:04:05.000007Z");
        assert_eq!(p.conversation.updated_at, "2026-01-02T03:05:00.000000Z");
        assert_eq!(p.conversation.last_message_id, Some(p.messages[1].id));
        assert_eq!(p.messages[0].created_at, "2026-01-02T03:04:06.123456Z");
        assert_eq!(p.messages[1].token_count, Some(7));
        assert_eq!(p.messages[1].inference_time_ms, Some(812));
        assert!(p.messages[0].id < p.messages[1].id);
        assert_eq!(p.messages[0].id.get_version_num(), 7);
        assert_eq!(p.content_bytes, 7);
    }

    #[test]
    fn ids_follow_the_chat_apis_order_within_a_microsecond_and_a_millisecond() {
        let c = conversation();
        let t = datetime!(2026-01-02 03:04:06.123000 UTC);
        // Rows arrive as the chat-api orders them: created_at, then id.
        let rows = vec![
            row("user", "a", Some(t)),
            row("assistant", "b", Some(t)),
            row("user", "c", Some(t)),
            row("assistant", "d", Some(t + Duration::microseconds(1))),
            row("user", "e", Some(t + Duration::microseconds(999))),
            row("assistant", "f", Some(t + Duration::milliseconds(1))),
        ];
        let p = plan(&c, &rows, OffsetDateTime::now_utc());
        let ids: Vec<Uuid> = p.messages.iter().map(|m| m.id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn the_same_rows_make_the_same_ids() {
        let c = conversation();
        let rows = vec![
            row("user", "a", c.created_at),
            row("assistant", "b", c.created_at),
        ];
        let a = plan(&c, &rows, OffsetDateTime::now_utc());
        let b = plan(&c, &rows, OffsetDateTime::now_utc());
        let ids = |p: &Planned| p.messages.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(a.version, b.version);
    }

    #[test]
    fn every_row_it_cannot_hold_as_is_gets_a_note() {
        let mut c = conversation();
        c.title = None;
        c.model_tag = None;
        c.updated_at = None;
        let t = datetime!(2026-01-02 03:04:06 UTC);
        let huge = "é".repeat(300_000); // 600,000 bytes
        let mut rows = vec![
            row("system", "be nice", Some(t)),
            row("user", &huge, Some(t + Duration::seconds(1))),
            row("assistant", "ok", None),
        ];
        rows[2].token_count = Some(-3);
        let p = plan(&c, &rows, OffsetDateTime::now_utc());
        let reasons: Vec<&str> = p.notes.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(p.notes.len(), 7, "{reasons:?}");
        assert_eq!(p.conversation.title, DEFAULT_TITLE);
        assert_eq!(p.conversation.model_tag, "default");
        assert_eq!(p.messages.len(), 2, "the system row is not copied");
        let cut = &p.messages[0];
        assert_eq!(cut.status, MessageStatus::Incomplete);
        assert!(huge.starts_with(&cut.content) && !cut.content.is_empty());
        assert!(item_size(&message_item(cut)) <= 400 * 1024);
        let late = &p.messages[1];
        assert_eq!(late.created_at, "2026-01-02T03:04:07.000001Z");
        assert_eq!(late.token_count, None);
        assert_eq!(p.conversation.updated_at, late.created_at);
    }

    #[test]
    fn a_change_of_the_row_or_its_messages_changes_the_version() {
        let c = conversation();
        let base = version(&c);
        let changed = [
            LegacyConversation {
                title: Some("Renamed".into()),
                ..c.clone()
            },
            LegacyConversation {
                title: None,
                ..c.clone()
            },
            LegacyConversation {
                messages: 1,
                ..c.clone()
            },
            LegacyConversation {
                messages_digest: "ab".into(),
                ..c.clone()
            },
            LegacyConversation {
                updated_at: None,
                ..c.clone()
            },
            LegacyConversation {
                is_favorited: false,
                ..c.clone()
            },
        ];
        for other in changed {
            assert_ne!(version(&other), base, "{other:?}");
        }
        assert_eq!(version(&c.clone()), base);
    }

    #[test]
    fn ids_carry_their_time() {
        let t = datetime!(2026-03-04 05:06:07.891234 UTC);
        let id = message_id(Uuid::nil(), Uuid::nil(), id_time(t), 0);
        let (secs, nanos) = id.get_timestamp().expect("v7").to_unix();
        assert_eq!(secs, t.unix_timestamp() as u64);
        assert_eq!(nanos, 891_000_000);
    }
}
