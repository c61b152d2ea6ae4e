//! The migration command as an operator meets it: the real binary against a
//! throwaway PostgreSQL 15 cluster and the local DynamoDB server, each test on a
//! table of its own (the ledger and the run record are per table). Killed and
//! run again, run twice, caught up after changes on both sides, refused on bad
//! input, stopped by a failing DynamoDB and finished by a rerun.

#[path = "../../../shared/tests/common/mod.rs"]
mod common;
mod legacy;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::{s, Item, Stack};
use legacy::Postgres;
use samosachaat::foundation::role::Role;
use samosachaat::store::{Message, MessageStatus, Store};
use serde_json::{json, Value};
use uuid::Uuid;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A table of the test's own, created as the stack creates the functions'.
async fn own_table(stack: &Stack) -> String {
    let table = format!("migrate-{}", Uuid::new_v4().simple());
    samosachaat::store::schema::create_table(&stack.dynamodb, &table)
        .await
        .expect("create the test's table");
    table
}

fn command(stack: &Stack, endpoint: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_migrate"));
    cmd.args(args)
        .env_remove("MIGRATE_POSTGRES_URL")
        .env_remove("TABLE_NAME")
        .env("AWS_ENDPOINT_URL_DYNAMODB", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let _ = stack;
    cmd
}

async fn run_at(stack: &Stack, endpoint: &str, args: &[&str]) -> Out {
    let out = command(stack, endpoint, args)
        .output()
        .await
        .expect("run migrate");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn run(stack: &Stack, mode: &str, pg: &str, table: &str) -> Out {
    run_at(
        stack,
        &stack.env["DYNAMODB_DIRECT_URL"],
        &[mode, "--postgres", pg, "--table", table],
    )
    .await
}

/// Runs a mode with `--report` and returns its JSON report.
async fn run_report(stack: &Stack, mode: &str, pg: &str, table: &str) -> (Out, Value) {
    let path = std::env::temp_dir().join(format!("migrate-report-{}.json", Uuid::new_v4()));
    let path_text = path.to_string_lossy().into_owned();
    let out = run_at(
        stack,
        &stack.env["DYNAMODB_DIRECT_URL"],
        &[
            mode,
            "--postgres",
            pg,
            "--table",
            table,
            "--report",
            &path_text,
        ],
    )
    .await;
    let report = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let _ = std::fs::remove_file(&path);
    (out, report)
}

/// The synthetic chat-api data the benchmark uses, smaller.
async fn fill(pg: &Postgres, users: u32, conversations: u32, per: u32) {
    let sql = include_str!("../sql/synthetic.sql")
        .replace(":users", &users.to_string())
        .replace(":conversations", &conversations.to_string())
        .replace(":per", &per.to_string());
    pg.client()
        .await
        .batch_execute(&sql)
        .await
        .expect("synthetic data");
}

async fn scan(stack: &Stack, table: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = stack
            .dynamodb
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("scan");
        items.extend(out.items().iter().cloned());
        match out.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => return items,
        }
    }
}

/// Items by key, with every attribute, for comparing whole tables.
fn by_key(items: &[Item]) -> BTreeMap<(String, String), String> {
    items
        .iter()
        .map(|i| {
            let mut attrs: Vec<String> = i.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            attrs.sort();
            ((s(i, "pk"), s(i, "sk")), attrs.join(";"))
        })
        .collect()
}

fn kinds(items: &[Item]) -> HashMap<&'static str, usize> {
    let mut out = HashMap::new();
    for i in items {
        let (pk, sk) = (s(i, "pk"), s(i, "sk"));
        let kind = if pk.starts_with("CONV#") && sk == "META" {
            "conversation"
        } else if pk.starts_with("CONV#") && sk.starts_with("M#") {
            "message"
        } else if pk.starts_with("MIGRATION#") && sk != "LAST" {
            "ledger"
        } else {
            "other"
        };
        *out.entry(kind).or_default() += 1;
    }
    out
}

/// The synthetic conversation `n` (1-based) and its user, as PostgreSQL holds them.
async fn synthetic(pg: &Postgres, n: u32) -> (Uuid, Uuid) {
    let row = pg
        .client()
        .await
        .query_one(
            "SELECT id, user_id FROM conversations WHERE id = md5('conversation' || $1::text)::uuid",
            &[&n.to_string()],
        )
        .await
        .expect("a synthetic conversation");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_killed_copy_run_again_finishes_with_one_copy_and_a_second_run_writes_nothing() {
    if legacy::peer_dir_or_skip("a_killed_copy").is_none() {
        return;
    }
    let stack = Stack::get().await;
    let pg = Postgres::start();
    fill(&pg, 20, 300, 6).await;
    let table = own_table(&stack).await;

    // Killed at three moments of a copy: as soon as it writes, a little later,
    // and later still. Each run picks up from what the one before left.
    for wait in [0usize, 60, 400] {
        let mut child = command(
            &stack,
            &stack.env["DYNAMODB_DIRECT_URL"],
            &["copy", "--postgres", pg.url(), "--table", &table],
        )
        .spawn()
        .expect("start migrate");
        let before = scan(&stack, &table).await.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while scan(&stack, &table).await.len() <= before + wait
            && std::time::Instant::now() < deadline
        {
            if child.try_wait().expect("child").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    }

    let out = run(&stack, "copy", pg.url(), &table).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let items = scan(&stack, &table).await;
    let kinds = kinds(&items);
    assert_eq!(kinds.get("conversation"), Some(&300), "{kinds:?}");
    assert_eq!(
        kinds.get("message"),
        Some(&1800),
        "exactly one copy of every message: {kinds:?}"
    );
    assert_eq!(kinds.get("ledger"), Some(&300), "{kinds:?}");

    let verified = run(&stack, "verify", pg.url(), &table).await;
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);

    let (again, report) = run_report(&stack, "copy", pg.url(), &table).await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(report["conversations"]["copied"], 0, "{report}");
    assert_eq!(report["conversations"]["unchanged"], 300, "{report}");
    assert_eq!(report["messages"], 0, "{report}");
    let after = scan(&stack, &table).await;
    // Only the run record's finish time moves.
    let strip = |items: &[Item]| {
        let mut m = by_key(items);
        m.remove(&("MIGRATION#RUN".to_owned(), "LAST".to_owned()));
        m
    };
    assert_eq!(strip(&items), strip(&after), "a second run writes nothing");
}

#[tokio::test]
async fn catch_up_brings_changes_and_deletions_and_keeps_what_the_functions_changed() {
    if legacy::peer_dir_or_skip("catch_up").is_none() {
        return;
    }
    let stack = Stack::get().await;
    let pg = Postgres::start();
    fill(&pg, 5, 10, 4).await;
    let table = own_table(&stack).await;

    let refused = run(&stack, "catch-up", pg.url(), &table).await;
    assert_eq!(
        refused.code, 2,
        "catch-up before any copy: {}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("run `migrate copy` first"),
        "{}",
        refused.stderr
    );

    let out = run(&stack, "copy", pg.url(), &table).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    let mut ids = HashMap::new();
    for n in 1..=6 {
        ids.insert(n, synthetic(&pg, n).await);
    }
    let id = |n: u32| ids[&n].0;
    let owner = |n: u32| ids[&n].1;
    let db = pg.client().await;
    // In PostgreSQL: 1 renamed, 2 regenerated (its last answer replaced),
    // 3 deleted, 4 deleted, 5 renamed.
    db.batch_execute(&format!(
        "UPDATE conversations SET title = 'Renamed in the old service', updated_at = now() WHERE id = '{one}';
         DELETE FROM messages WHERE id = (SELECT id FROM messages WHERE conversation_id = '{two}' ORDER BY created_at DESC LIMIT 1);
         INSERT INTO messages (conversation_id, role, content, token_count, created_at)
           VALUES ('{two}', 'assistant', 'a regenerated answer', 4, now());
         DELETE FROM conversations WHERE id IN ('{three}', '{four}');
         UPDATE conversations SET title = 'Renamed in the old service too', updated_at = now() WHERE id = '{five}';",
        one = id(1), two = id(2), three = id(3), four = id(4), five = id(5)
    ))
    .await
    .expect("changes in PostgreSQL");

    // On the new stack: a user chats in 4 (deleted in PostgreSQL meanwhile) and
    // renames 5, through the functions' own store.
    let store = Store::new(stack.dynamodb.clone(), table.clone());
    let four = store
        .get_conversation(owner(4), id(4))
        .await
        .expect("read")
        .expect("copied");
    let message_id = Uuid::now_v7();
    store
        .append_message(
            owner(4),
            &four,
            &Message {
                id: message_id,
                conversation_id: id(4),
                role: Role::User,
                content: "written on the new stack".into(),
                token_count: None,
                model_tag: None,
                inference_time_ms: None,
                created_at: samosachaat::foundation::time_fmt::of_id(message_id),
                status: MessageStatus::Complete,
            },
            None,
        )
        .await
        .expect("a message on the new stack");
    store
        .rename(owner(5), id(5), "Renamed on the new stack")
        .await
        .expect("rename on the new stack");

    let (out, report) = run_report(&stack, "catch-up", pg.url(), &table).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(report["conversations"]["copied"], 2, "{report}");
    assert_eq!(report["conversations"]["deleted"], 1, "{report}");
    assert_eq!(report["conversations"]["conflicts"], 2, "{report}");
    let conflicts: Vec<String> = report["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .map(|c| c["conversation_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(conflicts.contains(&id(4).to_string()) && conflicts.contains(&id(5).to_string()));

    let one = store
        .get_conversation(owner(1), id(1))
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(one.title, "Renamed in the old service");
    let two = store.all_messages(id(2)).await.expect("messages");
    assert_eq!(two.len(), 4);
    assert_eq!(
        two.last().map(|m| m.content.as_str()),
        Some("a regenerated answer")
    );
    assert_eq!(
        store.get_conversation(owner(3), id(3)).await.expect("read"),
        None,
        "deleted in PostgreSQL, so deleted in the table"
    );
    assert!(store
        .all_messages(id(3))
        .await
        .expect("messages")
        .is_empty());
    let four = store.all_messages(id(4)).await.expect("messages");
    assert_eq!(four.len(), 5, "the new stack's conversation is kept whole");
    let five = store
        .get_conversation(owner(5), id(5))
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(
        five.title, "Renamed on the new stack",
        "the new stack's rename wins"
    );

    // Verify: what the new stack changed is not compared; the rest agrees.
    let (verified, report) = run_report(&stack, "verify", pg.url(), &table).await;
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
    assert_eq!(
        report["not_compared"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );

    // A change verify must catch: a message's text edited in the table.
    let key = HashMap::from([
        (
            "pk".to_owned(),
            AttributeValue::S(format!("CONV#{}", id(6))),
        ),
        (
            "sk".to_owned(),
            AttributeValue::S(format!(
                "M#{}",
                store.all_messages(id(6)).await.expect("m")[0].id
            )),
        ),
    ]);
    stack
        .dynamodb
        .update_item()
        .table_name(&table)
        .set_key(Some(key))
        .update_expression("SET content = :c")
        .expression_attribute_values(":c", AttributeValue::S("tampered".into()))
        .send()
        .await
        .expect("tamper");
    let (verified, report) = run_report(&stack, "verify", pg.url(), &table).await;
    assert_eq!(verified.code, 1, "{}", verified.stdout);
    let differences = report["differences"].as_array().expect("differences");
    assert_eq!(differences.len(), 1, "{report}");
    assert_eq!(differences[0]["conversation_id"], json!(id(6).to_string()));
    assert!(verified.stdout.contains("checksum"), "{}", verified.stdout);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    if legacy::peer_dir_or_skip("bad_input").is_none() {
        return;
    }
    let stack = Stack::get().await;
    let pg = Postgres::start();
    fill(&pg, 2, 3, 2).await;
    let table = own_table(&stack).await;
    let closed = format!(
        "postgresql://postgres@127.0.0.1:{}/chatapi",
        legacy::free_port()
    );
    let no_db = pg.url().replace("/chatapi", "/nosuchdb");
    let wrong_user = pg.url().replace("postgres@", "nobody@");
    let db = pg.client().await;
    db.batch_execute(
        "CREATE SCHEMA other; CREATE TABLE other.conversations (LIKE public.conversations);
         CREATE TABLE other.messages (LIKE public.messages); ALTER TABLE other.messages DROP COLUMN token_count;",
    )
    .await
    .expect("a schema that is not the chat-api's");
    let other_schema = format!("{}?options=-csearch_path%3Dother", pg.url());
    let no_messages = format!("{}?options=-csearch_path%3Dnothing", pg.url());

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["copy", "--postgres", &closed, "--table", &table],
            "cannot connect",
        ),
        (
            vec!["copy", "--postgres", &no_db, "--table", &table],
            "does not exist",
        ),
        (
            vec!["copy", "--postgres", &wrong_user, "--table", &table],
            "nobody",
        ),
        (
            vec!["copy", "--postgres", &other_schema, "--table", &table],
            "lacks column(s) token_count",
        ),
        (
            vec!["copy", "--postgres", &no_messages, "--table", &table],
            "table `conversations` is missing",
        ),
        (
            vec!["copy", "--postgres", "not a url", "--table", &table],
            "not a PostgreSQL URL",
        ),
        (
            vec!["copy", "--postgres", pg.url(), "--table", "no-such-table"],
            "does not exist",
        ),
        (vec!["copy", "--table", &table], "--postgres"),
        (vec!["copy", "--postgres", pg.url()], "--table"),
        (
            vec!["move", "--postgres", pg.url(), "--table", &table],
            "unknown mode",
        ),
        (
            vec![
                "copy",
                "--postgres",
                pg.url(),
                "--table",
                &table,
                "--concurrency",
                "0",
            ],
            "--concurrency",
        ),
        (
            vec!["copy", "--postgres", pg.url(), "--table", &table, "--fast"],
            "unknown argument",
        ),
    ];
    for (args, says) in cases {
        let out = run_at(&stack, &stack.env["DYNAMODB_DIRECT_URL"], &args).await;
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(says),
            "{args:?} should say {says:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert!(
            scan(&stack, &table).await.is_empty(),
            "{args:?} wrote to the table"
        );
    }
}

#[tokio::test]
async fn a_failing_dynamodb_stops_the_run_and_a_rerun_finishes_it() {
    if legacy::peer_dir_or_skip("failing_dynamodb").is_none() {
        return;
    }
    let stack = Stack::get().await;
    let pg = Postgres::start();
    fill(&pg, 4, 60, 4).await;
    let table = own_table(&stack).await;
    let proxy = stack.env["FAULT_PROXY_URL"].clone();
    let args = ["copy", "--postgres", pg.url(), "--table", table.as_str()];

    // Throttled for a while: retried with backoff, the run finishes.
    stack
        .fault(json!({"operation": "BatchWriteItem", "body_contains": table, "fault": "throttle", "times": 6}))
        .await;
    // Then failing outright, past the SDK's retries, a little later in the run
    // (through the proxy only: the rerun goes straight to DynamoDB).
    stack
        .fault(
            json!({"operation": "TransactWriteItems", "body_contains": table, "fault": "error500",
                      "skip": 20, "times": null}),
        )
        .await;
    let out = run_at(&stack, &proxy, &args).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("running the same command again finishes"),
        "{}",
        out.stderr
    );

    let (again, report) = run_report(&stack, "copy", pg.url(), &table).await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(
        report["conversations"]["unchanged"].as_u64().unwrap_or(0) >= 20,
        "{report}"
    );
    let kinds = kinds(&scan(&stack, &table).await);
    assert_eq!(kinds.get("conversation"), Some(&60), "{kinds:?}");
    assert_eq!(kinds.get("message"), Some(&240), "{kinds:?}");
    let verified = run(&stack, "verify", pg.url(), &table).await;
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
    let throttled = stack.fault_log(&table).await;
    assert!(
        throttled.iter().any(|r| r["fault"] == "throttle"),
        "the throttling was met"
    );
}

#[tokio::test]
async fn a_copied_conversation_goes_on_on_the_new_stack() {
    if legacy::peer_dir_or_skip("goes_on").is_none() {
        return;
    }
    let stack = Stack::get().await;
    let pg = Postgres::start();
    let user = Uuid::new_v4();
    let marker = common::marker();
    let rows = pg
        .client()
        .await
        .query(
            "WITH u AS (INSERT INTO users (id, email, provider, provider_id)
                        VALUES ($1, 'goes-on@example.com', 'google', 'g-goes-on') RETURNING id),
                  c AS (INSERT INTO conversations (user_id, title, created_at, updated_at)
                        SELECT id, 'Old question', now() - interval '2 days', now() - interval '2 days' FROM u
                        RETURNING id)
             INSERT INTO messages (conversation_id, role, content, token_count, model_tag, created_at)
             SELECT c.id, m.role, m.content, m.tokens, m.tag, now() - interval '2 days' + m.n * interval '1 second'
             FROM c, (VALUES (1, 'user', 'Old question ' || $2, NULL, NULL),
                             (2, 'assistant', 'Old answer', 2, 'default'),
                             (3, 'user', 'Second old question ' || $2, NULL, NULL),
                             (4, 'assistant', 'Second old answer', 3, 'default'))
                  AS m(n, role, content, tokens, tag)
             RETURNING conversation_id",
            &[&user, &marker],
        )
        .await
        .expect("a chat-api conversation");
    let id: Uuid = rows[0].get(0);

    let out = run(&stack, "copy", pg.url(), &stack.table).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let owner = common::User {
        id: user,
        token: stack.token(user),
    };
    let (status, before) = stack.get_conversation(&owner, id).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["messages"].as_array().map(Vec::len), Some(4));

    // A new turn: answered with the old turns as history, stored after them.
    let next = format!("A new question {marker}");
    let answer = stack.turn(&owner, id, &next, &["New", " answer"]).await;
    let sent = stack.upstream_requests(&next).await;
    let history: Vec<&str> = sent[0]["body"]["messages"]
        .as_array()
        .expect("messages upstream")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(history.len(), 5, "{history:?}");
    assert!(
        history[0].ends_with(&format!("Old question {marker}")),
        "{history:?}"
    );
    let (_, after) = stack.get_conversation(&owner, id).await;
    let messages = after["messages"].as_array().expect("messages");
    let contents: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(contents[4..], [next.as_str(), "New answer"]);
    assert_eq!(messages[5]["id"], json!(answer));
    assert_eq!(
        after["title"], "Old question",
        "not retitled: it was not empty"
    );
    assert!(after["updated_at"].as_str() > before["updated_at"].as_str());

    // Regenerating the last answer replaces it, and only it.
    stack
        .scenario(json!({"match": next, "tokens": ["Better", " answer"]}))
        .await;
    let regenerated = stack.regenerate(&owner, id).await.message_id();
    let (_, last) = stack.get_conversation(&owner, id).await;
    let contents: Vec<&str> = last["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(contents.len(), 6);
    assert_eq!(contents[5], "Better answer");
    assert_eq!(last["messages"][5]["id"], json!(regenerated));

    // A copy run again leaves what the new stack wrote as it is.
    let again = run(&stack, "copy", pg.url(), &stack.table).await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    let (_, kept) = stack.get_conversation(&owner, id).await;
    assert_eq!(kept["messages"], last["messages"]);
}

#[tokio::test]
async fn tls_to_postgresql_is_verified_against_the_given_ca() {
    if legacy::peer_dir_or_skip("tls").is_none() {
        return;
    }
    let stack = Stack::get().await;
    let pg = Postgres::start();
    fill(&pg, 1, 2, 2).await;
    // The server's certificate (localhost, 127.0.0.1) is signed by the test CA.
    let fixtures = legacy::repo_root().join("shared/tests/fixtures");
    let dir = std::env::temp_dir().join(format!("migrate-tls-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("tls dir");
    for name in ["upstream-cert.pem", "upstream-key.pem"] {
        let to = dir.join(name);
        std::fs::copy(fixtures.join(name), &to).expect("copy fixture");
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("key mode");
    }
    let cluster_owner = std::process::Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u32>().ok());
    // As root the cluster runs as `postgres`, which must own its key.
    if running_as_root() {
        let uid = cluster_owner.expect("the postgres user");
        for entry in [
            dir.clone(),
            dir.join("upstream-cert.pem"),
            dir.join("upstream-key.pem"),
        ] {
            std::os::unix::fs::chown(&entry, Some(uid), None).expect("chown to postgres");
        }
    }
    let db = pg.client().await;
    let cert = dir.join("upstream-cert.pem");
    let key = dir.join("upstream-key.pem");
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        db.batch_execute(&sql).await.expect("TLS on");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let table = own_table(&stack).await;
    let require = format!("{}?sslmode=verify-full", pg.url());
    let ca = fixtures.join("upstream-ca.pem");
    let ca = ca.to_string_lossy();
    let direct = stack.env["DYNAMODB_DIRECT_URL"].clone();

    let trusted = run_at(
        &stack,
        &direct,
        &[
            "dry-run",
            "--postgres",
            &require,
            "--table",
            &table,
            "--postgres-ca",
            &ca,
        ],
    )
    .await;
    assert_eq!(trusted.code, 0, "{}{}", trusted.stdout, trusted.stderr);
    assert!(
        trusted.stdout.contains("2 would copy"),
        "{}",
        trusted.stdout
    );

    let untrusted = run_at(
        &stack,
        &direct,
        &["dry-run", "--postgres", &require, "--table", &table],
    )
    .await;
    assert_eq!(
        untrusted.code, 2,
        "{}{}",
        untrusted.stdout, untrusted.stderr
    );
    assert!(
        untrusted.stderr.contains("certificate"),
        "{}",
        untrusted.stderr
    );

    let not_a_ca = run_at(
        &stack,
        &direct,
        &[
            "dry-run",
            "--postgres",
            &require,
            "--table",
            &table,
            "--postgres-ca",
            "/dev/null",
        ],
    )
    .await;
    assert_eq!(not_a_ca.code, 2, "{}", not_a_ca.stderr);
    assert!(
        not_a_ca.stderr.contains("--postgres-ca"),
        "{}",
        not_a_ca.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|s| s.trim() == "0")
}
