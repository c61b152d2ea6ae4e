//! End to end: the Python chat-api makes its data on a real PostgreSQL, the
//! `migrate` binary copies that database into the stack's DynamoDB table, and
//! every user's list and every conversation served by the functions must equal
//! what the Python service served, but for the migration's documented
//! differences (`legacy::compare`).
//!
//! Needs the local stack (`scripts/stack.sh up test`), PostgreSQL 15 and the
//! Python chat-api's packages (`scripts/bootstrap.sh`). Without the Python
//! chat-api's directory (`../shared/peers/python-chat-api`, or
//! `CHAT_API_PEER_DIR`) the tests print a SKIPPED line and pass.

#[path = "../../../shared/tests/common/mod.rs"]
mod common;
mod legacy;

use std::collections::HashMap;
use std::process::Command;

use serde_json::{json, Value};
use uuid::Uuid;

use legacy::{compare, report, ChatApi, Functions, Legacy, Postgres, Rules};

/// A change to what the functions serve, which the comparison must find.
type Mutation = Box<dyn Fn(&mut Value)>;

/// What the Python service serves for the whole data set.
struct PythonSide {
    lists: HashMap<Uuid, Value>,
    /// (user, conversation) -> GET.
    conversations: Vec<(Uuid, Uuid, Value)>,
    rules: Rules,
}

async fn python_side(pg: &Postgres, api: &ChatApi, data: &Legacy) -> PythonSide {
    let mut rules = Rules::from_postgres(pg).await;
    let mut lists = HashMap::new();
    let mut conversations = Vec::new();
    for &user in &data.users {
        let list = api.list_all(user, 200).await;
        let listed = list["items"].as_array().map_or(0, Vec::len);
        assert_eq!(
            listed,
            data.conversations[&user].len(),
            "the Python service lists every live conversation of {user}"
        );
        lists.insert(user, list);
        for &id in &data.conversations[&user] {
            let conversation = api.conversation(user, id).await;
            rules
                .python_conversations
                .insert(id.to_string(), conversation.clone());
            conversations.push((user, id, conversation));
        }
    }
    for &(user, id) in &data.deleted {
        let (status, _) = api.get(user, id).await;
        assert_eq!(status, 404, "the Python service deleted {id}");
    }
    PythonSide {
        lists,
        conversations,
        rules,
    }
}

fn messages(conversation: &Value) -> &Vec<Value> {
    conversation["messages"].as_array().expect("messages")
}

fn contents(conversation: &Value) -> Vec<&str> {
    messages(conversation)
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect()
}

/// The Python side alone: what the service serves for each edge case, and the
/// comparison itself (Python against Python turned into what the functions
/// should serve finds nothing; each kind of real difference is found).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn harness_python_side_and_comparison() {
    if legacy::peer_dir_or_skip("harness_python_side_and_comparison").is_none() {
        return;
    }
    let pg = Postgres::start();
    let mock = legacy::MockInference::start().await;
    let api = ChatApi::start(&pg, &mock.url).await;
    let data = legacy::make_legacy_data(&pg, &api).await;
    let side = python_side(&pg, &api, &data).await;
    let get = |case: &str| -> &Value {
        let id = data.edge[case][0];
        &side
            .conversations
            .iter()
            .find(|(_, c, _)| *c == id)
            .expect("edge conversation")
            .2
    };

    assert!(data.users.len() >= 5, "users: {:?}", data.users);
    for user in &data.users[..4] {
        let ids = &data.conversations[user];
        assert!((3..=6).contains(&ids.len()), "{user}: {ids:?}");
    }
    assert_eq!(messages(get("many_messages")).len(), 120);
    assert!(messages(get("empty")).is_empty());
    // The title the frontend creates ("New chat") becomes the first message's,
    // even after a rename made before that message.
    let renamed_early = get("renamed_before_first_message");
    assert!(
        renamed_early["title"]
            .as_str()
            .expect("title")
            .starts_with("u1c1 question 0"),
        "{renamed_early}"
    );
    // NULLs as the service serves them.
    assert_eq!(get("null_title")["title"], Value::Null);
    assert_eq!(get("null_model_tag")["model_tag"], Value::Null);
    assert_eq!(messages(get("null_message_model_tag"))[0]["model_tag"], "");
    assert_eq!(get("null_updated_at")["updated_at"], Value::Null);
    assert_eq!(get("null_created_at")["created_at"], Value::Null);
    let counts = messages(get("empty_content"));
    assert_eq!(counts[1]["content"], "");
    assert_eq!(counts[1]["token_count"], 0);
    assert_eq!(counts[1]["inference_time_ms"], 0);
    assert_eq!(counts[3]["token_count"], 7);
    // A NULL message created_at is served null, and last.
    let untimed = get("null_message_created_at");
    assert_eq!(
        contents(untimed),
        ["first, timed", "third, timed", "untimed answer"]
    );
    assert_eq!(messages(untimed)[2]["created_at"], Value::Null);
    // Equal created_at: ordered by id.
    assert_eq!(
        contents(get("equal_created_at")),
        [
            "before the tie",
            "tie: inserted second, smaller id",
            "tie: inserted first, larger id",
            "after the tie"
        ]
    );
    // System messages are served.
    assert_eq!(messages(get("system_message"))[0]["role"], "system");
    // Long content is served whole.
    let huge = messages(get("over_item_limit"));
    assert!(huge[1]["content"].as_str().expect("content").len() >= 500 * 1024);
    // NULL updated_at comes first in the service's list (NULLS FIRST descending).
    let edge_user = *data.users.last().expect("edge user");
    assert_eq!(
        side.lists[&edge_user]["items"][0]["id"],
        data.edge["null_updated_at"][0].to_string()
    );
    // Offset paging reaches every conversation.
    let paged = api.list_all(data.users[3], 2).await;
    assert_eq!(
        paged["items"].as_array().map(Vec::len),
        side.lists[&data.users[3]]["items"].as_array().map(Vec::len)
    );

    // The comparison: Python against itself as the functions should serve it.
    let mut all = Vec::new();
    for (user, list) in &side.lists {
        let expected = legacy::python_as_functions(list, &side.rules);
        for d in compare(list, &expected, &side.rules) {
            all.push(format!("user {user}: {d}"));
        }
    }
    for (_, _, conversation) in &side.conversations {
        let expected = legacy::python_as_functions(conversation, &side.rules);
        all.extend(compare(conversation, &expected, &side.rules));
    }
    assert!(all.is_empty(), "{}", report(&all));

    // ... and every kind of real difference is found.
    let base = get("empty_content");
    let good = legacy::python_as_functions(base, &side.rules);
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "content",
            Box::new(|v| v["messages"][0]["content"] = json!("changed")),
        ),
        (
            "NULL count as 0",
            Box::new(|v| v["messages"][1]["token_count"] = json!(0)),
        ),
        (
            "0 count as NULL",
            Box::new(|v| v["messages"][2]["token_count"] = Value::Null),
        ),
        (
            "status",
            Box::new(|v| v["messages"][0]["status"] = json!("incomplete")),
        ),
        (
            "created_at",
            Box::new(|v| v["messages"][0]["created_at"] = json!("2025-01-13T06:00:01.000001Z")),
        ),
        ("title", Box::new(|v| v["title"] = json!("other"))),
        (
            "updated_at",
            Box::new(|v| v["updated_at"] = json!("2030-01-01T00:00:00.000000Z")),
        ),
        (
            "a message lost",
            Box::new(|v| {
                v["messages"].as_array_mut().expect("messages").pop();
            }),
        ),
        (
            "two messages swapped",
            Box::new(|v| {
                let m = v["messages"].as_array_mut().expect("messages");
                let (a, b) = (m[0]["id"].clone(), m[1]["id"].clone());
                m.swap(0, 1);
                m[0]["id"] = a;
                m[1]["id"] = b;
            }),
        ),
        (
            "not a UUIDv7",
            Box::new(|v| v["messages"][0]["id"] = json!(Uuid::new_v4().to_string())),
        ),
    ];
    for (what, mutate) in &mutations {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(
            !compare(base, &bad, &side.rules).is_empty(),
            "the comparison misses: {what}"
        );
    }
    let huge = get("over_item_limit");
    let mut bad = legacy::python_as_functions(huge, &side.rules);
    bad["messages"][1]["status"] = json!("complete");
    assert!(
        !compare(huge, &bad, &side.rules).is_empty(),
        "a cut marked complete"
    );
    bad["messages"][1]["status"] = json!("incomplete");
    bad["messages"][1]["content"] = json!("over the item");
    assert!(
        !compare(huge, &bad, &side.rules).is_empty(),
        "a cut too short"
    );
    let edge_list = &side.lists[&edge_user];
    let mut bad = legacy::python_as_functions(edge_list, &side.rules);
    bad["items"].as_array_mut().expect("items").swap(0, 1);
    assert!(
        !compare(edge_list, &bad, &side.rules).is_empty(),
        "list order"
    );
    let mut bad = legacy::python_as_functions(edge_list, &side.rules);
    bad["items"].as_array_mut().expect("items").pop();
    assert!(
        !compare(edge_list, &bad, &side.rules).is_empty(),
        "a conversation lost"
    );
}

/// The copy: `migrate copy` of the Python service's database, then every list
/// and conversation served by the functions compared with the Python service's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_serves_what_the_python_service_served() {
    if legacy::peer_dir_or_skip("copy_serves_what_the_python_service_served").is_none() {
        return;
    }
    // The stack harness looks for the stack beside its crate's parent
    // (`ops/.stack` here): point it at the repository's.
    if std::env::var_os("STACK_DIR").is_none() {
        std::env::set_var("STACK_DIR", legacy::repo_root().join(".stack/test"));
    }
    let stack = common::Stack::get().await;
    let probe = stack
        .http
        .get(stack.url("conversations", "/api/conversations"))
        .bearer_auth(stack.token(Uuid::new_v4()))
        .send()
        .await;
    assert!(
        probe.as_ref().is_ok_and(|r| r.status() == 200),
        "the local stack does not answer at {} ({probe:?}): run `scripts/stack.sh up test`",
        stack.functions
    );

    let pg = Postgres::start();
    let mock = legacy::MockInference::start().await;
    let api = ChatApi::start(&pg, &mock.url).await;
    let data = legacy::make_legacy_data(&pg, &api).await;
    let side = python_side(&pg, &api, &data).await;

    let ddb = stack
        .env
        .get("DYNAMODB_DIRECT_URL")
        .unwrap_or(&stack.env["AWS_ENDPOINT_URL_DYNAMODB"])
        .clone();
    let out = Command::new(env!("CARGO_BIN_EXE_migrate"))
        .args(["copy", "--postgres", pg.url(), "--table", &stack.table])
        .env("AWS_ENDPOINT_URL_DYNAMODB", &ddb)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run the migrate binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "migrate copy: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "migrate copy --postgres {} --table {} failed",
        pg.url(),
        stack.table
    );

    let signer = stack.clone();
    let functions = Functions::new(&stack.functions, move |user| signer.token(user));
    let mut all = Vec::new();
    for &user in &data.users {
        // Pages of 2: the functions' cursor paging is followed to the end.
        let list = functions.list_all(user, 2).await;
        for d in compare(&side.lists[&user], &list, &side.rules) {
            all.push(format!("user {user}: {d}"));
        }
    }
    for (user, id, python) in &side.conversations {
        let (status, served) = functions.get(*user, *id).await;
        if status != 200 {
            all.push(format!(
                "conversation {id}: functions answer {status}: {served}"
            ));
            continue;
        }
        all.extend(compare(python, &served, &side.rules));
    }
    for &(user, id) in &data.deleted {
        let (status, _) = functions.get(user, id).await;
        if status != 404 {
            all.push(format!(
                "conversation {id} was deleted but the functions answer {status}"
            ));
        }
    }
    assert!(all.is_empty(), "{}", report(&all));
}
