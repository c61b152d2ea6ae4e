//! The harness of the integration and end-to-end tests: the running local stack
//! (`scripts/stack.sh up test`, started by `scripts/test.sh`), reached over real
//! HTTP the way the frontend reaches it, and the table read directly.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

pub type Item = HashMap<String, AttributeValue>;

pub struct Stack {
    pub env: HashMap<String, String>,
    pub functions: String,
    pub mock: String,
    pub http: reqwest::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub table: String,
    key: EncodingKey,
}

fn read_env_file(path: &PathBuf, into: &mut HashMap<String, String>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: the tests need the local stack. Run `scripts/test.sh`, \
             or `scripts/stack.sh up test` once and then cargo nextest.",
            path.display()
        )
    });
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            into.insert(k.to_owned(), v.trim_matches('\'').to_owned());
        }
    }
}

impl Stack {
    pub async fn get() -> Arc<Stack> {
        let dir = std::env::var("STACK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.stack/test"));
        let mut env = HashMap::new();
        read_env_file(&dir.join("env"), &mut env);
        read_env_file(&dir.join("client.env"), &mut env);
        let pem = std::fs::read(&env["JWT_PRIVATE_KEY_FILE"]).expect("stack private key");
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            // Straight to the DynamoDB server: test reads bypass the fault proxy
            // the functions go through.
            .endpoint_url(
                env.get("DYNAMODB_DIRECT_URL")
                    .unwrap_or(&env["AWS_ENDPOINT_URL_DYNAMODB"]),
            )
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "local", "local", None, None, "tests",
            ))
            .build();
        Arc::new(Stack {
            functions: env["FUNCTIONS_URL"].clone(),
            mock: env["MOCK_INFERENCE_URL"].clone(),
            table: env["TABLE_NAME"].clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(conf),
            key: EncodingKey::from_rsa_pem(&pem).expect("stack key"),
            env,
        })
    }

    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &self.key).expect("sign")
    }

    pub fn claims(user: Uuid) -> Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        json!({
            "sub": user.to_string(), "email": "t@example.com", "name": "T",
            "iat": now, "exp": now + 600, "iss": "samosachaat-auth", "type": "access",
        })
    }

    pub fn token(&self, user: Uuid) -> String {
        self.sign(&Self::claims(user))
    }

    pub fn url(&self, function: &str, path: &str) -> String {
        format!("{}/{function}{path}", self.functions)
    }

    /// A new user with a token.
    pub fn user(&self) -> User {
        let id = Uuid::new_v4();
        User {
            id,
            token: self.token(id),
        }
    }

    pub async fn create_conversation(&self, user: &User) -> Uuid {
        self.create_conversation_with(user, json!({})).await
    }

    pub async fn create_conversation_with(&self, user: &User, body: Value) -> Uuid {
        let resp = self
            .http
            .post(self.url("conversations", "/api/conversations"))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .expect("create conversation");
        assert_eq!(resp.status(), 201, "create conversation");
        let body: Value = resp.json().await.expect("json");
        Uuid::parse_str(body["id"].as_str().expect("id")).expect("uuid")
    }

    pub async fn get_conversation(&self, user: &User, id: Uuid) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url("conversations", &format!("/api/conversations/{id}")))
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("get conversation");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `DELETE /api/conversations/{id}` as `user`.
    pub async fn delete_conversation(&self, user: &User, id: Uuid) -> reqwest::Response {
        self.http
            .delete(self.url("conversations", &format!("/api/conversations/{id}")))
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("delete conversation")
    }

    /// Registers what the mock upstream answers to the next request whose last
    /// user message contains `scenario.match`.
    pub async fn scenario(&self, scenario: Value) {
        let resp = self
            .http
            .post(format!("{}/__mock/scenarios", self.mock))
            .json(&scenario)
            .send()
            .await
            .expect("mock scenario");
        assert_eq!(resp.status(), 201, "mock scenario {scenario}");
    }

    /// What the mock upstream received for requests matching `marker`.
    pub async fn upstream_requests(&self, marker: &str) -> Vec<Value> {
        self.http
            .get(format!(
                "{}/__mock/requests?match={}",
                self.mock,
                marker.replace('%', "%25").replace(' ', "%20")
            ))
            .send()
            .await
            .expect("mock requests")
            .json()
            .await
            .expect("json")
    }

    pub async fn post_stream(&self, function: &str, user: &User, id: &str, body: Value) -> Stream {
        self.post_stream_with(function, user, id, body, &[]).await
    }

    /// [`Stack::post_stream`] with extra request headers.
    pub async fn post_stream_with(
        &self,
        function: &str,
        user: &User,
        id: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Stream {
        let action = if function == "send" {
            "messages"
        } else {
            "regenerate"
        };
        let mut req = self
            .http
            .post(self.url(function, &format!("/api/conversations/{id}/{action}")))
            .bearer_auth(&user.token)
            .json(&body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        Stream::read(req.send().await.expect("stream request")).await
    }

    pub async fn send(&self, user: &User, id: Uuid, content: &str) -> Stream {
        self.post_stream("send", user, &id.to_string(), json!({ "content": content }))
            .await
    }

    pub async fn regenerate(&self, user: &User, id: Uuid) -> Stream {
        self.post_stream("regenerate", user, &id.to_string(), json!({}))
            .await
    }

    /// `POST /api/conversations/{id}/stop` as `user`, not yet sent.
    pub fn stop_req(&self, user: &User, id: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url("conversations", &format!("/api/conversations/{id}/stop")))
            .bearer_auth(&user.token)
    }

    /// Registers a slow answer of `n` tokens (` w0`, ` w1`, ..., `delay_ms`
    /// apart) for `content`; returns the tokens.
    pub async fn slow_answer(&self, content: &str, n: usize, delay_ms: u64) -> Vec<String> {
        let tokens: Vec<String> = (0..n).map(|i| format!(" w{i}")).collect();
        self.scenario(json!({"match": content, "tokens": tokens, "token_delay_ms": delay_ms}))
            .await;
        tokens
    }

    /// The send request of `content` to conversation `id`, not yet sent.
    pub fn send_req(&self, user: &User, id: Uuid, content: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url("send", &format!("/api/conversations/{id}/messages")))
            .bearer_auth(&user.token)
            .json(&json!({ "content": content }))
    }

    /// A new user and a conversation of theirs.
    pub async fn user_with_conversation(&self) -> (User, Uuid) {
        let user = self.user();
        let id = self.create_conversation(&user).await;
        (user, id)
    }

    /// A new user, a conversation of theirs, and a [`marker`] for its scenarios.
    pub async fn chat(&self) -> (User, Uuid, String) {
        let (user, id) = self.user_with_conversation().await;
        (user, id, marker())
    }

    /// Registers a scenario answering `content` with `tokens`, then sends `content`.
    pub async fn send_scripted(
        &self,
        user: &User,
        id: Uuid,
        content: &str,
        tokens: &[&str],
    ) -> Stream {
        self.scenario(json!({"match": content, "tokens": tokens}))
            .await;
        self.send(user, id, content).await
    }

    /// [`Stack::send_scripted`], which must end `done`: the answer's message id.
    pub async fn turn(&self, user: &User, id: Uuid, content: &str, tokens: &[&str]) -> String {
        self.send_scripted(user, id, content, tokens)
            .await
            .message_id()
    }

    /// The conversation's items, read directly from the table, as a reader of the
    /// chat sees them: the
    /// conversation and its messages, without live answers' checkpoint items
    /// (`L#...`, which expire by TTL; see [`Stack::checkpoints`]).
    pub async fn items(&self, id: Uuid) -> Vec<Item> {
        self.all_items(id)
            .await
            .into_iter()
            .filter(|i| !s(i, "sk").starts_with("L#"))
            .collect()
    }

    /// Waits (at most 5 s) until an answer holds the conversation's live slot;
    /// `false` if none did.
    pub async fn went_live(&self, id: Uuid) -> bool {
        eventually(Duration::from_secs(5), || async {
            self.items(id)
                .await
                .iter()
                .any(|i| i.contains_key("live_id"))
        })
        .await
    }

    /// The checkpoint items of the conversation's live answers, in key order.
    pub async fn checkpoints(&self, id: Uuid) -> Vec<Item> {
        self.all_items(id)
            .await
            .into_iter()
            .filter(|i| s(i, "sk").starts_with("L#"))
            .collect()
    }

    /// Every item of the conversation's partition, read directly from the table.
    pub async fn all_items(&self, id: Uuid) -> Vec<Item> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .dynamodb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(format!("CONV#{id}")))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("query");
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return items,
            }
        }
    }

    /// The conversation's messages as stored, oldest first: (role, content, status).
    pub async fn stored_messages(&self, id: Uuid) -> Vec<Item> {
        self.items(id)
            .await
            .into_iter()
            .filter(|i| s(i, "sk").starts_with("M#"))
            .collect()
    }

    pub async fn table_count(&self) -> usize {
        let mut count = 0;
        let mut start = None;
        loop {
            let out = self
                .dynamodb
                .scan()
                .table_name(&self.table)
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            count += out.count() as usize;
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return count,
            }
        }
    }
}

pub struct User {
    pub id: Uuid,
    pub token: String,
}

pub fn s(item: &Item, name: &str) -> String {
    match item.get(name) {
        Some(AttributeValue::S(v)) => v.clone(),
        Some(AttributeValue::N(v)) => v.clone(),
        other => panic!("attribute {name} missing or not S/N: {other:?}"),
    }
}

pub fn roles_and_contents(items: &[Item]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|i| (s(i, "role"), s(i, "content")))
        .collect()
}

/// A unique marker for a test's messages, which routes its mock scenario.
pub fn marker() -> String {
    format!("m{}", Uuid::new_v4().simple())
}

/// A whole stream as the browser sees it.
#[derive(Debug)]
pub struct Stream {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub raw: Vec<u8>,
    /// The JSON of every `data:` event, in order.
    pub events: Vec<Value>,
    pub pings: usize,
}

impl Stream {
    pub async fn read(mut resp: reqwest::Response) -> Stream {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut raw = Vec::new();
        while let Some(chunk) = resp.chunk().await.expect("stream body") {
            raw.extend_from_slice(&chunk);
        }
        Self::parse(status, headers, raw)
    }

    pub fn parse(status: u16, headers: reqwest::header::HeaderMap, raw: Vec<u8>) -> Stream {
        let text = String::from_utf8_lossy(&raw).to_string();
        let mut events = Vec::new();
        let mut pings = 0;
        for block in text.split("\n\n").filter(|b| !b.is_empty()) {
            if block == ": ping" {
                pings += 1;
            } else if let Some(data) = block.strip_prefix("data: ") {
                events.push(serde_json::from_str(data).unwrap_or(Value::String(data.to_owned())));
            } else {
                events.push(Value::String(block.to_owned()));
            }
        }
        Stream {
            status,
            headers,
            raw,
            events,
            pings,
        }
    }

    pub fn tokens(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| e.get("token").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }

    pub fn last(&self) -> &Value {
        self.events.last().expect("at least one event")
    }

    pub fn error(&self) -> Option<&str> {
        self.events
            .iter()
            .find_map(|e| e.get("error").and_then(Value::as_str))
    }

    /// Asserts the stream ended with an error event then `{"done": true}`.
    pub fn assert_failed_with(&self, code: &str) {
        let n = self.events.len();
        assert!(n >= 2, "events: {:?}", self.events);
        assert_eq!(
            self.events[n - 2]["error"],
            code,
            "events: {:?}",
            self.events
        );
        assert_eq!(
            self.events[n - 1],
            json!({ "done": true }),
            "events: {:?}",
            self.events
        );
    }

    pub fn message_id(&self) -> String {
        let last = self.last();
        assert_eq!(last["done"], true, "events: {:?}", self.events);
        last["message_id"].as_str().expect("message_id").to_owned()
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

impl Stack {
    /// The functions' own state, built from the stack's configuration, for tests
    /// that drive the handlers in-process.
    pub fn app_state(&self) -> Arc<samosachaat::AppState> {
        let config =
            samosachaat::foundation::config::Config::from_lookup(|k| self.env.get(k).cloned())
                .expect("stack config");
        Arc::new(samosachaat::AppState::new(config, self.functions_dynamodb()).expect("state"))
    }

    /// A DynamoDB client on the functions' own path (through the fault proxy,
    /// and retrying transaction conflicts as the functions' client does): for
    /// every write a test makes, so fault rules see it. `self.dynamodb` reads
    /// the table directly.
    pub fn functions_dynamodb(&self) -> aws_sdk_dynamodb::Client {
        let conf = self
            .dynamodb
            .config()
            .to_builder()
            .endpoint_url(&self.env["AWS_ENDPOINT_URL_DYNAMODB"])
            .retry_classifier(samosachaat::store::RetryTransactionConflicts)
            .build();
        aws_sdk_dynamodb::Client::from_conf(conf)
    }

    /// A sample event of `events/`, its placeholders filled.
    pub fn event(&self, file: &str, conversation: Uuid, token: &str) -> String {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../events")
            .join(file);
        std::fs::read_to_string(&path)
            .expect("event file")
            .replace("{{CONVERSATION_ID}}", &conversation.to_string())
            .replace("{{TOKEN}}", token)
    }
}

/// The whole body of an in-process response.
pub async fn body_bytes<B>(body: B) -> Vec<u8>
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    body.collect().await.expect("body").to_bytes().to_vec()
}

impl Stack {
    /// Registers a DynamoDB fault rule with the stack's fault proxy (between the
    /// functions and the DynamoDB server); see `dev/fault-proxy/README.md`.
    /// Scope it with `body_contains` (a conversation id) so tests never meet
    /// each other's rules.
    pub async fn fault(&self, rule: Value) {
        let resp = self
            .http
            .post(format!("{}/__faults", self.fault_proxy()))
            .json(&rule)
            .send()
            .await
            .expect("fault proxy");
        assert_eq!(resp.status(), 201, "fault rule {rule}");
    }

    /// What the fault proxy saw for requests whose body contains `contains`, in
    /// order: `{"operation", "status", "upstream_status", "fault", "at_ms"}`.
    pub async fn fault_log(&self, contains: &str) -> Vec<Value> {
        self.http
            .get(format!(
                "{}/__faults/log?contains={}",
                self.fault_proxy(),
                contains
                    .replace('%', "%25")
                    .replace(' ', "%20")
                    .replace('#', "%23")
                    .replace('&', "%26")
                    .replace('+', "%2B")
            ))
            .send()
            .await
            .expect("fault log")
            .json()
            .await
            .expect("json")
    }

    fn fault_proxy(&self) -> &str {
        self.env.get("FAULT_PROXY_URL").map(String::as_str).expect(
            "FAULT_PROXY_URL missing from the stack's client.env: restart it \
             with `scripts/stack.sh up test`",
        )
    }
}

impl Stack {
    /// The pids of the stack's `send` function processes (children of the
    /// `cargo lambda watch` serving the stack's function port) generating an
    /// answer now: they hold a connection to the mock upstream (as an idle
    /// instance may too: its spare connection), and they read and write while
    /// watched for 300 ms (an idle instance makes no system call).
    pub async fn generating_sends(&self) -> Vec<String> {
        let connected = self.upstream_connected_sends();
        let io = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/io"))
                .ok()
                .map(|io| {
                    // Bytes and calls of reads and writes (socket writes count).
                    io.lines()
                        .filter_map(|l| l.split_once(':'))
                        .filter(|(k, _)| ["rchar", "wchar", "syscr", "syscw"].contains(k))
                        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
                        .sum::<u64>()
                })
        };
        let before: Vec<Option<u64>> = connected.iter().map(|pid| io(pid)).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        connected
            .into_iter()
            .zip(before)
            .filter(|(pid, before)| matches!((before, io(pid)), (Some(a), Some(b)) if b > *a))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The stack's `send` processes holding an open connection to the mock
    /// upstream.
    fn upstream_connected_sends(&self) -> Vec<String> {
        let port = |url: &str| {
            url.trim_start_matches("http://")
                .split('/')
                .next()
                .and_then(|host| host.rsplit(':').next())
                .unwrap_or_default()
                .to_owned()
        };
        let functions_port = port(&self.functions);
        let upstream_port: u16 = port(&self.mock).parse().unwrap_or(0);
        // Sockets connected to the upstream, by inode (/proc/net/tcp: hex
        // addresses, state 01 = established).
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let sockets: Vec<String> = tcp
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let remote_port = f.get(2)?.rsplit(':').next()?;
                (u16::from_str_radix(remote_port, 16).ok()? == upstream_port && f.get(3)? == &"01")
                    .then(|| format!("socket:[{}]", f.get(9).unwrap_or(&"")))
            })
            .collect();
        let mut watch = Vec::new();
        let mut children = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // ppid is the field after the parenthesised command name.
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1))
                .unwrap_or_default()
                .to_owned();
            if args.iter().any(|a| a == "watch")
                && args
                    .windows(2)
                    .any(|w| w[0] == "--invoke-port" && w[1] == functions_port)
            {
                watch.push(pid);
            } else if args.first().is_some_and(|a| a.ends_with("/send")) {
                children.push((pid, ppid));
            }
        }
        children
            .into_iter()
            .filter(|(pid, ppid)| {
                watch.contains(ppid)
                    && std::fs::read_dir(format!("/proc/{pid}/fd"))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                        .any(|t| sockets.contains(&t.to_string_lossy().into_owned()))
            })
            .map(|(pid, _)| pid)
            .collect()
    }
}
