//! DynamoDB faults end to end: the compiled functions reach DynamoDB through the
//! stack's fault proxy (`dev/fault-proxy`), which throttles, fails, resets or
//! delays chosen requests; the tests read the table directly.
//!
//! A send makes one Query, then two TransactWriteItems: the user message (while
//! the upstream works) and, after the upstream's `done`, the answer. Rules are
//! scoped so parallel tests never meet each other's: the Query by the
//! conversation id, the answer write by a unique word in the answer itself (the
//! user message's write, retried, would otherwise shift any count of writes).
//!
//! What must hold: retries succeed where AWS would; when the answer write really
//! fails the stream ends `persist_failed` then `done`; nothing half-written stays
//! behind.

mod common;

use std::time::Duration;

use common::{eventually, roles_and_contents, s, Item, Stack, User};
use serde_json::{json, Value};
use uuid::Uuid;

/// A conversation with a marker for its upstream scenario and a unique word for
/// its answer.
struct Chat {
    user: User,
    id: Uuid,
    m: String,
    word: String,
}

impl Chat {
    async fn new(stack: &Stack) -> Chat {
        let (user, id, m) = stack.chat().await;
        Chat {
            user,
            id,
            m,
            word: format!("w{}", Uuid::new_v4().simple()),
        }
    }

    fn question(&self) -> String {
        format!("q {}", self.m)
    }

    fn answer(&self) -> String {
        format!("fine answer {}", self.word)
    }

    /// The next upstream answer for this conversation: `fine answer <word>`.
    async fn expect_answer(&self, stack: &Stack) {
        stack
            .scenario(
                json!({"match": self.m, "tokens": ["fine", " answer", format!(" {}", self.word)]}),
            )
            .await;
    }

    /// Registers `fault` on the TransactWriteItems that stores this chat's answer.
    async fn fault_answer_write(&self, stack: &Stack, fault: Value) {
        let mut rule = json!({"operation": "TransactWriteItems", "body_contains": self.word});
        rule.as_object_mut()
            .expect("object")
            .extend(fault.as_object().expect("object").clone());
        stack.fault(rule).await;
    }

    /// What the proxy saw for this conversation.
    async fn log(&self, stack: &Stack) -> Vec<Value> {
        stack.fault_log(&self.id.to_string()).await
    }

    /// The faults of the answer's write attempts, in order.
    async fn answer_write_faults(&self, stack: &Stack) -> Vec<Value> {
        self.log(stack)
            .await
            .into_iter()
            .filter(|e| {
                e["operation"] == "TransactWriteItems"
                    && e["body"].as_str().unwrap_or("").contains(&self.word)
            })
            .map(|e| e["fault"].clone())
            .collect()
    }

    /// Sends the question and checks the happy ending: tokens, `done` with the
    /// id, the answer stored once after the user message, the table consistent.
    async fn send_and_expect_stored(&self, stack: &Stack) {
        self.expect_answer(stack).await;
        let stream = stack.send(&self.user, self.id, &self.question()).await;
        assert_eq!(stream.status, 200);
        assert_eq!(stream.tokens().concat(), self.answer());
        assert_eq!(
            stream.error(),
            None,
            "events {:?}; table {:?}",
            stream.events,
            roles_and_contents(&stack.stored_messages(self.id).await)
        );
        let message_id = stream.message_id();
        let items = stack.items(self.id).await;
        assert_eq!(items.len(), 3, "{items:?}");
        let stored = stack.stored_messages(self.id).await;
        assert_eq!(
            roles_and_contents(&stored),
            pairs(&[("user", &self.question()), ("assistant", &self.answer())])
        );
        assert_eq!(s(&stored[1], "id"), message_id);
        assert_consistent(&items);
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
        .collect()
}

fn sorted(mut items: Vec<Item>) -> Vec<Item> {
    items.sort_by_key(|i| s(i, "sk"));
    items
}

/// The conversation item and its messages agree: `last_message_id` is the newest
/// message and `updated_at` is not older than any message.
fn assert_consistent(items: &[Item]) {
    let meta = items
        .iter()
        .find(|i| s(i, "sk") == "META")
        .expect("conversation item");
    let messages: Vec<&Item> = items
        .iter()
        .filter(|i| s(i, "sk").starts_with("M#"))
        .collect();
    if let Some(newest) = messages.iter().max_by_key(|i| s(i, "sk")) {
        assert_eq!(s(meta, "last_message_id"), s(newest, "id"), "{items:?}");
    }
    for m in &messages {
        assert!(
            s(meta, "updated_at") >= s(m, "created_at"),
            "updated_at behind a message: {items:?}"
        );
    }
}

// (a)
#[tokio::test]
async fn throttled_answer_write_is_retried_and_stored_once() {
    let stack = Stack::get().await;
    for times in [1, 2] {
        let chat = Chat::new(&stack).await;
        chat.fault_answer_write(&stack, json!({"fault": "throttle", "times": times}))
            .await;
        chat.send_and_expect_stored(&stack).await;
        let mut expected: Vec<Value> = (0..times).map(|_| json!("throttle")).collect();
        expected.push(Value::Null);
        assert_eq!(chat.answer_write_faults(&stack).await, expected);
    }
}

// (b)
#[tokio::test]
async fn internal_error_on_answer_write_is_retried_and_stored_once() {
    let stack = Stack::get().await;
    let chat = Chat::new(&stack).await;
    chat.fault_answer_write(&stack, json!({"fault": "error500"}))
        .await;
    chat.send_and_expect_stored(&stack).await;
    assert_eq!(
        chat.answer_write_faults(&stack).await,
        [json!("error500"), Value::Null]
    );
}

// (c)
#[tokio::test]
async fn latency_on_every_request_still_works() {
    let stack = Stack::get().await;
    let chat = Chat::new(&stack).await;
    stack
        .fault(json!({
            "operation": null, "body_contains": chat.id.to_string(),
            "fault": "latency", "latency_ms": 500, "times": null,
        }))
        .await;
    chat.send_and_expect_stored(&stack).await;
    // The conversations function's PutItem came before the rule. Then the Query,
    // the live-slot claim and the user's generating set (side by side; the
    // user's message counters do not name the conversation), then the writes;
    // live-answer checkpoints and slot reads interleave with them as time
    // passes; the answer leaves the generating set last.
    let log = chat.log(&stack).await;
    let ops: Vec<&str> = log.iter().filter_map(|e| e["operation"].as_str()).collect();
    assert_eq!(ops[0], "PutItem", "{ops:?}");
    let mut first_three = ops[1..4].to_vec();
    first_three.sort_unstable();
    assert_eq!(
        first_three,
        ["Query", "UpdateItem", "UpdateItem"],
        "{ops:?}"
    );
    assert_eq!(ops.last(), Some(&"UpdateItem"), "{ops:?}");
    assert!(
        ops[4..ops.len() - 1]
            .iter()
            .all(|op| matches!(*op, "TransactWriteItems" | "PutItem" | "GetItem")),
        "{ops:?}"
    );
    assert!(log[1..].iter().all(|e| e["fault"] == "latency"), "{log:?}");
}

// (c) beyond the 3 s attempt timeout
#[tokio::test]
async fn an_attempt_that_hangs_is_abandoned_and_retried() {
    let stack = Stack::get().await;
    let chat = Chat::new(&stack).await;
    chat.fault_answer_write(&stack, json!({"fault": "latency", "latency_ms": 4500}))
        .await;
    chat.send_and_expect_stored(&stack).await;
    assert_eq!(
        chat.answer_write_faults(&stack).await,
        [json!("latency"), Value::Null],
        "the hanging attempt was abandoned and retried"
    );
    // The abandoned attempt still reaches the server, after the retry. It
    // carries the retry's `ClientRequestToken` (the SDK's attempts share one),
    // so DynamoDB answers it as the transaction already applied (200) and
    // applies nothing: the table keeps one answer. (Were the token forgotten,
    // the message's condition would refuse it.)
    let late = || async {
        chat.log(&stack)
            .await
            .into_iter()
            .find(|e| e["fault"] == "latency")
            .map(|e| e["upstream_status"].clone())
    };
    assert!(
        eventually(Duration::from_secs(4), || async {
            late().await == Some(json!(200))
        })
        .await,
        "{:?}",
        late().await
    );
    let items = stack.items(chat.id).await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert_consistent(&items);
}

// (d) the connection reset before the request reached the server
#[tokio::test]
async fn reset_before_the_answer_write_is_retried_and_stored_once() {
    let stack = Stack::get().await;
    let chat = Chat::new(&stack).await;
    chat.fault_answer_write(&stack, json!({"fault": "reset"}))
        .await;
    chat.send_and_expect_stored(&stack).await;
    let log: Vec<Value> = chat
        .log(&stack)
        .await
        .into_iter()
        .filter(|e| e["body"].as_str().unwrap_or("").contains(&chat.word))
        .filter(|e| e["operation"] == "TransactWriteItems")
        .collect();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["fault"], "reset");
    assert_eq!(
        log[0]["upstream_status"],
        Value::Null,
        "never reached DynamoDB"
    );
    assert_eq!(log[1]["status"], 200);
}

/// (d) the connection reset after the server applied the write. The SDK retries
/// with the same `ClientRequestToken` (it fills one in for TransactWriteItems);
/// DynamoDB (and DynamoDB Local) answers such a retry with success without
/// applying it again. Were the token forgotten (a retry after its ten minutes),
/// the message's `attribute_not_exists` condition refuses the write and the store
/// reads that refusal as "already written" (message ids are fresh per write;
/// `store.rs` covers it). One answer, and the stream ends `done` with its id.
#[tokio::test]
async fn reset_after_an_applied_answer_write_leaves_one_answer() {
    let stack = Stack::get().await;
    let chat = Chat::new(&stack).await;
    chat.fault_answer_write(&stack, json!({"fault": "reset_after"}))
        .await;
    chat.expect_answer(&stack).await;
    let stream = stack.send(&chat.user, chat.id, &chat.question()).await;
    assert_eq!(stream.error(), None, "{:?}", stream.events);
    let message_id = stream.message_id();

    let log: Vec<Value> = stack
        .fault_log(&chat.word)
        .await
        .into_iter()
        .filter(|e| e["operation"] == "TransactWriteItems")
        .collect();
    assert_eq!(log[0]["upstream_status"], 200, "{log:?}");
    assert_eq!(log[0]["fault"], "reset_after");
    assert_eq!(log[0]["status"], Value::Null, "no response");

    let items = stack.items(chat.id).await;
    assert_eq!(items.len(), 3, "the answer is stored once: {items:?}");
    assert_eq!(
        roles_and_contents(&stack.stored_messages(chat.id).await),
        pairs(&[("user", &chat.question()), ("assistant", &chat.answer())])
    );
    assert_consistent(&items);
    assert_eq!(
        s(&stack.stored_messages(chat.id).await[1], "id"),
        message_id
    );

    // The SDK retried with the same idempotency token; DynamoDB answered it
    // as the applied write's answer.
    let token = |e: &Value| -> Value {
        serde_json::from_str::<Value>(e["body"].as_str().expect("body")).expect("json")
            ["ClientRequestToken"]
            .clone()
    };
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(token(&log[0]).is_string(), "the SDK sets a token");
    assert_eq!(token(&log[0]), token(&log[1]), "the retry reuses it");
    assert_eq!(log[1]["status"], 200);
}

/// A retried answer write that had already been applied ends `done`.
#[tokio::test]
async fn reset_after_an_applied_answer_write_ends_done() {
    let stack = Stack::get().await;
    let chat = Chat::new(&stack).await;
    chat.fault_answer_write(&stack, json!({"fault": "reset_after"}))
        .await;
    chat.send_and_expect_stored(&stack).await;
}

/// The same for the user message (the send's first write, which sets the title).
#[tokio::test]
async fn reset_after_an_applied_user_message_write_ends_done() {
    let stack = Stack::get().await;
    let chat = Chat::new(&stack).await;
    stack
        .fault(json!({
            "operation": "TransactWriteItems", "body_contains": chat.m,
            "fault": "reset_after",
        }))
        .await;
    chat.send_and_expect_stored(&stack).await;
}

/// The same for regenerate's replacement.
#[tokio::test]
async fn reset_after_an_applied_replacement_ends_done() {
    let stack = Stack::get().await;
    let chat = Chat::new(&stack).await;
    stack
        .turn(&chat.user, chat.id, &chat.question(), &["old"])
        .await;
    chat.expect_answer(&stack).await;
    chat.fault_answer_write(&stack, json!({"fault": "reset_after"}))
        .await;
    let stream = stack.regenerate(&chat.user, chat.id).await;
    assert_eq!(
        stream.error(),
        None,
        "events {:?}; table {:?}",
        stream.events,
        roles_and_contents(&stack.stored_messages(chat.id).await)
    );
    let new_id = stream.message_id();
    let stored = stack.stored_messages(chat.id).await;
    assert_eq!(s(&stored[1], "id"), new_id);
    assert_eq!(s(&stored[1], "content"), chat.answer());
}

// (e)
#[tokio::test]
async fn answer_write_throttled_on_every_attempt_ends_persist_failed() {
    let stack = Stack::get().await;
    let chat = Chat::new(&stack).await;
    chat.fault_answer_write(&stack, json!({"fault": "throttle", "times": null}))
        .await;
    chat.expect_answer(&stack).await;
    let stream = stack.send(&chat.user, chat.id, &chat.question()).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.tokens().concat(), chat.answer());
    stream.assert_failed_with("persist_failed");
    assert_eq!(
        stream.events[stream.events.len() - 2],
        json!({"error": "persist_failed"})
    );

    // The conversation and the user message, nothing else; the conversation
    // points at the user message.
    let items = stack.items(chat.id).await;
    assert_eq!(items.len(), 2, "{items:?}");
    let stored = stack.stored_messages(chat.id).await;
    assert_eq!(
        roles_and_contents(&stored),
        pairs(&[("user", &chat.question())])
    );
    let meta = items.iter().find(|i| s(i, "sk") == "META").expect("meta");
    assert_eq!(s(meta, "last_message_id"), s(&stored[0], "id"));
    assert_consistent(&items);

    // The SDK made its 4 attempts (the configured maximum), all throttled.
    assert_eq!(
        chat.answer_write_faults(&stack).await,
        vec![json!("throttle"); 4]
    );
}

// (f)
#[tokio::test]
async fn regenerate_whose_replacement_always_fails_keeps_the_old_answer() {
    let stack = Stack::get().await;
    for fault in ["throttle", "error500"] {
        let chat = Chat::new(&stack).await;
        stack
            .turn(&chat.user, chat.id, &chat.question(), &["old", " answer"])
            .await;
        let before = sorted(stack.items(chat.id).await);

        chat.expect_answer(&stack).await;
        chat.fault_answer_write(&stack, json!({"fault": fault, "times": null}))
            .await;
        let stream = stack.regenerate(&chat.user, chat.id).await;
        assert_eq!(stream.status, 200);
        assert_eq!(stream.tokens().concat(), chat.answer());
        stream.assert_failed_with("persist_failed");
        assert_eq!(sorted(stack.items(chat.id).await), before, "{fault}");
        assert_eq!(
            chat.answer_write_faults(&stack).await,
            vec![json!(fault); 4],
            "{fault}"
        );
    }
}

// (g)
#[tokio::test]
async fn query_throttled_on_every_attempt_is_a_503_and_writes_nothing() {
    let stack = Stack::get().await;
    let chat = Chat::new(&stack).await;
    let before = stack.items(chat.id).await;
    stack
        .fault(json!({
            "operation": "Query", "body_contains": chat.id.to_string(),
            "fault": "throttle", "times": null,
        }))
        .await;
    for (function, action) in [("send", "messages"), ("regenerate", "regenerate")] {
        let resp = stack
            .http
            .post(stack.url(
                function,
                &format!("/api/conversations/{}/{action}", chat.id),
            ))
            .bearer_auth(&chat.user.token)
            .json(&json!({"content": chat.question()}))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 503, "{function}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body, json!({"detail": "storage busy, retry shortly"}));
    }
    assert_eq!(stack.items(chat.id).await, before, "nothing written");
    assert!(
        stack.upstream_requests(&chat.m).await.is_empty(),
        "no upstream call"
    );
    let queries: Vec<Value> = chat
        .log(&stack)
        .await
        .into_iter()
        .filter(|e| e["operation"] == "Query")
        .collect();
    assert_eq!(queries.len(), 8, "4 attempts each: {queries:?}");
    assert!(queries
        .iter()
        .all(|e| e["fault"] == "throttle" && e["status"] == 400));
}

/// The conversation delete applied by DynamoDB, its response lost (the
/// connection reset after it): the SDK's retry finds the conversation gone and
/// the user is told 404, as for any missing conversation; its messages must not
/// stay behind (they have no TTL), nor can it be read again.
#[tokio::test]
async fn reset_after_an_applied_conversation_delete_leaves_nothing() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    stack
        .turn(&user, id, &format!("kept {m}"), &["an", " answer"])
        .await;
    stack
        .fault(json!({
            "operation": "DeleteItem", "body_contains": id.to_string(),
            "fault": "reset_after",
        }))
        .await;
    let resp = stack.delete_conversation(&user, id).await;
    assert!(
        [204, 404].contains(&resp.status().as_u16()),
        "{}",
        resp.status()
    );
    let log = stack.fault_log(&id.to_string()).await;
    assert!(
        log.iter()
            .any(|e| e["operation"] == "DeleteItem" && e["fault"] == "reset_after"),
        "{log:?}"
    );
    let left: Vec<String> = stack
        .all_items(id)
        .await
        .iter()
        .map(|i| s(i, "sk"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(stack.get_conversation(&user, id).await.0, 404);
}
