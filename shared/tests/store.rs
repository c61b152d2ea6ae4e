//! The store against the local DynamoDB server (DynamoDB Local, through the
//! stack's fault proxy), with every request the SDK sends counted by an
//! interceptor.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use common::Stack;
use samosachaat::adapters::store::{
    Conversation, Counted, HeldAnswer, Message, MessageStatus, Replacing, SlotClaim, SlotGuard,
    Store, StoreError, Windows, DEFAULT_TITLE,
};
use samosachaat::foundation::role::Role;
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Default, Clone)]
struct Counter(Arc<AtomicUsize>);

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "request counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn counted_store(stack: &Stack) -> (Store, Counter) {
    let counter = Counter::default();
    let conf = stack
        .functions_dynamodb()
        .config()
        .to_builder()
        .interceptor(counter.clone())
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(conf);
    (Store::new(client, stack.table.clone()), counter)
}

/// A new user and a conversation of theirs, made through the store.
async fn new_conversation(store: &Store) -> (Uuid, Conversation) {
    let user = Uuid::new_v4();
    let conversation = store
        .create_conversation(user, DEFAULT_TITLE, "default")
        .await
        .expect("create");
    (user, conversation)
}

fn message(conversation: &Conversation, role: Role, content: &str) -> Message {
    Message {
        id: Uuid::now_v7(),
        conversation_id: conversation.id,
        role,
        content: content.to_owned(),
        token_count: None,
        model_tag: Some("default".into()),
        inference_time_ms: None,
        created_at: samosachaat::foundation::time_fmt::format(
            samosachaat::foundation::time_fmt::now(),
        ),
        status: MessageStatus::Complete,
    }
}

#[tokio::test]
async fn one_query_loads_the_conversation_and_its_newest_messages() {
    let stack = Stack::get().await;
    let (store, counter) = counted_store(&stack).await;
    let (user, conversation) = new_conversation(&store).await;
    let mut contents = Vec::new();
    for i in 0..60 {
        let role = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        let m = message(&conversation, role, &format!("message {i}"));
        store
            .append_message(user, &conversation, &m, None)
            .await
            .expect("append");
        contents.push(m.content);
    }

    let before = counter.0.load(Ordering::SeqCst);
    let ctx = store
        .load_chat(user, conversation.id, 51)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(
        counter.0.load(Ordering::SeqCst) - before,
        1,
        "exactly one request"
    );
    assert_eq!(ctx.conversation.id, conversation.id);
    let loaded: Vec<&str> = ctx.recent.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        loaded,
        contents[9..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(
        ctx.conversation.last_message_id,
        ctx.recent.last().map(|m| m.id)
    );

    // Another user, or a conversation that does not exist: nothing.
    assert!(store
        .load_chat(Uuid::new_v4(), conversation.id, 51)
        .await
        .expect("load")
        .is_none());
    assert!(store
        .load_chat(user, Uuid::new_v4(), 51)
        .await
        .expect("load")
        .is_none());
}

#[tokio::test]
async fn the_title_is_taken_once_and_never_over_a_rename() {
    let stack = Stack::get().await;
    let (store, _) = counted_store(&stack).await;
    let (user, conversation) = new_conversation(&store).await;
    let renamed = store
        .rename(user, conversation.id, "Mine")
        .await
        .expect("rename");
    let m = message(&conversation, Role::User, "first question");
    store
        .append_message(user, &conversation, &m, Some("first question"))
        .await
        .expect("a renamed title does not stop the message");
    let after = store
        .get_conversation(user, conversation.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(after.title, "Mine");
    assert!(after.updated_at > renamed.updated_at);
    assert_eq!(
        store
            .all_messages(conversation.id)
            .await
            .expect("messages")
            .len(),
        1
    );
}

#[tokio::test]
async fn message_writes_need_the_conversation_and_its_owner() {
    let stack = Stack::get().await;
    let (store, _) = counted_store(&stack).await;
    let (user, conversation) = new_conversation(&store).await;
    let m = message(&conversation, Role::User, "q");

    let foreign = store
        .append_message(Uuid::new_v4(), &conversation, &m, None)
        .await;
    assert!(matches!(foreign, Err(StoreError::NotFound)), "{foreign:?}");
    store
        .delete_conversation(user, conversation.id)
        .await
        .expect("delete");
    let gone = store.append_message(user, &conversation, &m, None).await;
    assert!(matches!(gone, Err(StoreError::NotFound)), "{gone:?}");
    assert!(stack.items(conversation.id).await.is_empty());
}

#[tokio::test]
async fn a_replacement_needs_the_expected_last_message() {
    let stack = Stack::get().await;
    let (store, _) = counted_store(&stack).await;
    let (user, conversation) = new_conversation(&store).await;
    let q = message(&conversation, Role::User, "q");
    store
        .append_message(user, &conversation, &q, None)
        .await
        .expect("q");
    let a = message(&conversation, Role::Assistant, "a");
    store
        .append_message(user, &conversation, &a, None)
        .await
        .expect("a");
    let before = stack.items(conversation.id).await;

    let stale = message(&conversation, Role::Assistant, "stale");
    let result = store
        .replace_answer(
            user,
            &conversation,
            replacing(q.id),
            &stale,
            SlotGuard::Free,
            Vec::new(),
        )
        .await;
    assert!(matches!(result, Err(StoreError::Conflict)), "{result:?}");
    assert_eq!(
        stack.items(conversation.id).await,
        before,
        "a lost replacement changes nothing"
    );

    let new = message(&conversation, Role::Assistant, "new");
    store
        .replace_answer(
            user,
            &conversation,
            replacing(a.id),
            &new,
            SlotGuard::Free,
            Vec::new(),
        )
        .await
        .expect("replace");
    let contents: Vec<String> = store
        .all_messages(conversation.id)
        .await
        .expect("messages")
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(contents, ["q", "new"]);
    // The same replacement again: the old answer is gone, so it conflicts.
    let again = store
        .replace_answer(
            user,
            &conversation,
            replacing(a.id),
            &message(&conversation, Role::Assistant, "x"),
            SlotGuard::Free,
            Vec::new(),
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
}

#[tokio::test]
async fn concurrent_appends_all_land() {
    let stack = Stack::get().await;
    let (store, _) = counted_store(&stack).await;
    let (user, conversation) = new_conversation(&store).await;
    let writes = (0..12).map(|i| {
        let store = store.clone();
        let conversation = conversation.clone();
        async move {
            let m = message(&conversation, Role::User, &format!("concurrent {i}"));
            store.append_message(user, &conversation, &m, None).await
        }
    });
    for result in futures_util::future::join_all(writes).await {
        result.expect("append");
    }
    assert_eq!(
        store
            .all_messages(conversation.id)
            .await
            .expect("messages")
            .len(),
        12
    );
}

/// A message write applied once and sent again (a retry whose idempotency
/// token DynamoDB no longer holds) finds its own message: done, stored once.
#[tokio::test]
async fn a_message_written_twice_is_stored_once() {
    let stack = Stack::get().await;
    let (store, _) = counted_store(&stack).await;
    let (user, conversation) = new_conversation(&store).await;
    let m = message(&conversation, Role::User, "once");
    for _ in 0..2 {
        store
            .append_message(user, &conversation, &m, None)
            .await
            .expect("append");
    }
    let messages = store.all_messages(conversation.id).await.expect("messages");
    assert_eq!(messages.len(), 1, "{messages:?}");
}

/// DynamoDB refuses a write that meets a transaction in progress on its item
/// (DynamoDB Local never does: it runs transactions one after another), so
/// the fault proxy answers as DynamoDB would: a transaction is tried again by
/// the store, a single-item write by the SDK, and both land.
#[tokio::test]
async fn writes_that_meet_a_transaction_in_progress_are_tried_again() {
    let stack = Stack::get().await;
    let (store, counter) = counted_store(&stack).await;
    let (user, conversation) = new_conversation(&store).await;
    let id = conversation.id.to_string();
    for operation in ["TransactWriteItems", "UpdateItem"] {
        stack
            .fault(serde_json::json!({
                "operation": operation, "body_contains": id,
                "fault": "transaction_conflict", "times": 2,
            }))
            .await;
    }
    let before = counter.0.load(Ordering::SeqCst);
    let m = message(&conversation, Role::User, "q");
    store
        .append_message(user, &conversation, &m, None)
        .await
        .expect("append");
    let renamed = store
        .rename(user, conversation.id, "renamed")
        .await
        .expect("rename");
    assert_eq!(renamed.title, "renamed");
    // Three attempts of each write, and the rename's read of the conversation.
    assert_eq!(counter.0.load(Ordering::SeqCst) - before, 7);
    let outcomes: Vec<(String, Value)> = stack
        .fault_log(&id)
        .await
        .into_iter()
        .filter(|e| e["operation"] != "PutItem" && e["operation"] != "GetItem")
        .map(|e| {
            (
                e["operation"].as_str().unwrap_or("").to_owned(),
                e["fault"].clone(),
            )
        })
        .collect();
    let conflict = Value::from("transaction_conflict");
    assert_eq!(
        outcomes,
        [
            ("TransactWriteItems".to_owned(), conflict.clone()),
            ("TransactWriteItems".to_owned(), conflict.clone()),
            ("TransactWriteItems".to_owned(), Value::Null),
            ("UpdateItem".to_owned(), conflict.clone()),
            ("UpdateItem".to_owned(), conflict),
            ("UpdateItem".to_owned(), Value::Null),
        ]
    );
    let stored = store.all_messages(conversation.id).await.expect("messages");
    assert_eq!(stored.len(), 1);
}

fn replacing(last: Uuid) -> Replacing {
    Replacing {
        expected_last: last,
        replaces: Some(last),
    }
}

/// A claim whose first attempt was applied but whose response was lost is
/// retried by the SDK; the retry finds the slot holding its own answer. That
/// is a claim, not a busy conversation: repeating the claim is what the retry
/// does.
#[tokio::test]
async fn a_repeated_claim_of_the_same_answer_holds_the_slot() {
    let stack = Stack::get().await;
    let (store, _) = counted_store(&stack).await;
    let (user, conversation) = new_conversation(&store).await;
    let answer = Uuid::now_v7();
    let deadline_ms = u64::MAX / 2;
    for attempt in ["first", "retried"] {
        let claim = store
            .claim_slot(user, conversation.id, answer, deadline_ms)
            .await
            .expect("claim");
        assert!(matches!(claim, SlotClaim::Claimed), "{attempt}: {claim:?}");
    }
    let other = store
        .claim_slot(user, conversation.id, Uuid::now_v7(), deadline_ms)
        .await
        .expect("claim");
    assert!(matches!(other, SlotClaim::Busy(_)), "{other:?}");
}

/// A generating answer of a conversation of its own.
fn new_held() -> HeldAnswer {
    HeldAnswer {
        answer: Uuid::now_v7(),
        conversation: Uuid::new_v4(),
    }
}

fn limit_windows(minute: i64) -> Windows {
    Windows {
        minute,
        day: "2026-12-01".into(),
        per_minute: 3,
        per_day: 100,
        concurrent: 5,
        expires_at: 4_000_000_000,
    }
}

#[tokio::test]
async fn a_repeated_count_of_one_request_counts_it_once_and_a_refund_applies_once() {
    let stack = Stack::get().await;
    let (store, counter) = counted_store(&stack).await;
    let user = Uuid::new_v4();
    let windows = limit_windows(29_935_689);
    let (a, b) = (new_held(), new_held());
    let (first, second) = (a.answer, b.answer);

    let before = counter.0.load(Ordering::SeqCst);
    let counted = store.count_request(user, &windows, first, a).await.unwrap();
    assert_eq!(counter.0.load(Ordering::SeqCst) - before, 1, "one request");
    assert!(matches!(counted, Counted::Admitted(_)), "{counted:?}");
    // As an SDK retry of an applied update would: admitted, nothing counted again.
    match store.count_request(user, &windows, first, a).await.unwrap() {
        Counted::Admitted(record) => {
            assert_eq!((record.this_minute, record.today), (1, 1));
            assert!(record.counts_request);
            assert_eq!(record.held, vec![a]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store
            .count_request(user, &windows, second, b)
            .await
            .unwrap(),
        Counted::Admitted(_)
    ));

    // A refund twice takes one request back once.
    for _ in 0..2 {
        store
            .uncount_request(user, &windows, first, a)
            .await
            .unwrap();
    }
    match store
        .count_request(user, &windows, second, b)
        .await
        .unwrap()
    {
        Counted::Admitted(record) => {
            assert_eq!((record.this_minute, record.today), (1, 1));
            assert_eq!(record.held, vec![b]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_full_window_refuses_with_the_record_and_an_ended_answer_clears_past_windows() {
    let stack = Stack::get().await;
    let (store, _) = counted_store(&stack).await;
    let user = Uuid::new_v4();
    let old = limit_windows(29_935_600);
    let old_held = new_held();
    store
        .count_request(user, &old, old_held.answer, old_held)
        .await
        .unwrap();
    let mut now = limit_windows(29_935_700);
    now.day = "2026-12-02".into();
    let mut admitted = Vec::new();
    for _ in 0..3 {
        let h = new_held();
        match store.count_request(user, &now, h.answer, h).await.unwrap() {
            Counted::Admitted(record) => admitted.push((h, record)),
            other => panic!("{other:?}"),
        }
    }
    let past = &admitted[0].1.past_windows;
    assert_eq!(past, &["day_2026-12-01", "min_29935600"]);

    // The minute is full: refused, and the record says so.
    let extra = new_held();
    match store
        .count_request(user, &now, extra.answer, extra)
        .await
        .unwrap()
    {
        Counted::Full(record) => {
            assert_eq!((record.this_minute, record.today), (3, 3));
            assert!(!record.counts_request);
            assert_eq!(record.held.len(), 4);
        }
        other => panic!("{other:?}"),
    }

    let (first, record) = &admitted[0];
    store
        .release_answers(user, &[*first, old_held], &[], &record.past_windows)
        .await
        .unwrap();
    let item = stack
        .dynamodb
        .get_item()
        .table_name(&stack.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("LIMIT#{user}")),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("LIMITS".into()),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item()
        .cloned()
        .unwrap();
    let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "answers",
            "day_2026-12-02",
            "expires_at",
            "min_29935700",
            "pk",
            "sk"
        ]
    );
}
