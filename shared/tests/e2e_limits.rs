//! Per-user limits end to end, on the local stack (its limits: 10 messages per
//! minute, 1000 per day, 50 answers generating at once; `scripts/stack.sh`):
//! racing sends against each limit, what a refused request leaves (nothing),
//! what does not count (refusals for other reasons, replays), and how a dead
//! function's place is freed.

mod common;

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::{s, Item, Stack, Stream, User};
use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;

const PER_MINUTE: usize = 10;
const PER_DAY: u64 = 1000;
const ANSWERS: usize = 50;

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Waits until at least `room` seconds are left in the clock minute, so racing
/// requests all count in one window.
async fn inside_one_minute(room: i64) {
    let into = now_secs().rem_euclid(60);
    if into > 60 - room {
        tokio::time::sleep(Duration::from_secs(u64::try_from(61 - into).unwrap_or(1))).await;
    }
}

/// The user's limit record (one item), empty when there is none.
async fn record(stack: &Stack, user: &User) -> Item {
    let items = stack
        .dynamodb
        .query()
        .table_name(&stack.table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("LIMIT#{}", user.id)))
        .consistent_read(true)
        .send()
        .await
        .expect("query limits")
        .items()
        .to_vec();
    assert!(items.len() <= 1, "one limit record per user: {items:?}");
    let item = items.into_iter().next().unwrap_or_default();
    if !item.is_empty() {
        assert_eq!(s(&item, "sk"), "LIMITS");
    }
    item
}

/// What the record counts in its windows whose attribute starts with `prefix`
/// (`min_` for minutes, `day_` for days).
fn count_in(record: &Item, prefix: &str) -> u64 {
    record
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, value)| match value {
            AttributeValue::N(n) => n.parse::<u64>().expect("n"),
            AttributeValue::Ss(ids) => ids.len() as u64,
            other => panic!("{prefix}: {other:?}"),
        })
        .sum()
}

fn held(record: &Item) -> Vec<String> {
    match record.get("answers") {
        Some(AttributeValue::Ss(set)) => set.clone(),
        _ => Vec::new(),
    }
}

/// Sets the user's window `attr` to `n` messages (a user who already sent that
/// many): a number for a day, a set of request ids for a minute.
async fn seed_count(stack: &Stack, user: &User, attr: &str, n: u64) {
    let count = if attr.starts_with("min_") {
        AttributeValue::Ss((0..n).map(|i| format!("seeded{i:06}")).collect())
    } else {
        AttributeValue::N(n.to_string())
    };
    stack
        .functions_dynamodb()
        .update_item()
        .table_name(&stack.table)
        .key("pk", AttributeValue::S(format!("LIMIT#{}", user.id)))
        .key("sk", AttributeValue::S("LIMITS".into()))
        .update_expression("SET #w = :n, expires_at = :exp")
        .expression_attribute_names("#w", attr)
        .expression_attribute_values(":n", count)
        .expression_attribute_values(":exp", AttributeValue::N((now_secs() + 3600).to_string()))
        .send()
        .await
        .expect("seed counter");
}

fn minute_attr(at: i64) -> String {
    format!("min_{}", at.div_euclid(60))
}

fn retry_after(stream: &Stream) -> i64 {
    stream
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After missing: {:?}", stream.headers))
}

fn detail(stream: &Stream) -> String {
    let body: serde_json::Value = serde_json::from_slice(&stream.raw).expect("json body");
    body["detail"].as_str().expect("detail").to_owned()
}

/// A new marker whose every request the mock answers with `tokens`.
async fn answering(stack: &Stack, tokens: &[&str]) -> String {
    let m = common::marker();
    stack
        .scenario(json!({"match": m, "tokens": tokens, "repeat": true}))
        .await;
    m
}

/// Sends one message to each conversation, all at once.
async fn send_each(stack: &Stack, user: &User, ids: &[Uuid], what: String) -> Vec<Stream> {
    let contents: Vec<String> = (0..ids.len()).map(|i| format!("{what} {i}")).collect();
    join_all(
        ids.iter()
            .zip(&contents)
            .map(|(id, content)| stack.send(user, *id, content)),
    )
    .await
}

async fn conversations(stack: &Stack, user: &User, n: usize) -> Vec<Uuid> {
    join_all((0..n).map(|_| stack.create_conversation(user))).await
}

/// Nothing of the conversation changed: its item only, no live slot.
async fn untouched(stack: &Stack, id: Uuid) -> bool {
    let items = stack.all_items(id).await;
    items.len() == 1 && !items[0].contains_key("live_id")
}

#[tokio::test]
async fn fifty_racing_sends_of_one_user_meet_the_burst_limit_and_another_user_is_unaffected() {
    let stack = Stack::get().await;
    let (user, other) = (stack.user(), stack.user());
    let m = answering(&stack, &["fine", "."]).await;
    let (ids, others) = tokio::join!(
        conversations(&stack, &user, 50),
        conversations(&stack, &other, 3)
    );
    inside_one_minute(25).await;

    let (runs, other_runs) = tokio::join!(
        send_each(&stack, &user, &ids, format!("burst {m}")),
        send_each(&stack, &other, &others, format!("other {m}"))
    );

    let (streamed, refused): (Vec<_>, Vec<_>) = ids
        .iter()
        .zip(&runs)
        .partition(|(_, run)| run.status == 200);
    assert_eq!(
        streamed.len(),
        PER_MINUTE,
        "statuses: {:?}",
        runs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for (_, run) in &streamed {
        run.message_id();
    }
    for (id, run) in &refused {
        assert_eq!(run.status, 429, "{:?}", run.events);
        assert!(
            detail(run).contains("10 messages per minute"),
            "{}",
            detail(run)
        );
        assert!((1..=60).contains(&retry_after(run)), "{:?}", run.headers);
        assert!(untouched(&stack, **id).await, "a refused send changed {id}");
    }
    for run in &other_runs {
        assert_eq!(run.status, 200);
        run.message_id();
    }
    // Only the admitted ten (and the other user's three) reached the upstream.
    assert_eq!(stack.upstream_requests(&m).await.len(), PER_MINUTE + 3);

    // The records count the ten, hold nothing once they ended, and expire.
    // Exactly: an SDK retry of an applied update finds its id in the minute
    // and counts nothing again.
    let mine = record(&stack, &user).await;
    assert_eq!(count_in(&mine, "min_"), PER_MINUTE as u64);
    assert_eq!(count_in(&mine, "day_"), PER_MINUTE as u64);
    assert!(held(&mine).is_empty(), "{:?}", held(&mine));
    // The record outlives the day by more than the longest answer, and no more
    // than a day and a few hours.
    let now = now_secs();
    let day_end = (now.div_euclid(86_400) + 1) * 86_400;
    let expires: i64 = match mine.get("expires_at") {
        Some(AttributeValue::N(n)) => n.parse().expect("expires_at"),
        other => panic!("no expires_at on {mine:?}: {other:?}"),
    };
    assert!(
        (day_end + 3600..=day_end + 6 * 3600).contains(&expires),
        "expires {expires}, day ends {day_end}"
    );
    assert_eq!(count_in(&record(&stack, &other).await, "min_"), 3);
}

#[tokio::test]
async fn the_daily_quota_holds_under_racing_requests() {
    let stack = Stack::get().await;
    let user = stack.user();
    let m = answering(&stack, &["ok"]).await;
    let ids = conversations(&stack, &user, 8).await;
    // Not across midnight, UTC.
    let into_day = now_secs().rem_euclid(86_400);
    if into_day > 86_400 - 30 {
        tokio::time::sleep(Duration::from_secs(35)).await;
    }
    let today = time::OffsetDateTime::now_utc().date().to_string();
    seed_count(&stack, &user, &format!("day_{today}"), PER_DAY - 3).await;
    inside_one_minute(20).await;

    let runs = send_each(&stack, &user, &ids, format!("quota {m}")).await;
    let streamed = runs.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        streamed,
        3,
        "statuses: {:?}",
        runs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let to_midnight = 86_400 - now_secs().rem_euclid(86_400);
    for run in runs.iter().filter(|r| r.status != 200) {
        assert_eq!(run.status, 429);
        assert!(
            detail(run).contains("1000 messages per UTC day"),
            "{}",
            detail(run)
        );
        assert!(
            (retry_after(run) - to_midnight).abs() <= 5,
            "{:?} vs {to_midnight}",
            run.headers
        );
    }
    // The refused five were never counted.
    let mine = record(&stack, &user).await;
    assert_eq!(count_in(&mine, "day_"), PER_DAY);
    assert_eq!(count_in(&mine, "min_"), 3);
}

/// Holds answers among the user's generating ones as another function instance
/// would: `young` ones that count as just begun for the whole test (an answer
/// younger than `LIVE_STALE_AFTER_MS` is live whatever its records say; their
/// ids are dated a minute ahead, so a slow run cannot age them), then one per
/// conversation of `dead`, begun 10 s ago and never checkpointed, with its
/// conversation's live slot claimed then.
async fn hold_elsewhere(stack: &Stack, user: &User, young: usize, dead: &[Uuid]) -> Vec<Uuid> {
    let now_ms = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .expect("ms");
    let ago_ms = now_ms - 10_000;
    let ahead = uuid::Timestamp::from_unix(uuid::NoContext, now_ms / 1000 + 60, 0);
    let mut entries: Vec<String> = (0..young)
        .map(|_| format!("{}/{}", Uuid::new_v7(ahead), Uuid::new_v4()))
        .collect();
    let mut answers = Vec::new();
    for &id in dead {
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, ago_ms / 1000, 0);
        let answer = Uuid::new_v7(ts);
        stack
            .functions_dynamodb()
            .update_item()
            .table_name(&stack.table)
            .key("pk", AttributeValue::S(format!("CONV#{id}")))
            .key("sk", AttributeValue::S("META".into()))
            .update_expression("SET live_id = :a, live_at = :at, live_deadline = :deadline")
            .expression_attribute_values(":a", AttributeValue::S(answer.to_string()))
            .expression_attribute_values(":at", AttributeValue::N(ago_ms.to_string()))
            .expression_attribute_values(
                ":deadline",
                AttributeValue::N((ago_ms + 60_000).to_string()),
            )
            .send()
            .await
            .expect("claim slot");
        entries.push(format!("{answer}/{id}"));
        answers.push(answer);
    }
    stack
        .functions_dynamodb()
        .update_item()
        .table_name(&stack.table)
        .key("pk", AttributeValue::S(format!("LIMIT#{}", user.id)))
        .key("sk", AttributeValue::S("LIMITS".into()))
        .update_expression("ADD answers :held SET expires_at = :exp")
        .expression_attribute_values(":held", AttributeValue::Ss(entries))
        .expression_attribute_values(":exp", AttributeValue::N((now_secs() + 3600).to_string()))
        .send()
        .await
        .expect("hold answers");
    answers
}

#[tokio::test]
async fn concurrent_answers_are_capped_under_racing_requests() {
    let stack = Stack::get().await;
    let user = stack.user();
    let m = common::marker();
    // Admitted answers hold their places until the test stack's 6 s deadline
    // cuts them, so a request slowed down on a busy machine still meets them.
    stack
        .scenario(json!({"match": m, "tokens": ["a", "b"], "hang_after": 2, "repeat": true}))
        .await;
    let ids = conversations(&stack, &user, 5).await;
    inside_one_minute(20).await;
    hold_elsewhere(&stack, &user, ANSWERS - 2, &[]).await;

    let runs = send_each(&stack, &user, &ids, format!("cap {m}")).await;
    let streamed = runs.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        streamed,
        2,
        "statuses: {:?}",
        runs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for (id, run) in ids.iter().zip(&runs) {
        if run.status == 200 {
            assert_eq!(run.tokens(), ["a", "b"]);
            run.assert_failed_with("inference_interrupted");
            continue;
        }
        assert_eq!(run.status, 429);
        assert!(
            detail(run).contains("at most 50 at once"),
            "{}",
            detail(run)
        );
        assert_eq!(retry_after(run), 5);
        assert!(untouched(&stack, *id).await);
    }
    let records_now = record(&stack, &user).await;
    assert_eq!(
        held(&records_now).len(),
        ANSWERS - 2,
        "the two ended and left"
    );
    assert_eq!(
        count_in(&records_now, "min_"),
        2,
        "the refused three do not count"
    );
    assert_eq!(count_in(&records_now, "day_"), 2);
}

#[tokio::test]
async fn a_dead_functions_place_is_freed_by_the_next_send() {
    let stack = Stack::get().await;
    let user = stack.user();
    let m = answering(&stack, &["back"]).await;
    let (abandoned, id) = tokio::join!(
        stack.create_conversation(&user),
        stack.create_conversation(&user)
    );
    // Full: 49 live answers and one whose function died 10 s ago (the test
    // stack's LIVE_STALE_AFTER_MS is 4 s).
    let dead = hold_elsewhere(&stack, &user, ANSWERS - 1, &[abandoned]).await;

    let run = stack.send(&user, id, &format!("after {m}")).await;
    assert_eq!(run.status, 200, "{:?}", run.events);
    run.message_id();
    let now_held = held(&record(&stack, &user).await);
    assert_eq!(
        now_held.len(),
        ANSWERS - 1,
        "the dead one left, the new one ended"
    );
    assert!(!now_held.iter().any(|e| e.starts_with(&dead[0].to_string())));
    // The dead answer was settled: its conversation is free again.
    assert!(!stack
        .all_items(abandoned)
        .await
        .iter()
        .any(|i| i.contains_key("live_id")));

    // With only live answers held, the next one is refused.
    hold_elsewhere(&stack, &user, 1, &[]).await;
    let refused = stack.send(&user, id, &format!("again {m}")).await;
    assert_eq!(refused.status, 429, "{:?}", refused.events);
}

/// The interleaving the randomized run found (`docs/reliability.md`): the
/// function generating an answer dies (its place held, its conversation's slot
/// claimed, nothing checkpointed), then the user deletes the conversation.
/// Nothing can meet that answer again (its conversation is gone), so its place
/// stayed held until the user's set was next full. The delete gives it back.
#[tokio::test]
async fn a_dead_answers_place_is_given_back_when_its_conversation_is_deleted() {
    let stack = Stack::get().await;
    let user = stack.user();
    let id = stack.create_conversation(&user).await;
    let dead = hold_elsewhere(&stack, &user, 0, &[id]).await;
    assert_eq!(held(&record(&stack, &user).await).len(), 1);

    let resp = stack.delete_conversation(&user, id).await;
    assert_eq!(resp.status(), 204);
    assert!(stack.all_items(id).await.is_empty());
    assert_eq!(
        held(&record(&stack, &user).await),
        Vec::<String>::new(),
        "the place of dead answer {} is still held",
        dead[0]
    );
}

/// A dead answer (its function died mid-answer: its place held, its
/// conversation's slot claimed, nothing checkpointed) met by a read of its
/// conversation: the read settles it (its slot freed) and gives its place
/// back, instead of leaving it held until the user's set is next full.
#[tokio::test]
async fn a_dead_answer_settled_by_a_read_gives_its_place_back() {
    let stack = Stack::get().await;
    let user = stack.user();
    let id = stack.create_conversation(&user).await;
    let dead = hold_elsewhere(&stack, &user, 0, &[id]).await;

    let (status, _) = stack.get_conversation(&user, id).await;
    assert_eq!(status, 200);
    assert!(!stack
        .all_items(id)
        .await
        .iter()
        .any(|i| i.contains_key("live_id")));
    assert_eq!(
        held(&record(&stack, &user).await),
        Vec::<String>::new(),
        "the place of settled answer {} is still held",
        dead[0]
    );
}

#[tokio::test]
async fn refusals_for_other_reasons_and_replays_do_not_count() {
    let stack = Stack::get().await;
    let user = stack.user();
    let id = stack.create_conversation(&user).await;
    let empty = stack.create_conversation(&user).await;
    let m = answering(&stack, &["once"]).await;
    inside_one_minute(30).await;
    let minute = minute_attr(now_secs());

    let key = [("idempotency-key", "limits-replay-1")];
    let body = json!({ "content": format!("keyed {m}") });
    let first = stack
        .post_stream_with("send", &user, &id.to_string(), body.clone(), &key)
        .await;
    let answer = first.message_id();
    let replay = stack
        .post_stream_with("send", &user, &id.to_string(), body.clone(), &key)
        .await;
    assert_eq!(replay.message_id(), answer);

    // Refused for other reasons: an unknown conversation, a regenerate with
    // nothing to regenerate, a conversation whose answer is still generating.
    assert_eq!(
        stack
            .send(&user, Uuid::new_v4(), &format!("x {m}"))
            .await
            .status,
        404
    );
    assert_eq!(stack.regenerate(&user, empty).await.status, 400);
    let slow = stack.create_conversation(&user).await;
    let slow_content = format!("slow {}", common::marker());
    stack
        .scenario(
            json!({"match": slow_content, "tokens": ["a", "b"], "first_token_delay_ms": 1500}),
        )
        .await;
    let busy_content = format!("busy {m}");
    let (slow_run, busy) = tokio::join!(stack.send(&user, slow, &slow_content), async {
        // Once the slow answer holds the conversation's live slot (its model
        // takes 1.5 s to the first token).
        assert!(
            stack.went_live(slow).await,
            "the slow answer never went live"
        );
        stack.send(&user, slow, &busy_content).await
    });
    slow_run.message_id();
    assert_eq!(busy.status, 409, "{:?}", busy.events);

    let records_now = record(&stack, &user).await;
    assert_eq!(
        count_in(&records_now, "min_"),
        2,
        "the keyed send and the slow one"
    );
    assert_eq!(count_in(&records_now, "day_"), 2);

    // At the limit, the replay is still answered from its record; a new
    // message is refused.
    seed_count(&stack, &user, &minute, PER_MINUTE as u64).await;
    let replay = stack
        .post_stream_with("send", &user, &id.to_string(), body, &key)
        .await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.message_id(), answer);
    assert_eq!(replay.tokens(), ["once"]);
    let over = stack.send(&user, id, &format!("new {m}")).await;
    assert_eq!(over.status, 429);
    assert_eq!(
        stack.stored_messages(id).await.len(),
        2,
        "the keyed turn only"
    );
}
