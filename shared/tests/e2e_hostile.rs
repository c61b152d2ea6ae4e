//! Hostile input end to end: every bad input of SPEC section 2 and every forged
//! or malformed token, through the compiled functions under `cargo lambda watch`,
//! each answered with its status and a `{"detail": <string>}` body and nothing
//! written; and the function logs of a whole conversation hold no secret.
//!
//! "Nothing written" is checked on the conversations and users involved, not
//! with `Stack::table_count()`: the tests run in parallel against one table, so
//! a global count moves with every other test's writes and would be racy. Every
//! write a rejected request could make lands in one of the involved partitions
//! (send/regenerate/rename/delete target the conversation in the path) or in the
//! caller's (or token subject's) conversation list (create), so those are what
//! the tests snapshot before and after.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{eventually, marker, Item, Stack, User};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

const NOT_AUTHENTICATED: &str = "not authenticated";
const NOT_FOUND: &str = "conversation not found";

/// How a request authenticates.
#[derive(Clone, Debug)]
enum Auth {
    None,
    /// `Authorization` header lines, as given.
    Lines(Vec<String>),
}

impl Auth {
    fn bearer(token: &str) -> Auth {
        Auth::Lines(vec![format!("Bearer {token}")])
    }
}

/// One row of a table: a request and what must come back.
struct Case {
    name: String,
    function: &'static str,
    method: Method,
    path: String,
    auth: Auth,
    body: Option<Vec<u8>>,
    status: u16,
    /// The exact `detail`, or (when it starts with `~`) the field it must name
    /// first, e.g. `~content` for "content: must be ...".
    detail: String,
}

fn messages_path(id: &str) -> String {
    format!("/api/conversations/{id}/messages")
}

fn regenerate_path(id: &str) -> String {
    format!("/api/conversations/{id}/regenerate")
}

fn conversation_path(id: &str) -> String {
    format!("/api/conversations/{id}")
}

fn json_bytes(v: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&v).expect("json"))
}

async fn call(stack: &Stack, case: &Case) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = stack
        .http
        .request(case.method.clone(), stack.url(case.function, &case.path));
    if let Auth::Lines(lines) = &case.auth {
        for line in lines {
            req = req.header(AUTHORIZATION, line);
        }
    }
    if let Some(body) = &case.body {
        // Non-UTF-8 bytes go as octet-stream: Function URLs then base64-encode
        // the body (the emulator refuses such bytes in a text body outright).
        let content_type = if std::str::from_utf8(body).is_ok() {
            "application/json"
        } else {
            "application/octet-stream"
        };
        req = req.header("content-type", content_type).body(body.clone());
    }
    let resp = req.send().await.unwrap_or_else(|e| {
        panic!(
            "{}: {e} (if the stack was restarted meanwhile, rerun)",
            case.name
        )
    });
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

/// Runs every case; returns the failures, so one run reports all of them.
async fn run_table(stack: &Stack, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let (status, headers, text) = call(stack, case).await;
        let label = format!(
            "{} [{} {} {}]",
            case.name, case.function, case.method, case.path
        );
        let label = if label.len() > 300 {
            format!("{}...", &label[..300])
        } else {
            label
        };
        if status != case.status {
            failures.push(format!(
                "{label}: status {status}, want {}: {text:.300}",
                case.status
            ));
            continue;
        }
        let body: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => {
                failures.push(format!("{label}: body is not JSON: {text:.300}"));
                continue;
            }
        };
        let Some(detail) = body
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("detail").and_then(Value::as_str).map(str::to_owned))
        else {
            failures.push(format!(
                "{label}: body is not {{\"detail\": <string>}}: {body}"
            ));
            continue;
        };
        let detail_ok = match case.detail.strip_prefix('~') {
            Some(field) => detail.starts_with(&format!("{field}:")),
            None => detail == case.detail,
        };
        if !detail_ok {
            failures.push(format!(
                "{label}: detail {detail:?}, want {:?}",
                case.detail
            ));
        }
        let json_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_type {
            failures.push(format!(
                "{label}: content-type {:?}",
                headers.get("content-type")
            ));
        }
        if status == 405 && !headers.contains_key("allow") {
            failures.push(format!("{label}: 405 without an Allow header"));
        }
    }
    failures
}

/// Runs every case and fails listing all the cases that did not get their answer.
async fn assert_every_case_passes(stack: &Stack, cases: &[Case]) {
    let failures = run_table(stack, cases).await;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// What a rejected request could have changed: every item of the conversations
/// involved, and the conversation list of the users involved.
#[derive(Debug, PartialEq)]
struct Snapshot {
    items: Vec<Vec<Item>>,
    lists: Vec<Value>,
}

async fn snapshot(stack: &Stack, conversations: &[Uuid], users: &[&User]) -> Snapshot {
    let mut items = Vec::new();
    for id in conversations {
        items.push(stack.items(*id).await);
    }
    let mut lists = Vec::new();
    for user in users {
        let resp = stack
            .http
            .get(stack.url("conversations", "/api/conversations?limit=200"))
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("list");
        assert_eq!(resp.status(), 200, "list");
        let list: Value = resp.json().await.expect("json");
        lists.push(list["items"].clone());
    }
    Snapshot { items, lists }
}

/// A conversation of `user` holding one answered turn.
async fn conversation_with_a_turn(stack: &Stack, user: &User) -> Uuid {
    let id = stack.create_conversation(user).await;
    let content = format!("turn {}", marker());
    stack.turn(user, id, &content, &["ok"]).await;
    id
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Every route of the three functions, aimed at `conversation`, with `auth`.
fn every_route(name: &str, conversation: &str, auth: &Auth, content: &str) -> Vec<Case> {
    let send_body = json_bytes(json!({ "content": content }));
    let routes: Vec<(&'static str, Method, String, Option<Vec<u8>>)> = vec![
        ("send", Method::POST, messages_path(conversation), send_body),
        (
            "regenerate",
            Method::POST,
            regenerate_path(conversation),
            json_bytes(json!({})),
        ),
        (
            "conversations",
            Method::POST,
            "/api/conversations".into(),
            json_bytes(json!({ "title": content })),
        ),
        (
            "conversations",
            Method::GET,
            "/api/conversations".into(),
            None,
        ),
        (
            "conversations",
            Method::GET,
            conversation_path(conversation),
            None,
        ),
        (
            "conversations",
            Method::PUT,
            conversation_path(conversation),
            json_bytes(json!({ "title": content })),
        ),
        (
            "conversations",
            Method::DELETE,
            conversation_path(conversation),
            None,
        ),
    ];
    routes
        .into_iter()
        .map(|(function, method, path, body)| Case {
            name: name.to_owned(),
            function,
            method,
            path,
            auth: auth.clone(),
            body,
            status: 401,
            detail: NOT_AUTHENTICATED.into(),
        })
        .collect()
}

/// SPEC section 2, every status and bad input, on all three functions.
#[tokio::test]
async fn every_bad_input_of_the_spec_is_refused_and_writes_nothing() {
    let stack = Stack::get().await;
    let victim = stack.user();
    let attacker = stack.user();
    let victims = conversation_with_a_turn(&stack, &victim).await;
    let own = conversation_with_a_turn(&stack, &attacker).await;
    let empty = stack.create_conversation(&attacker).await;
    let before = snapshot(&stack, &[victims, own, empty], &[&victim, &attacker]).await;

    // Every send below carries this marker: the upstream must never see it.
    let m = marker();
    let content = format!("hostile {m}");
    let auth = Auth::bearer(&attacker.token);
    let own_s = own.to_string();
    let mut cases: Vec<Case> = Vec::new();

    // 401: missing, invalid, expired token, on every route.
    let mut expired = Stack::claims(attacker.id);
    expired["exp"] = json!(now() - 1);
    for (name, auth) in [
        ("no token", Auth::None),
        ("invalid token", Auth::bearer("not.a.jwt")),
        ("empty bearer", Auth::Lines(vec!["Bearer ".into()])),
        (
            "basic scheme",
            Auth::Lines(vec!["Basic dXNlcjpwYXNz".into()]),
        ),
        ("expired token", Auth::bearer(&stack.sign(&expired))),
    ] {
        cases.extend(every_route(name, &own_s, &auth, &content));
    }

    // 404: not a UUID, unknown, another user's: one body for all.
    let not_uuids = [
        "not-a-uuid".to_owned(),
        "1234".into(),
        own.simple().to_string(),
        format!("{{{own}}}"),
        format!("urn:uuid:{own}"),
        format!("{own}0"),
        own_s[..35].to_owned(),
        "%C3%BC".repeat(12),
        "0".repeat(2000),
        "00000000-0000-0000-0000-00000000000g".into(),
    ];
    let unknown = [Uuid::new_v4().to_string(), Uuid::nil().to_string()];
    let foreign = [victims.to_string(), victims.to_string().to_uppercase()];
    for (kind, ids) in [
        ("not a uuid", &not_uuids[..]),
        ("unknown", &unknown[..]),
        ("another user's", &foreign[..]),
    ] {
        for id in ids {
            let name = format!("{kind} {id:.60}");
            let rows: Vec<(&'static str, Method, String, Option<Vec<u8>>)> = vec![
                (
                    "send",
                    Method::POST,
                    messages_path(id),
                    json_bytes(json!({ "content": content })),
                ),
                ("regenerate", Method::POST, regenerate_path(id), None),
                ("conversations", Method::GET, conversation_path(id), None),
                (
                    "conversations",
                    Method::PUT,
                    conversation_path(id),
                    json_bytes(json!({"title": content})),
                ),
                ("conversations", Method::DELETE, conversation_path(id), None),
                (
                    "conversations",
                    Method::POST,
                    format!("{}/stop", conversation_path(id)),
                    None,
                ),
                (
                    "send",
                    Method::GET,
                    format!("{}/stream", conversation_path(id)),
                    None,
                ),
            ];
            for (function, method, path, body) in rows {
                cases.push(Case {
                    name: name.clone(),
                    function,
                    method,
                    path,
                    auth: auth.clone(),
                    body,
                    status: 404,
                    detail: NOT_FOUND.into(),
                });
            }
        }
    }

    // 422: every invalid field, named in the detail.
    let x = |extra: Value| {
        let mut body = json!({ "content": content });
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    let params: Vec<(&str, Value)> = vec![
        ("temperature", json!({"temperature": -0.1})),
        ("temperature", json!({"temperature": 2.01})),
        ("temperature", json!({"temperature": 1e300})),
        ("temperature", json!({"temperature": "0.5"})),
        ("temperature", json!({"temperature": true})),
        ("temperature", json!({"temperature": [1]})),
        ("max_tokens", json!({"max_tokens": 0})),
        ("max_tokens", json!({"max_tokens": 4097})),
        ("max_tokens", json!({"max_tokens": 1.5})),
        ("max_tokens", json!({"max_tokens": 10.0})),
        ("max_tokens", json!({"max_tokens": "10"})),
        ("max_tokens", json!({"max_tokens": -1})),
        ("max_tokens", json!({"max_tokens": 18446744073709551615u64})),
        ("top_k", json!({"top_k": -1})),
        ("top_k", json!({"top_k": 201})),
        ("top_k", json!({"top_k": 4294967296u64})),
        ("top_k", json!({"top_k": "5"})),
        ("thinking_mode", json!({"thinking_mode": "yes"})),
        ("thinking_mode", json!({"thinking_mode": 1})),
        ("thinking_mode", json!({"thinking_mode": {}})),
        ("force_web_search", json!({"force_web_search": "true"})),
        ("force_web_search", json!({"force_web_search": 0})),
    ];
    let mut send_bodies: Vec<(String, &str, Vec<u8>)> = vec![
        ("content missing".into(), "content", b"{}".to_vec()),
        (
            "content null".into(),
            "content",
            br#"{"content":null}"#.to_vec(),
        ),
        (
            "content empty".into(),
            "content",
            br#"{"content":""}"#.to_vec(),
        ),
        (
            "content 8001 characters".into(),
            "content",
            serde_json::to_vec(&json!({"content": format!("{m}{}", "é".repeat(8001 - m.len()))}))
                .expect("json"),
        ),
        (
            "content 8001 astral characters".into(),
            "content",
            serde_json::to_vec(&json!({"content": "🙂".repeat(8001)})).expect("json"),
        ),
        (
            "content number".into(),
            "content",
            br#"{"content":5}"#.to_vec(),
        ),
        (
            "content bool".into(),
            "content",
            br#"{"content":true}"#.to_vec(),
        ),
        (
            "content array".into(),
            "content",
            br#"{"content":["x"]}"#.to_vec(),
        ),
        (
            "content object".into(),
            "content",
            br#"{"content":{"text":"x"}}"#.to_vec(),
        ),
        ("empty body".into(), "content", Vec::new()),
        (
            "JSON array".into(),
            "body",
            serde_json::to_vec(&json!([x(json!({}))])).expect("json"),
        ),
        ("JSON string".into(), "body", br#""content""#.to_vec()),
        ("JSON null".into(), "body", b"null".to_vec()),
        (
            "not JSON".into(),
            "body",
            format!("content={m}").into_bytes(),
        ),
        (
            "truncated JSON".into(),
            "body",
            format!(r#"{{"content":"{m}""#).into_bytes(),
        ),
        (
            "not UTF-8".into(),
            "body",
            [format!("{{\"content\":\"{m}").as_bytes(), b"\xff\"}"].concat(),
        ),
    ];
    for (field, extra) in &params {
        send_bodies.push((
            format!("{field} {extra}"),
            field,
            serde_json::to_vec(&x(extra.clone())).expect("json"),
        ));
    }
    for (name, field, body) in send_bodies {
        cases.push(Case {
            name: format!("send 422 {name:.80}"),
            function: "send",
            method: Method::POST,
            path: messages_path(&own_s),
            auth: auth.clone(),
            body: Some(body),
            status: 422,
            detail: format!("~{field}"),
        });
    }
    let mut regenerate_bodies: Vec<(String, &str, Vec<u8>)> = vec![
        ("JSON array".into(), "body", b"[{}]".to_vec()),
        ("JSON null".into(), "body", b"null".to_vec()),
        ("JSON number".into(), "body", b"1".to_vec()),
        ("not JSON".into(), "body", b"temperature=1".to_vec()),
        ("not UTF-8".into(), "body", b"{\"x\":\"\xff\"}".to_vec()),
    ];
    for (field, extra) in &params {
        regenerate_bodies.push((
            format!("{field} {extra}"),
            field,
            serde_json::to_vec(extra).expect("json"),
        ));
    }
    for (name, field, body) in regenerate_bodies {
        cases.push(Case {
            name: format!("regenerate 422 {name:.80}"),
            function: "regenerate",
            method: Method::POST,
            path: regenerate_path(&own_s),
            auth: auth.clone(),
            body: Some(body),
            status: 422,
            detail: format!("~{field}"),
        });
    }
    let conversation_bodies: Vec<(Method, String, &str, Vec<u8>)> = vec![
        (
            Method::POST,
            "/api/conversations".into(),
            "title",
            br#"{"title":5}"#.to_vec(),
        ),
        (
            Method::POST,
            "/api/conversations".into(),
            "title",
            br#"{"title":""}"#.to_vec(),
        ),
        (
            Method::POST,
            "/api/conversations".into(),
            "title",
            serde_json::to_vec(&json!({"title": "t".repeat(501)})).expect("json"),
        ),
        (
            Method::POST,
            "/api/conversations".into(),
            "model_tag",
            serde_json::to_vec(&json!({"model_tag": "m".repeat(101)})).expect("json"),
        ),
        (
            Method::POST,
            "/api/conversations".into(),
            "model_tag",
            br#"{"model_tag":["d24"]}"#.to_vec(),
        ),
        (
            Method::POST,
            "/api/conversations".into(),
            "body",
            b"[]".to_vec(),
        ),
        (
            Method::POST,
            "/api/conversations".into(),
            "body",
            b"title=x".to_vec(),
        ),
        (
            Method::POST,
            "/api/conversations".into(),
            "body",
            b"{\"title\":\"\xff\"}".to_vec(),
        ),
        (
            Method::PUT,
            conversation_path(&own_s),
            "title",
            b"{}".to_vec(),
        ),
        (
            Method::PUT,
            conversation_path(&own_s),
            "title",
            br#"{"title":null}"#.to_vec(),
        ),
        (
            Method::PUT,
            conversation_path(&own_s),
            "title",
            br#"{"title":["x"]}"#.to_vec(),
        ),
        (
            Method::PUT,
            conversation_path(&own_s),
            "body",
            b"[{\"title\":\"x\"}]".to_vec(),
        ),
        (
            Method::PUT,
            conversation_path(&own_s),
            "body",
            b"{title}".to_vec(),
        ),
    ];
    for (method, path, field, body) in conversation_bodies {
        cases.push(Case {
            name: format!(
                "conversations 422 {field} {:.60}",
                String::from_utf8_lossy(&body)
            ),
            function: "conversations",
            method,
            path,
            auth: auth.clone(),
            body: Some(body),
            status: 422,
            detail: format!("~{field}"),
        });
    }

    // 413: over 64 KiB, and the boundary: 64 KiB exactly is read (then refused
    // for its content), one byte more is not.
    let padded = |len: usize| {
        let mut body =
            serde_json::to_vec(&json!({"content": format!("{m}{}", "a".repeat(8001)), "pad": ""}))
                .expect("json");
        let pad = len - body.len();
        body.truncate(body.len() - 2);
        body.extend(std::iter::repeat_n(b'p', pad));
        body.extend_from_slice(b"\"}");
        assert_eq!(body.len(), len);
        body
    };
    let big = serde_json::to_vec(
        &json!({"content": content, "title": "t", "pad": "p".repeat(70 * 1024)}),
    )
    .expect("json");
    for (function, method, path, body, status, detail) in [
        (
            "send",
            Method::POST,
            messages_path(&own_s),
            padded(64 * 1024),
            422,
            "~content",
        ),
        (
            "send",
            Method::POST,
            messages_path(&own_s),
            padded(64 * 1024 + 1),
            413,
            "request body too large (limit 64 KiB)",
        ),
        (
            "send",
            Method::POST,
            messages_path(&own_s),
            big.clone(),
            413,
            "request body too large (limit 64 KiB)",
        ),
        (
            "regenerate",
            Method::POST,
            regenerate_path(&own_s),
            big.clone(),
            413,
            "request body too large (limit 64 KiB)",
        ),
        (
            "conversations",
            Method::POST,
            "/api/conversations".into(),
            big.clone(),
            413,
            "request body too large (limit 64 KiB)",
        ),
        (
            "conversations",
            Method::PUT,
            conversation_path(&own_s),
            big.clone(),
            413,
            "request body too large (limit 64 KiB)",
        ),
    ] {
        cases.push(Case {
            name: format!("{} bytes", body.len()),
            function,
            method,
            path,
            auth: auth.clone(),
            body: Some(body),
            status,
            detail: detail.into(),
        });
    }

    // 405: a wrong method on every route (before the token is even read).
    for (function, method, path) in [
        ("send", Method::GET, messages_path(&own_s)),
        ("send", Method::PUT, messages_path(&own_s)),
        ("send", Method::DELETE, messages_path(&own_s)),
        ("send", Method::PATCH, messages_path(&own_s)),
        ("regenerate", Method::GET, regenerate_path(&own_s)),
        ("regenerate", Method::DELETE, regenerate_path(&own_s)),
        ("conversations", Method::PUT, "/api/conversations".into()),
        ("conversations", Method::DELETE, "/api/conversations".into()),
        ("conversations", Method::PATCH, "/api/conversations".into()),
        ("conversations", Method::POST, conversation_path(&own_s)),
        ("conversations", Method::PATCH, conversation_path(&own_s)),
        (
            "conversations",
            Method::GET,
            format!("{}/stop", conversation_path(&own_s)),
        ),
        (
            "conversations",
            Method::DELETE,
            format!("{}/stop", conversation_path(&own_s)),
        ),
        (
            "send",
            Method::POST,
            format!("{}/stream", conversation_path(&own_s)),
        ),
        (
            "send",
            Method::DELETE,
            format!("{}/stream", conversation_path(&own_s)),
        ),
    ] {
        for (name, auth) in [
            ("wrong method", auth.clone()),
            ("wrong method, no token", Auth::None),
        ] {
            cases.push(Case {
                name: name.into(),
                function,
                method: method.clone(),
                path: path.clone(),
                auth,
                body: json_bytes(json!({ "content": content, "title": content })),
                status: 405,
                detail: "method not allowed".into(),
            });
        }
    }

    // 400: regenerate with no user message to answer (with and without a body).
    for body in [
        None,
        json_bytes(json!({})),
        json_bytes(json!({"temperature": 1})),
    ] {
        cases.push(Case {
            name: "regenerate without user messages".into(),
            function: "regenerate",
            method: Method::POST,
            path: regenerate_path(&empty.to_string()),
            auth: auth.clone(),
            body,
            status: 400,
            detail: "conversation has no user messages to regenerate from".into(),
        });
    }

    assert_every_case_passes(&stack, &cases).await;
    let after = snapshot(&stack, &[victims, own, empty], &[&victim, &attacker]).await;
    assert_eq!(after, before, "a rejected request wrote to the table");
    assert_eq!(
        stack.upstream_requests(&m).await,
        Vec::<Value>::new(),
        "a rejected request reached the upstream"
    );
}

/// Forged, stale and malformed tokens on every route of every function: all 401
/// `{"detail": "not authenticated"}`, nothing written for the user they name.
#[tokio::test]
async fn every_bad_token_is_401_on_every_route_and_writes_nothing() {
    let stack = Stack::get().await;
    let victim = stack.user();
    let attacker = stack.user();
    let victims = conversation_with_a_turn(&stack, &victim).await;
    let before = snapshot(&stack, &[victims], &[&victim, &attacker]).await;
    let m = marker();
    let content = format!("forged {m}");

    // Every token below names the victim; a wrongly accepted one would write to
    // the victim's conversation or list.
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut claims = Stack::claims(victim.id);
        f(claims.as_object_mut().expect("object"));
        claims
    };
    let tampered = {
        let mine: Vec<String> = attacker.token.split('.').map(str::to_owned).collect();
        let payload = b64(Stack::claims(victim.id).to_string().as_bytes());
        format!("{}.{payload}.{}", mine[0], mine[2])
    };
    let huge = stack.sign(&with(&|c| {
        c.insert("pad".into(), json!("x".repeat(100 * 1024)));
    }));
    assert!(huge.len() > 100 * 1024);
    let alg_none = |typ: &str| {
        format!(
            "{}.{}.",
            b64(format!(r#"{{"alg":"{typ}","typ":"JWT"}}"#).as_bytes()),
            b64(Stack::claims(victim.id).to_string().as_bytes())
        )
    };
    let public_pem = std::fs::read(format!("{}/jwt-public.pem", stack.env["STACK_DIR"]))
        .expect("stack public key");
    let hs256 = |secret: &[u8]| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Stack::claims(victim.id),
            &EncodingKey::from_secret(secret),
        )
        .expect("sign")
    };
    let valid = victim.token.clone();

    let tokens: Vec<(&str, Auth)> = vec![
        (
            "expired one second ago",
            Auth::bearer(&stack.sign(&with(&|c| {
                c.insert("exp".into(), json!(now() - 1));
            }))),
        ),
        (
            "nbf in the future",
            Auth::bearer(&stack.sign(&with(&|c| {
                c.insert("nbf".into(), json!(now() + 60));
            }))),
        ),
        (
            "exp missing",
            Auth::bearer(&stack.sign(&with(&|c| {
                c.remove("exp");
            }))),
        ),
        (
            "iat missing",
            Auth::bearer(&stack.sign(&with(&|c| {
                c.remove("iat");
            }))),
        ),
        (
            "refresh token",
            Auth::bearer(&stack.sign(&with(&|c| {
                c.insert("type".into(), json!("refresh"));
            }))),
        ),
        (
            "tampered payload, original signature",
            Auth::bearer(&tampered),
        ),
        ("100 KB JWT, validly signed", Auth::bearer(&huge)),
        (
            "two tokens in one header",
            Auth::Lines(vec![format!("Bearer {valid}, Bearer {}", attacker.token)]),
        ),
        (
            "the same token twice in one header",
            Auth::Lines(vec![format!("Bearer {valid}, Bearer {valid}")]),
        ),
        // Two `Authorization` header lines cannot be tested through the
        // emulator: cargo lambda serializes the Function URL event with
        // aws_lambda_events' `serialize_headers`, which keeps only the first
        // value of a header (`headers[key]`), so the function sees one valid
        // token. AWS itself joins duplicates with commas (payload 2.0) or lists
        // them in `multiValueHeaders` (REST API, ALB): those shapes are tested
        // in-process in `two_authorization_headers_as_aws_delivers_them`.
        ("alg none", Auth::bearer(&alg_none("none"))),
        ("alg None", Auth::bearer(&alg_none("None"))),
        (
            "HS256 with the public key as secret",
            Auth::bearer(&hs256(&public_pem)),
        ),
        (
            "HS256 with the configured (escaped) public key as secret",
            Auth::bearer(&hs256(stack.env["JWT_PUBLIC_KEY"].as_bytes())),
        ),
        (
            "signature stripped",
            Auth::bearer(&{
                let parts: Vec<&str> = valid.split('.').collect();
                format!("{}.{}.", parts[0], parts[1])
            }),
        ),
    ];
    let mut cases = Vec::new();
    for (name, auth) in &tokens {
        cases.extend(every_route(name, &victims.to_string(), auth, &content));
    }
    assert_every_case_passes(&stack, &cases).await;

    // The control: the victim's own token is accepted on the same route.
    let (status, _) = stack.get_conversation(&victim, victims).await;
    assert_eq!(status, 200);
    let after = snapshot(&stack, &[victims], &[&victim, &attacker]).await;
    assert_eq!(
        after, before,
        "a request with a bad token wrote to the table"
    );
    assert_eq!(
        stack.upstream_requests(&m).await,
        Vec::<Value>::new(),
        "a request with a bad token reached the upstream"
    );
}

/// A whole conversation, then the functions' own log: no token, no internal key,
/// no message or answer text, no title.
#[tokio::test]
async fn logs_of_a_whole_conversation_hold_no_secret_and_no_text() {
    let stack = Stack::get().await;
    let user = stack.user();
    // Unique random words: any of them in the log came from this test.
    let word = || format!("zq{}", &Uuid::new_v4().simple().to_string()[..16]);
    let words: Vec<String> = (0..10).map(|_| word()).collect();
    let id = stack.create_conversation(&user).await;

    let first = format!("first {} {}", words[0], words[1]);
    let second = format!("second {}", words[2]);
    stack
        .scenario(json!({"match": words[0], "tokens": [format!("a {}", words[3]), format!(" {}", words[4])]}))
        .await;
    stack
        .scenario(json!({"match": words[2], "tokens": [format!("b {}", words[5])]}))
        .await;
    stack.send(&user, id, &first).await.message_id();
    stack.send(&user, id, &second).await.message_id();
    stack
        .scenario(json!({"match": words[2], "tokens": [format!("c {}", words[6])]}))
        .await;
    let regenerated = stack.regenerate(&user, id).await;
    assert_eq!(regenerated.tokens(), [format!("c {}", words[6])]);
    regenerated.message_id();

    let (status, conversation) = stack.get_conversation(&user, id).await;
    assert_eq!(status, 200);
    assert_eq!(
        conversation["messages"].as_array().expect("messages").len(),
        4
    );
    let rename = stack
        .http
        .put(stack.url("conversations", &conversation_path(&id.to_string())))
        .bearer_auth(&user.token)
        .json(&json!({"title": format!("renamed {}", words[7])}))
        .send()
        .await
        .expect("rename");
    assert_eq!(rename.status(), 200);
    // Rejected requests carry text too: it must not be logged either.
    let rejected = stack
        .http
        .post(stack.url("send", &messages_path(&id.to_string())))
        .bearer_auth(&user.token)
        .json(&json!({"content": format!("bad {}", words[8]), "temperature": format!("hot {}", words[8])}))
        .send()
        .await
        .expect("rejected send");
    assert_eq!(rejected.status(), 422);
    let forged = {
        let parts: Vec<&str> = user.token.split('.').collect();
        let mut claims = Stack::claims(user.id);
        claims["name"] = json!(words[9]);
        format!(
            "{}.{}.{}",
            parts[0],
            b64(claims.to_string().as_bytes()),
            parts[2]
        )
    };
    let refused = stack
        .http
        .get(stack.url("conversations", "/api/conversations"))
        .bearer_auth(&forged)
        .send()
        .await
        .expect("forged");
    assert_eq!(refused.status(), 401);
    let delete = stack
        .http
        .delete(stack.url("conversations", &conversation_path(&id.to_string())))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("delete");
    assert_eq!(delete.status(), 204);

    // Logs are written as the functions run: wait for the delete's line.
    let path = format!("{}/logs/functions.log", stack.env["STACK_DIR"]);
    let id_s = id.to_string();
    let read = || std::fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned());
    let logged = eventually(Duration::from_secs(10), || async {
        read().is_ok_and(|log| {
            log.lines()
                .any(|l| l.contains(&id_s) && l.contains("conversation deleted"))
        })
    })
    .await;
    assert!(
        logged,
        "{path} never logged the deletion of {id}: logs missing (or the stack restarted)"
    );
    let log = read().expect("log");
    assert!(log.contains(&id_s), "the log names the conversation");

    let parts: Vec<&str> = user.token.split('.').collect();
    let forged_parts: Vec<&str> = forged.split('.').collect();
    let mut secrets: Vec<(String, String)> = vec![
        ("the user's JWT".into(), user.token.clone()),
        ("the JWT's payload".into(), parts[1].to_owned()),
        ("the JWT's signature".into(), parts[2].to_owned()),
        (
            "the forged JWT's payload".into(),
            forged_parts[1].to_owned(),
        ),
        (
            "the internal API key".into(),
            stack.env["INTERNAL_API_KEY"].clone(),
        ),
        ("the first message".into(), first.clone()),
        ("the second message".into(), second.clone()),
    ];
    for (i, w) in words.iter().enumerate() {
        secrets.push((format!("word {i} of the texts"), w.clone()));
    }
    let leaks: Vec<String> = secrets
        .iter()
        .filter(|(_, secret)| log.contains(secret.as_str()))
        .map(|(what, secret)| {
            let line = log
                .lines()
                .find(|l| l.contains(secret.as_str()))
                .unwrap_or_default();
            format!("{what} is in the log: {line:.400}")
        })
        .collect();
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

/// The event shapes AWS delivers a request in.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Function URL / HTTP API, payload 2.0: duplicate headers joined by commas.
    FunctionUrl,
    /// The same, joined by comma and space.
    FunctionUrlSpaced,
    /// API Gateway REST (v1): `multiValueHeaders` has every value, `headers` the last.
    RestApi,
    /// ALB with multi-value headers on: `multiValueHeaders` only.
    AlbMultiValue,
}

/// A sample payload-2.0 event re-shaped as `shape`, its `Authorization` header
/// sent as the given lines.
fn reshape(v2: &Value, shape: Shape, lines: &[String]) -> Value {
    let method = v2["requestContext"]["http"]["method"].clone();
    let path = v2["rawPath"].as_str().expect("rawPath").to_owned();
    let mut single = v2["headers"].as_object().expect("headers").clone();
    single.remove("authorization");
    let mut multi: serde_json::Map<String, Value> = single
        .iter()
        .map(|(k, v)| (k.clone(), json!([v])))
        .collect();
    multi.insert("authorization".into(), json!(lines));
    let body = v2["body"].clone();
    match shape {
        Shape::FunctionUrl | Shape::FunctionUrlSpaced => {
            let sep = if matches!(shape, Shape::FunctionUrl) {
                ","
            } else {
                ", "
            };
            let mut event = v2.clone();
            event["headers"]["authorization"] = json!(lines.join(sep));
            event
        }
        Shape::RestApi => {
            single.insert("authorization".into(), json!(lines.last().expect("a line")));
            json!({
                "resource": "/{proxy+}",
                "path": path,
                "httpMethod": method,
                "headers": single,
                "multiValueHeaders": multi,
                "queryStringParameters": null,
                "multiValueQueryStringParameters": null,
                "pathParameters": {"proxy": path.trim_start_matches('/')},
                "stageVariables": null,
                "requestContext": {
                    "accountId": "123456789012",
                    "apiId": "example",
                    "resourcePath": "/{proxy+}",
                    "httpMethod": method,
                    "path": format!("/prod{path}"),
                    "stage": "prod",
                    "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
                    "identity": {"sourceIp": "127.0.0.1"},
                },
                "body": body,
                "isBase64Encoded": false,
            })
        }
        Shape::AlbMultiValue => json!({
            "requestContext": {"elb": {
                "targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/t/6d0ecf831eec9f09"
            }},
            "httpMethod": method,
            "path": path,
            "multiValueQueryStringParameters": {},
            "multiValueHeaders": multi,
            "body": body,
            "isBase64Encoded": false,
        }),
    }
}

/// Runs a reshaped event through the runtime's own pre-processing and the
/// handler of `file`'s function: (status, body).
async fn invoke(
    state: &std::sync::Arc<samosachaat::AppState>,
    file: &str,
    event: Value,
) -> (u16, Vec<u8>) {
    use lambda_http::request::LambdaRequest;
    use samosachaat::adapters::lambda::runtime;
    use samosachaat::handlers::{conversations, regenerate, send};
    let payload: LambdaRequest = serde_json::from_value(event).expect("lambda request");
    let request: lambda_http::Request = runtime::sanitize(lambda_http::LambdaEvent::new(
        payload,
        lambda_http::Context::default(),
    ))
    .payload
    .into();
    if file.starts_with("conversations-") {
        let resp = conversations::handle(state.clone(), request)
            .await
            .expect("handler");
        (
            resp.status().as_u16(),
            common::body_bytes(resp.into_body()).await,
        )
    } else {
        let resp = if file.starts_with("send-") {
            send::send(state.clone(), request).await
        } else {
            regenerate::regenerate(state.clone(), request).await
        }
        .expect("handler");
        (
            resp.status().as_u16(),
            common::body_bytes(resp.into_body()).await,
        )
    }
}

/// "An `Authorization` header with two tokens" as a Function URL (or HTTP API)
/// and an ALB deliver it: 401 on every function, nothing written. In-process,
/// because the emulator drops a second header line (see
/// `every_bad_token_is_401_on_every_route_and_writes_nothing`).
#[tokio::test]
async fn two_authorization_headers_in_function_url_and_alb_events_are_401() {
    two_tokens_are_refused(&[
        Shape::FunctionUrl,
        Shape::FunctionUrlSpaced,
        Shape::AlbMultiValue,
    ])
    .await;
}

// With an API Gateway REST (v1) event AWS puts every value in
// `multiValueHeaders` and the last one in `headers`; lambda_http lets the single
// `headers` value replace the multi-values, so without `runtime::sanitize`
// dropping repeated `Authorization` headers the function would authenticate the
// last of two lines (found by this test: a message stored as the victim).
#[tokio::test]
async fn two_authorization_headers_in_rest_api_events_are_401() {
    two_tokens_are_refused(&[Shape::RestApi]).await;
}

/// Two tokens in one request, in each of `shapes`, on every function.
async fn two_tokens_are_refused(shapes: &[Shape]) {
    let stack = Stack::get().await;
    let state = stack.app_state();
    let victim = stack.user();
    let attacker = stack.user();
    let victims = conversation_with_a_turn(&stack, &victim).await;
    let before = snapshot(&stack, &[victims], &[&victim, &attacker]).await;

    // The control: each shape with one valid token is accepted, so a 401 below
    // is the token rule, not a malformed event.
    for &shape in shapes {
        let v2: Value =
            serde_json::from_str(&stack.event("conversations-get.json", victims, &victim.token))
                .expect("event");
        let event = reshape(&v2, shape, &[format!("Bearer {}", victim.token)]);
        let (status, body) = invoke(&state, "conversations-get.json", event).await;
        assert_eq!(
            status,
            200,
            "{shape:?} control: {}",
            String::from_utf8_lossy(&body)
        );
    }

    let pairs = [
        (&victim.token, &attacker.token),
        (&attacker.token, &victim.token),
        (&victim.token, &victim.token),
    ];
    let mut failures = Vec::new();
    for file in [
        "send-message.json",
        "regenerate.json",
        "conversations-get.json",
        "conversations-list.json",
        "conversations-create.json",
        "conversations-rename.json",
        "conversations-delete.json",
    ] {
        let v2: Value =
            serde_json::from_str(&stack.event(file, victims, &victim.token)).expect("event");
        for &shape in shapes {
            for (first, second) in pairs {
                let first_is = if *first == victim.token {
                    "victim"
                } else {
                    "attacker"
                };
                let second_is = if *second == victim.token {
                    "victim"
                } else {
                    "attacker"
                };
                let lines = [format!("Bearer {first}"), format!("Bearer {second}")];
                let (status, body) = invoke(&state, file, reshape(&v2, shape, &lines)).await;
                let body = String::from_utf8_lossy(&body);
                if (status, body.as_ref()) != (401, r#"{"detail":"not authenticated"}"#) {
                    failures.push(format!(
                        "{file} {shape:?} [{first_is}, {second_is}]: {status} {body:.200}"
                    ));
                }
            }
        }
    }
    let after = snapshot(&stack, &[victims], &[&victim, &attacker]).await;
    assert!(
        failures.is_empty(),
        "{} requests with two tokens were not refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        after, before,
        "a request with two tokens wrote to the table"
    );
}
