//! A run: the source's conversations and the ledger, both in id order, merged
//! into one list of work, done a chunk at a time.
//!
//! - in PostgreSQL only: copied (a first copy);
//! - in both, same version: nothing to do (a second run writes nothing);
//! - in both, another version: copied again, if the functions have not changed
//!   the conversation since the copy (else a conflict, and theirs is kept);
//! - in the ledger only (deleted in PostgreSQL): deleted by catch-up, on the
//!   same condition.

use std::cmp::Ordering as Order;
use std::collections::HashSet;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use samosachaat::store::{conversation_from, message_from, message_sk, Item, Message};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::plan::{plan, version, Planned};
use crate::report::{Progress, Tally};
use crate::source::{LegacyConversation, Snapshot};
use crate::target::{put_message, Entry, Partition, Standing, Target};
use crate::Failure;

/// Conversations whose writes are gathered into one set of batches.
const CHUNK: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Copy,
    CatchUp,
    Verify,
    DryRun,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "copy" => Some(Self::Copy),
            "catch-up" => Some(Self::CatchUp),
            "verify" => Some(Self::Verify),
            "dry-run" => Some(Self::DryRun),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::CatchUp => "catch-up",
            Self::Verify => "verify",
            Self::DryRun => "dry-run",
        }
    }

    fn writes(self) -> bool {
        matches!(self, Self::Copy | Self::CatchUp)
    }
}

/// One conversation's place in the merge of the source and the ledger.
enum Work {
    Fresh(LegacyConversation),
    Known(LegacyConversation, Entry),
    Gone(Entry),
}

/// What the writes of a chunk will do for one conversation.
enum Step {
    Nothing,
    Write {
        planned: Box<Planned>,
        previous: Option<String>,
        stale: Vec<Item>,
    },
    Delete {
        id: Uuid,
        version: Option<String>,
        keys: Vec<Item>,
    },
}

pub struct Run<'a> {
    pub mode: Mode,
    pub concurrency: usize,
    pub snapshot: &'a Snapshot<'a>,
    pub target: &'a Target,
    pub tally: &'a Tally,
    pub now: OffsetDateTime,
}

impl Run<'_> {
    pub async fn go(&self, progress: &Progress) -> Result<(), Failure> {
        let mut source = self.snapshot.conversations().await?;
        let mut ledger = self.target.ledger();
        let mut next_source = source.next().await?;
        let mut next_entry = ledger.next().await?;
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            let work = match (next_source.take(), next_entry.take()) {
                (None, None) => break,
                (Some(c), None) => {
                    next_source = source.next().await?;
                    Work::Fresh(c)
                }
                (None, Some(e)) => {
                    next_entry = ledger.next().await?;
                    Work::Gone(e)
                }
                (Some(c), Some(e)) => match c.id.cmp(&e.id) {
                    Order::Less => {
                        next_entry = Some(e);
                        next_source = source.next().await?;
                        Work::Fresh(c)
                    }
                    Order::Greater => {
                        next_source = Some(c);
                        next_entry = ledger.next().await?;
                        Work::Gone(e)
                    }
                    Order::Equal => {
                        next_source = source.next().await?;
                        next_entry = ledger.next().await?;
                        Work::Known(c, e)
                    }
                },
            };
            chunk.push(work);
            if chunk.len() == CHUNK {
                self.chunk(std::mem::take(&mut chunk)).await?;
                progress.tick(self.tally);
            }
        }
        self.chunk(chunk).await?;
        progress.tick(self.tally);
        Ok(())
    }

    async fn chunk(&self, chunk: Vec<Work>) -> Result<(), Failure> {
        if self.mode == Mode::Verify {
            return stream::iter(chunk)
                .map(|w| self.verify(w))
                .buffer_unordered(self.concurrency)
                .try_collect::<()>()
                .await;
        }
        let steps: Vec<Step> = stream::iter(chunk)
            .map(|w| self.prepare(w))
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        if self.mode.writes() {
            self.write(steps).await
        } else {
            for step in &steps {
                match step {
                    Step::Write { planned, .. } => self.tally.copied(planned),
                    Step::Delete { .. } => self.tally.deleted(),
                    Step::Nothing => {}
                }
            }
            Ok(())
        }
    }

    /// Reads what one conversation needs and decides what to write.
    async fn prepare(&self, work: Work) -> Result<Step, Failure> {
        let t = self.tally;
        match work {
            Work::Fresh(c) => {
                t.seen();
                let part = self.target.inspect(c.id, false).await?;
                if part.standing != Standing::Absent {
                    t.conflict(
                        c.id,
                        "the table holds a conversation with this id that no copy wrote: left as it is",
                    );
                    return Ok(Step::Nothing);
                }
                self.planned(c, None, part).await
            }
            Work::Known(c, e) => {
                t.seen();
                if e.version == version(&c) {
                    t.unchanged();
                    return Ok(Step::Nothing);
                }
                let part = self.target.inspect(c.id, false).await?;
                match &part.standing {
                    Standing::Unchanged { version } if *version == e.version => {
                        self.planned(c, Some(e.version), part).await
                    }
                    Standing::Absent => {
                        t.conflict(
                            c.id,
                            "changed in PostgreSQL since its copy, and deleted on the new stack: not brought back",
                        );
                        Ok(Step::Nothing)
                    }
                    _ => {
                        t.conflict(
                            c.id,
                            "changed in PostgreSQL since its copy, and on the new stack too: the new stack's version is kept",
                        );
                        Ok(Step::Nothing)
                    }
                }
            }
            Work::Gone(e) => {
                if self.mode == Mode::Copy {
                    t.left_deleted();
                    return Ok(Step::Nothing);
                }
                let part = self.target.inspect(e.id, false).await?;
                match &part.standing {
                    Standing::Absent => Ok(Step::Delete {
                        id: e.id,
                        version: None,
                        keys: messages_of(part.others),
                    }),
                    Standing::Unchanged { version } if *version == e.version => Ok(Step::Delete {
                        id: e.id,
                        version: Some(e.version),
                        keys: messages_of(part.others),
                    }),
                    _ => {
                        t.conflict(
                            e.id,
                            "deleted in PostgreSQL, changed on the new stack since its copy: kept",
                        );
                        Ok(Step::Nothing)
                    }
                }
            }
        }
    }

    async fn planned(
        &self,
        c: LegacyConversation,
        previous: Option<String>,
        part: Partition,
    ) -> Result<Step, Failure> {
        let rows = self.snapshot.messages(c.id).await?;
        let planned = plan(&c, &rows, self.now);
        self.tally.noted(&planned.notes);
        // Messages an earlier copy (or an interrupted one) wrote that this one
        // does not: the chat-api deleted them since (a regenerated answer).
        let keep: HashSet<String> = planned.messages.iter().map(|m| message_sk(m.id)).collect();
        let stale = messages_of(part.others)
            .into_iter()
            .filter(|k| !sk(k).is_some_and(|s| keep.contains(s)))
            .collect();
        Ok(Step::Write {
            planned: Box::new(planned),
            previous,
            stale,
        })
    }

    /// A chunk's writes: every message put and stale delete in batches of 25,
    /// then each conversation's item with its ledger entry, then deletions.
    async fn write(&self, steps: Vec<Step>) -> Result<(), Failure> {
        let mut requests = Vec::new();
        for step in &steps {
            if let Step::Write { planned, stale, .. } = step {
                for m in &planned.messages {
                    requests.push(put_message(m)?);
                }
                requests.extend(crate::target::delete_requests(stale)?);
            }
        }
        let batches: Vec<Vec<_>> = requests
            .chunks(crate::target::BATCH_ITEMS)
            .map(<[_]>::to_vec)
            .collect();
        stream::iter(batches)
            .map(|b| self.target.batch(b))
            .buffer_unordered(self.concurrency)
            .try_collect::<()>()
            .await?;
        stream::iter(steps)
            .map(|step| self.finish(step))
            .buffer_unordered(self.concurrency)
            .try_collect::<()>()
            .await
    }

    async fn finish(&self, step: Step) -> Result<(), Failure> {
        let t = self.tally;
        match step {
            Step::Nothing => Ok(()),
            Step::Write {
                planned, previous, ..
            } => {
                if self.target.commit(&planned, previous.as_deref()).await? {
                    t.copied(&planned);
                } else {
                    t.conflict(
                        planned.conversation.id,
                        "the new stack changed it while it was being copied: its version is kept",
                    );
                }
                Ok(())
            }
            Step::Delete { id, version, keys } => {
                if let Some(v) = version {
                    if !self.target.delete_conversation_item(id, &v).await? {
                        t.conflict(
                            id,
                            "deleted in PostgreSQL, changed on the new stack meanwhile: kept",
                        );
                        return Ok(());
                    }
                }
                // The conversation item first, its messages next and the ledger
                // entry last: a run stopped in between finds the entry and
                // finishes the deletion.
                self.target.delete_keys(keys).await?;
                self.target.delete_entry(id).await?;
                t.deleted();
                Ok(())
            }
        }
    }

    /// Compares one conversation in both stores; what differs goes to the tally.
    async fn verify(&self, work: Work) -> Result<(), Failure> {
        let t = self.tally;
        match work {
            Work::Fresh(c) => {
                t.seen();
                t.differs(
                    c.id,
                    "in PostgreSQL, not in the table (not copied yet)".into(),
                );
            }
            Work::Gone(e) => {
                let part = self.target.inspect(e.id, false).await?;
                match part.standing {
                    Standing::Absent => {}
                    Standing::Changed => t.not_compared(
                        e.id,
                        "deleted in PostgreSQL, changed on the new stack since its copy",
                    ),
                    Standing::Unchanged { .. } => t.differs(
                        e.id,
                        "deleted in PostgreSQL, still in the table (run catch-up)".into(),
                    ),
                }
            }
            Work::Known(c, e) => {
                t.seen();
                let part = self.target.inspect(c.id, true).await?;
                let current = version(&c);
                match &part.standing {
                    Standing::Changed => {
                        t.not_compared(c.id, "changed on the new stack since its copy");
                        return Ok(());
                    }
                    Standing::Absent if e.version == current => {
                        t.not_compared(c.id, "deleted on the new stack since its copy");
                        return Ok(());
                    }
                    Standing::Absent => {
                        t.differs(
                            c.id,
                            "changed in PostgreSQL since its copy, deleted on the new stack".into(),
                        );
                        return Ok(());
                    }
                    Standing::Unchanged { version } if *version != current => {
                        t.differs(
                            c.id,
                            "changed in PostgreSQL since its copy (run catch-up)".into(),
                        );
                        return Ok(());
                    }
                    Standing::Unchanged { .. } => {}
                }
                let rows = self.snapshot.messages(c.id).await?;
                let planned = plan(&c, &rows, self.now);
                t.noted(&planned.notes);
                for what in compare(&planned, &part) {
                    t.differs(c.id, what);
                }
                t.verified(&planned);
            }
        }
        Ok(())
    }
}

fn sk(item: &Item) -> Option<&str> {
    match item.get("sk") {
        Some(aws_sdk_dynamodb::types::AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

/// The message items of a partition (not live answers' checkpoints, which
/// expire on their own).
fn messages_of(items: Vec<Item>) -> Vec<Item> {
    items
        .into_iter()
        .filter(|i| sk(i).is_some_and(|s| s.starts_with("M#")))
        .collect()
}

/// What differs between the planned conversation and the table's, as counts
/// and checksums of the contents.
fn compare(planned: &Planned, part: &Partition) -> Vec<String> {
    let mut out = Vec::new();
    match part.conversation.as_ref().map(conversation_from) {
        Some(Ok(stored)) => {
            let want = &planned.conversation;
            let fields = [
                (
                    "user_id",
                    want.user_id.to_string(),
                    stored.user_id.to_string(),
                ),
                ("title", want.title.clone(), stored.title.clone()),
                (
                    "model_tag",
                    want.model_tag.clone(),
                    stored.model_tag.clone(),
                ),
                (
                    "is_favorited",
                    want.is_favorited.to_string(),
                    stored.is_favorited.to_string(),
                ),
                (
                    "created_at",
                    want.created_at.clone(),
                    stored.created_at.clone(),
                ),
                (
                    "updated_at",
                    want.updated_at.clone(),
                    stored.updated_at.clone(),
                ),
            ];
            for (name, a, b) in fields {
                if a != b {
                    out.push(format!("conversation {name} differs"));
                }
            }
        }
        Some(Err(e)) => out.push(format!("conversation item unreadable: {e}")),
        None => out.push("conversation item missing".into()),
    }
    let stored: Result<Vec<Message>, _> = messages_of(part.others.clone())
        .iter()
        .map(message_from)
        .collect();
    match stored {
        Ok(stored) => {
            let (a, b) = (checksum(&planned.messages), checksum(&stored));
            if planned.messages.len() != stored.len() || a != b {
                out.push(format!(
                    "messages: PostgreSQL {} (checksum {}), table {} (checksum {})",
                    planned.messages.len(),
                    &a[..12],
                    stored.len(),
                    &b[..12]
                ));
            }
        }
        Err(e) => out.push(format!("a message item is unreadable: {e}")),
    }
    out
}

/// A digest of messages' ids, roles, contents, times, statuses and counts, in order.
pub fn checksum(messages: &[Message]) -> String {
    let mut h = Sha256::new();
    for m in messages {
        let fields = [
            m.id.to_string(),
            m.role.as_str().to_owned(),
            m.content.clone(),
            m.created_at.clone(),
            m.status.as_str().to_owned(),
            format!("{:?}", m.token_count),
            format!("{:?}", m.model_tag),
            format!("{:?}", m.inference_time_ms),
        ];
        for f in fields {
            h.update((f.len() as u64).to_le_bytes());
            h.update(f.as_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
