//! The legacy side of the migration's tests: a throwaway PostgreSQL cluster with
//! the chat-api's schema (`scripts/pg.sh`), the Python chat-api itself running on
//! it (`../shared/peers/python-chat-api`), a realistic data set made through that
//! service plus the edge cases other tooling could have left in its database, and
//! the comparison of what the Python service serves with what the functions serve
//! after the copy, allowing only the migration's documented differences.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// The repository's root (`/work/main` in a checkout).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python chat-api's directory: `CHAT_API_PEER_DIR`, else
/// `<repo>/../shared/peers/python-chat-api`; `None` when it is not there.
pub fn peer_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CHAT_API_PEER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/peers/python-chat-api"));
    dir.join("serve.py").is_file().then_some(dir)
}

/// [`peer_dir`], or a loud skip line naming the test when it is absent.
pub fn peer_dir_or_skip(test: &str) -> Option<PathBuf> {
    let dir = peer_dir();
    if dir.is_none() {
        let looked = std::env::var("CHAT_API_PEER_DIR").unwrap_or_else(|_| {
            repo_root()
                .join("../shared/peers/python-chat-api")
                .display()
                .to_string()
        });
        eprintln!(
            "\n==== SKIPPED: {test}: the Python chat-api ({looked}) not found; \
             set CHAT_API_PEER_DIR to run it ====\n"
        );
    }
    dir
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// A fresh directory under the system's temporary directory, reachable by the
/// `postgres` user (the cluster runs as that user when the tests run as root).
fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// A throwaway PostgreSQL 15 cluster with the chat-api's `schema.sql`, made by
/// `scripts/pg.sh`; stopped and removed on drop.
pub struct Postgres {
    dir: PathBuf,
    port: u16,
    url: String,
}

impl Postgres {
    /// Starts a cluster on a free port (three attempts: a port can be taken
    /// between finding it and binding it).
    pub fn start() -> Postgres {
        let peer = peer_dir().expect("the Python chat-api's directory (for schema.sql)");
        let script = repo_root().join("scripts/pg.sh");
        let mut last = String::new();
        for _ in 0..3 {
            let dir = std::env::temp_dir().join(format!("migrate-pg-{}", Uuid::new_v4().simple()));
            let port = free_port();
            let out = Command::new("bash")
                .arg(&script)
                .arg("up")
                .arg(&dir)
                .arg(port.to_string())
                .env("PEER_DIR", &peer)
                .output()
                .expect("run scripts/pg.sh");
            if out.status.success() {
                let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                return Postgres { dir, port, url };
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = Command::new("bash")
                .arg(&script)
                .arg("down")
                .arg(&dir)
                .output();
        }
        panic!(
            "PostgreSQL 15 did not start (scripts/pg.sh up; install it with \
             scripts/bootstrap.sh):\n{last}"
        );
    }

    /// `postgresql://postgres@127.0.0.1:PORT/chatapi`
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A SQL client on the `chatapi` database (its connection runs on a task
    /// of the calling runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("postgres connection: {e}");
            }
        });
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/pg.sh"))
            .arg("down")
            .arg(&self.dir)
            .output();
    }
}

// ---------------------------------------------------------------------------
// Mock inference for the Python service
// ---------------------------------------------------------------------------

/// The API key the Python service's launcher (`serve.py`) always sends upstream;
/// the stack's own mock inference expects the stack's key, so the Python
/// service gets a mock of its own.
pub const PEER_API_KEY: &str = "peer-internal-key";

/// The project's mock inference (`dev/mock-inference`), served in-process on a
/// free port with the Python service's API key; stopped on drop.
pub struct MockInference {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl MockInference {
    pub async fn start() -> MockInference {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the mock inference");
        let addr = listener.local_addr().expect("mock inference address");
        let cfg = mock_inference::Config {
            api_key: Some(PEER_API_KEY.to_owned()),
            token_delay: Duration::from_millis(1),
        };
        let task = tokio::spawn(mock_inference::serve(listener, cfg));
        MockInference {
            url: format!("http://{addr}"),
            task,
        }
    }
}

impl Drop for MockInference {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// The Python chat-api
// ---------------------------------------------------------------------------

/// The Python chat-api (`serve.py`) on a [`Postgres`], killed on drop.
pub struct ChatApi {
    child: Child,
    pub base: String,
    http: reqwest::Client,
    output: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
}

impl ChatApi {
    /// Starts the service and waits (at most 90 s) for its `ready` line.
    /// `inference` is the upstream base URL; the service appends `/generate`.
    pub async fn start(pg: &Postgres, inference: &str) -> ChatApi {
        let peer = peer_dir().expect("the Python chat-api's directory");
        let python = repo_root().join(".tools/chat-api-venv/bin/python");
        assert!(
            python.is_file(),
            "{} is missing: install the Python chat-api's packages with scripts/bootstrap.sh",
            python.display()
        );
        let port = free_port();
        let logs = temp_dir("migrate-chat-api");
        let stderr_path = logs.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("chat-api log file");
        let mut child = Command::new(&python)
            .arg(peer.join("serve.py"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--inference")
            .arg(inference)
            .arg("--database-url")
            .arg(format!(
                "postgresql+asyncpg://postgres@127.0.0.1:{}/chatapi",
                pg.port()
            ))
            .current_dir(&logs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));

        // Its stdout is drained for as long as it runs (a full pipe would block it).
        let stdout = child.stdout.take().expect("chat-api stdout");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("ready ") {
                        let _ = ready_tx.send(());
                    }
                    if let Ok(mut o) = output.lock() {
                        o.push(line);
                    }
                }
            });
        }
        let mut api = ChatApi {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
            output,
            stderr_path,
        };
        let started = Instant::now();
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(()) => return api,
                Err(mpsc::RecvTimeoutError::Timeout)
                    if started.elapsed() < Duration::from_secs(90) =>
                {
                    if let Ok(Some(status)) = api.child.try_wait() {
                        panic!("the Python chat-api exited ({status}):\n{}", api.logs());
                    }
                }
                Err(_) => panic!("the Python chat-api did not print `ready`:\n{}", api.logs()),
            }
        }
    }

    /// What the service printed so far (stdout and stderr), for failure messages.
    pub fn logs(&self) -> String {
        let out = self.output.lock().map(|o| o.join("\n")).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail: String = err
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!("--- stdout\n{out}\n--- stderr (tail)\n{tail}")
    }

    /// The bearer token the launcher's auth stand-in accepts as `user`.
    pub fn token(user: Uuid) -> String {
        format!("peer-{user}")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /api/conversations` with `body` (the frontend sends
    /// `{"title": "New chat"}`); must be 201. The conversation's JSON.
    pub async fn create(&self, user: Uuid, body: Value) -> Value {
        let resp = self
            .http
            .post(self.url("/api/conversations"))
            .bearer_auth(Self::token(user))
            .json(&body)
            .send()
            .await
            .expect("chat-api: create conversation");
        let status = resp.status().as_u16();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "chat-api create {body}: {value}");
        value
    }

    /// [`ChatApi::create`], returning only the id.
    pub async fn create_id(&self, user: Uuid, body: Value) -> Uuid {
        let value = self.create(user, body).await;
        Uuid::parse_str(value["id"].as_str().expect("created conversation's id"))
            .expect("created conversation's id is a UUID")
    }

    /// `POST /api/conversations/{id}/messages`, the event stream read to its
    /// end: the JSON of its `data:` events. Must be 200 and end with `done`
    /// without an error event.
    pub async fn send(&self, user: Uuid, id: Uuid, content: &str) -> Vec<Value> {
        let mut resp = self
            .http
            .post(self.url(&format!("/api/conversations/{id}/messages")))
            .bearer_auth(Self::token(user))
            .json(&json!({ "content": content }))
            .send()
            .await
            .expect("chat-api: send");
        let status = resp.status().as_u16();
        let mut raw = Vec::new();
        while let Some(chunk) = resp.chunk().await.expect("chat-api: the event stream") {
            raw.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&raw).replace("\r\n", "\n");
        assert_eq!(status, 200, "chat-api send: {text}");
        let events: Vec<Value> = text
            .split("\n\n")
            .filter_map(|block| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .map(|d| serde_json::from_str(d.trim()).unwrap_or(Value::String(d.to_owned())))
            })
            .collect();
        assert!(
            events.last().is_some_and(|e| e["done"] == true)
                && !events.iter().any(|e| e.get("error").is_some()),
            "chat-api send to {id} did not end with done: {text}\n{}",
            self.logs()
        );
        events
    }

    /// `PUT /api/conversations/{id}` `{"title"}`; must be 200.
    pub async fn rename(&self, user: Uuid, id: Uuid, title: &str) -> Value {
        let resp = self
            .http
            .put(self.url(&format!("/api/conversations/{id}")))
            .bearer_auth(Self::token(user))
            .json(&json!({ "title": title }))
            .send()
            .await
            .expect("chat-api: rename");
        let status = resp.status().as_u16();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "chat-api rename {id}: {value}");
        value
    }

    /// `DELETE /api/conversations/{id}`; must be 204.
    pub async fn delete(&self, user: Uuid, id: Uuid) {
        let resp = self
            .http
            .delete(self.url(&format!("/api/conversations/{id}")))
            .bearer_auth(Self::token(user))
            .send()
            .await
            .expect("chat-api: delete");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 204, "chat-api delete {id}: {body}");
    }

    /// One page of `GET /api/conversations?limit=&offset=`.
    pub async fn list_page(&self, user: Uuid, limit: u32, offset: u32) -> Value {
        let resp = self
            .http
            .get(self.url(&format!("/api/conversations?limit={limit}&offset={offset}")))
            .bearer_auth(Self::token(user))
            .send()
            .await
            .expect("chat-api: list");
        let status = resp.status().as_u16();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "chat-api list: {value}");
        value
    }

    /// Every page of the user's list (pages of `limit`), as `{"items": [...]}`.
    /// Offset paging over equal `updated_at` values is not stable in PostgreSQL,
    /// so whole-list comparisons use pages of 200 (the service's maximum).
    pub async fn list_all(&self, user: Uuid, limit: u32) -> Value {
        let mut items = Vec::new();
        let mut offset = 0;
        loop {
            let page = self.list_page(user, limit, offset).await;
            let got = page["items"].as_array().cloned().unwrap_or_default();
            let n = got.len() as u32;
            items.extend(got);
            if n < limit {
                return json!({ "items": items });
            }
            offset += n;
        }
    }

    /// `GET /api/conversations/{id}`: status and JSON.
    pub async fn get(&self, user: Uuid, id: Uuid) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(&format!("/api/conversations/{id}")))
            .bearer_auth(Self::token(user))
            .send()
            .await
            .expect("chat-api: get conversation");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// [`ChatApi::get`], which must be 200.
    pub async fn conversation(&self, user: Uuid, id: Uuid) -> Value {
        let (status, value) = self.get(user, id).await;
        assert_eq!(status, 200, "chat-api get {id}: {value}");
        value
    }
}

impl Drop for ChatApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.stderr_path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// ---------------------------------------------------------------------------
// The functions' side
// ---------------------------------------------------------------------------

/// The functions' conversation API over real HTTP (the stack's `conversations`
/// function), as a user with a token the functions accept.
pub struct Functions {
    http: reqwest::Client,
    /// `FUNCTIONS_URL` of the stack env, e.g. `http://127.0.0.1:19000/lambda-url`.
    base: String,
    token: Box<dyn Fn(Uuid) -> String + Send + Sync>,
}

impl Functions {
    pub fn new(
        functions_url: &str,
        token: impl Fn(Uuid) -> String + Send + Sync + 'static,
    ) -> Functions {
        Functions {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
            base: functions_url.trim_end_matches('/').to_owned(),
            token: Box::new(token),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/conversations{path}", self.base)
    }

    /// Every page of `GET /api/conversations?limit=` (following `next_cursor`),
    /// as `{"items": [...]}`.
    pub async fn list_all(&self, user: Uuid, limit: u32) -> Value {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let mut url = self.url(&format!("/api/conversations?limit={limit}"));
            if let Some(c) = &cursor {
                url.push_str("&cursor=");
                url.push_str(&percent_encode(c));
            }
            let resp = self
                .http
                .get(&url)
                .bearer_auth((self.token)(user))
                .send()
                .await
                .expect("functions: list");
            let status = resp.status().as_u16();
            let page: Value = resp.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 200, "functions list {url}: {page}");
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                _ => return json!({ "items": items }),
            }
        }
        panic!("functions list: more than 10000 pages");
    }

    /// `GET /api/conversations/{id}`: status and JSON.
    pub async fn get(&self, user: Uuid, id: Uuid) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(&format!("/api/conversations/{id}")))
            .bearer_auth((self.token)(user))
            .send()
            .await
            .expect("functions: get conversation");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The data set
// ---------------------------------------------------------------------------

/// What [`make_legacy_data`] made.
#[derive(Debug, Default)]
pub struct Legacy {
    /// Every user with data, in creation order.
    pub users: Vec<Uuid>,
    /// Each user's live conversations (deleted ones excluded).
    pub conversations: BTreeMap<Uuid, Vec<Uuid>>,
    /// Conversations the service deleted: (user, conversation).
    pub deleted: Vec<(Uuid, Uuid)>,
    /// Edge case name -> the conversations carrying it.
    pub edge: BTreeMap<&'static str, Vec<Uuid>>,
}

impl Legacy {
    fn mark(&mut self, case: &'static str, id: Uuid) {
        self.edge.entry(case).or_default().push(id);
    }

    /// The user owning `id`.
    pub fn owner(&self, id: Uuid) -> Option<Uuid> {
        self.conversations
            .iter()
            .find(|(_, ids)| ids.contains(&id))
            .map(|(u, _)| *u)
            .or_else(|| self.deleted.iter().find(|(_, c)| *c == id).map(|(u, _)| *u))
    }
}

/// A UUID whose first byte is `first`: for messages whose order by id must be
/// known in advance.
fn uuid_with_first_byte(first: u8) -> Uuid {
    let mut bytes = *Uuid::new_v4().as_bytes();
    bytes[0] = first;
    Uuid::from_bytes(bytes)
}

/// Text of at least `bytes` UTF-8 bytes mixing ASCII, Devanagari (3 bytes a
/// character), emoji (4) and a combining mark, so a cut by bytes can land inside
/// a character.
pub fn big_text(bytes: usize, tag: &str) -> String {
    let unit = "line {n}: samosa chaat नमस्ते दुनिया 🙏🏽 你好 é e\u{301} ";
    let mut out = format!("{tag} ");
    let mut n = 0;
    while out.len() < bytes {
        out.push_str(&unit.replace("{n}", &n.to_string()));
        if n % 7 == 6 {
            out.push('\n');
        }
        n += 1;
    }
    out
}

pub const NON_ASCII: &str =
    "नमस्ते दुनिया — क्‍ष, emoji 🙏🏽👨‍👩‍👧‍👦🇮🇳, CJK 你好世界 こんにちは 안녕, combining e\u{301} a\u{308}\u{323}, RTL مرحبا";

struct Row<'a> {
    role: &'a str,
    content: &'a str,
    token_count: Option<i32>,
    model_tag: Option<&'a str>,
    inference_time_ms: Option<i32>,
    created_at: Option<&'a str>,
    id: Option<Uuid>,
}

impl<'a> Row<'a> {
    fn new(role: &'a str, content: &'a str, created_at: &'a str) -> Row<'a> {
        let assistant = role == "assistant";
        Row {
            role,
            content,
            token_count: assistant.then_some(12),
            model_tag: Some("default"),
            inference_time_ms: assistant.then_some(840),
            created_at: Some(created_at),
            id: None,
        }
    }
}

async fn insert_user(db: &tokio_postgres::Client, user: Uuid) {
    db.execute(
        "INSERT INTO users (id, email, name, provider, provider_id) VALUES ($1, $2, 'Legacy', 'google', $3)",
        &[&user, &format!("{user}@legacy.example.com"), &user.to_string()],
    )
    .await
    .expect("insert a users row");
}

async fn insert_conversation(
    db: &tokio_postgres::Client,
    user: Uuid,
    title: Option<&str>,
    model_tag: Option<&str>,
    created_at: Option<&str>,
    updated_at: Option<&str>,
) -> Uuid {
    let id = Uuid::new_v4();
    db.execute(
        "INSERT INTO conversations (id, user_id, title, model_tag, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5::text::timestamptz, $6::text::timestamptz)",
        &[&id, &user, &title, &model_tag, &created_at, &updated_at],
    )
    .await
    .expect("insert a conversation");
    id
}

async fn insert_message(db: &tokio_postgres::Client, conversation: Uuid, row: Row<'_>) -> Uuid {
    let id = row.id.unwrap_or_else(Uuid::new_v4);
    db.execute(
        "INSERT INTO messages (id, conversation_id, role, content, token_count, model_tag, \
         inference_time_ms, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::timestamptz)",
        &[
            &id,
            &conversation,
            &row.role,
            &row.content,
            &row.token_count,
            &row.model_tag,
            &row.inference_time_ms,
            &row.created_at,
        ],
    )
    .await
    .expect("insert a message");
    id
}

/// Sends `turns` messages through the service, checking each turn stored both
/// of its messages.
async fn turns(api: &ChatApi, user: Uuid, id: Uuid, label: &str, n: usize) {
    let before = api.conversation(user, id).await["messages"]
        .as_array()
        .map_or(0, Vec::len);
    for i in 0..n {
        api.send(
            user,
            id,
            &format!("{label} question {i}: how do I make samosa chaat?"),
        )
        .await;
    }
    let after = api.conversation(user, id).await["messages"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(after, before + 2 * n, "chat-api stored every turn of {id}");
}

/// The data set: made by the Python service itself (users, conversations,
/// turns, renames, deletes, one empty conversation, a 120-message
/// conversation), plus the edge cases other tooling or older versions could have
/// left, written with SQL.
pub async fn make_legacy_data(pg: &Postgres, api: &ChatApi) -> Legacy {
    let db = pg.client().await;
    let mut legacy = Legacy::default();
    let new_chat = || json!({ "title": "New chat" });

    // --- Through the service -------------------------------------------------
    // Turns per conversation; a conversation is created as the frontend does
    // ({"title": "New chat"}) or with an empty body ({}), alternately.
    let plan: [&[usize]; 4] = [
        &[2, 60, 1],
        &[3, 1, 4, 0],
        &[1, 2, 3, 4, 2],
        &[4, 3, 2, 1, 2, 1],
    ];
    for (u, conversations) in plan.iter().enumerate() {
        let user = Uuid::new_v4();
        legacy.users.push(user);
        let mut ids = Vec::new();
        for (c, &n) in conversations.iter().enumerate() {
            let body = if c % 2 == 0 { new_chat() } else { json!({}) };
            let id = api.create_id(user, body).await;
            ids.push(id);
            // User 1's second conversation is renamed before its first message
            // (the service then overwrites the title with the first message's).
            if (u, c) == (1, 1) {
                api.rename(user, id, "Renamed before the first message")
                    .await;
                legacy.mark("renamed_before_first_message", id);
            }
            if (u, c) == (2, 4) {
                api.send(user, id, NON_ASCII).await;
                legacy.mark("non_ascii", id);
            }
            turns(api, user, id, &format!("u{u}c{c}"), n).await;
            if n == 0 {
                legacy.mark("empty", id);
            }
            if n == 60 {
                legacy.mark("many_messages", id);
            }
        }
        // Renames after the turns (each moves `updated_at`).
        match u {
            0 => {
                api.rename(user, ids[0], "Samosa recipes").await;
                legacy.mark("renamed", ids[0]);
            }
            2 => {
                api.rename(user, ids[1], &format!("चाट — {NON_ASCII}"))
                    .await;
                legacy.mark("renamed", ids[1]);
                legacy.mark("non_ascii", ids[1]);
            }
            3 => {
                api.rename(user, ids[2], "Trip to Delhi 🛺").await;
                legacy.mark("renamed", ids[2]);
            }
            _ => {}
        }
        // Deletes.
        let gone: &[usize] = match u {
            2 => &[3],
            3 => &[0, 5],
            _ => &[],
        };
        for &c in gone {
            api.delete(user, ids[c]).await;
            legacy.deleted.push((user, ids[c]));
        }
        let live: Vec<Uuid> = ids
            .iter()
            .enumerate()
            .filter(|(c, _)| !gone.contains(c))
            .map(|(_, id)| *id)
            .collect();
        legacy.conversations.insert(user, live);
    }

    // --- Edge cases in the service's own conversations ---------------------------
    // A `system` message at the start of user 0's third conversation.
    let u0 = legacy.users[0];
    let c = legacy.conversations[&u0][2];
    let first_at: String = db
        .query_one(
            "SELECT to_char((min(created_at) - interval '1 millisecond') AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM messages WHERE conversation_id = $1",
            &[&c],
        )
        .await
        .expect("first message's time")
        .get(0);
    insert_message(
        &db,
        c,
        Row {
            token_count: None,
            inference_time_ms: None,
            model_tag: None,
            ..Row::new(
                "system",
                "You are samosaChaat, a helpful assistant.",
                &first_at,
            )
        },
    )
    .await;
    legacy.mark("system_message", c);
    // An answer of user 1's first conversation lost its counts.
    let u1 = legacy.users[1];
    let c = legacy.conversations[&u1][0];
    db.execute(
        "UPDATE messages SET token_count = NULL, inference_time_ms = NULL WHERE id = \
         (SELECT id FROM messages WHERE conversation_id = $1 AND role = 'assistant' \
          ORDER BY created_at, id LIMIT 1)",
        &[&c],
    )
    .await
    .expect("null counts");
    legacy.mark("null_counts", c);

    // --- A user whose data only SQL made -----------------------------------------
    let edge_user = Uuid::new_v4();
    insert_user(&db, edge_user).await;
    legacy.users.push(edge_user);
    let mut ids = Vec::new();

    // NULL title; NULL model_tag (and NULL message model_tags).
    let id = insert_conversation(
        &db,
        edge_user,
        None,
        Some("d32"),
        Some("2025-01-05T10:00:00.000001Z"),
        Some("2025-01-05T10:01:00.5Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row::new("user", "untitled question", "2025-01-05T10:00:01Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row::new("assistant", "untitled answer", "2025-01-05T10:00:02.25Z"),
    )
    .await;
    legacy.mark("null_title", id);
    ids.push(id);

    let id = insert_conversation(
        &db,
        edge_user,
        Some("No model"),
        None,
        Some("2025-01-06T10:00:00Z"),
        Some("2025-01-06T10:05:00Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row {
            model_tag: None,
            ..Row::new("user", "which model?", "2025-01-06T10:00:01Z")
        },
    )
    .await;
    insert_message(
        &db,
        id,
        Row {
            model_tag: None,
            ..Row::new("assistant", "none recorded", "2025-01-06T10:00:02Z")
        },
    )
    .await;
    legacy.mark("null_model_tag", id);
    legacy.mark("null_message_model_tag", id);
    ids.push(id);

    // Two messages with equal created_at: the one inserted second has the
    // smaller id, so the service serves it first.
    let id = insert_conversation(
        &db,
        edge_user,
        Some("Same instant"),
        Some("default"),
        Some("2025-01-07T09:00:00Z"),
        Some("2025-01-07T09:10:00Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row::new("user", "before the tie", "2025-01-07T09:00:01.100000Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row {
            id: Some(uuid_with_first_byte(0xff)),
            ..Row::new(
                "user",
                "tie: inserted first, larger id",
                "2025-01-07T09:00:02.123456Z",
            )
        },
    )
    .await;
    insert_message(
        &db,
        id,
        Row {
            id: Some(uuid_with_first_byte(0x00)),
            ..Row::new(
                "assistant",
                "tie: inserted second, smaller id",
                "2025-01-07T09:00:02.123456Z",
            )
        },
    )
    .await;
    insert_message(
        &db,
        id,
        Row::new("assistant", "after the tie", "2025-01-07T09:00:03Z"),
    )
    .await;
    legacy.mark("equal_created_at", id);
    ids.push(id);

    // A message without created_at between two with one (served last), and a
    // conversation whose only message has none.
    let id = insert_conversation(
        &db,
        edge_user,
        Some("Lost a timestamp"),
        Some("default"),
        Some("2025-01-08T08:00:00Z"),
        Some("2025-01-08T08:30:00Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row::new("user", "first, timed", "2025-01-08T08:00:01Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row {
            created_at: None,
            ..Row::new("assistant", "untimed answer", "")
        },
    )
    .await;
    insert_message(
        &db,
        id,
        Row::new("user", "third, timed", "2025-01-08T08:00:05.5Z"),
    )
    .await;
    legacy.mark("null_message_created_at", id);
    ids.push(id);

    let id = insert_conversation(
        &db,
        edge_user,
        Some("Only untimed"),
        Some("default"),
        Some("2025-01-09T08:00:00.654321Z"),
        Some("2025-01-09T08:00:00.654321Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row {
            created_at: None,
            ..Row::new("user", "no time at all", "")
        },
    )
    .await;
    legacy.mark("null_first_message_created_at", id);
    ids.push(id);

    // NULL conversation updated_at (the service lists it first: NULLS FIRST
    // descending); NULL conversation created_at.
    let id = insert_conversation(
        &db,
        edge_user,
        Some("Never updated"),
        Some("default"),
        Some("2025-01-10T12:00:00Z"),
        None,
    )
    .await;
    insert_message(&db, id, Row::new("user", "q", "2025-01-10T12:00:01Z")).await;
    insert_message(
        &db,
        id,
        Row::new("assistant", "a", "2025-01-10T12:00:09.000009Z"),
    )
    .await;
    legacy.mark("null_updated_at", id);
    ids.push(id);

    let id = insert_conversation(
        &db,
        edge_user,
        Some("Never created"),
        Some("default"),
        None,
        Some("2025-01-11T12:00:00Z"),
    )
    .await;
    insert_message(&db, id, Row::new("user", "q", "2025-01-11T11:59:00Z")).await;
    legacy.mark("null_created_at", id);
    ids.push(id);

    // Content over DynamoDB's item limit, and large content that fits.
    let over = big_text(500 * 1024, "over the item limit");
    let fits = big_text(100 * 1024, "fits in an item");
    let id = insert_conversation(
        &db,
        edge_user,
        Some("Huge answer"),
        Some("default"),
        Some("2025-01-12T07:00:00Z"),
        Some("2025-01-12T07:10:00Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row::new("user", "write a very long essay", "2025-01-12T07:00:01Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row::new("assistant", &over, "2025-01-12T07:00:30Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row::new("user", "and a shorter one", "2025-01-12T07:01:00Z"),
    )
    .await;
    insert_message(
        &db,
        id,
        Row::new("assistant", &fits, "2025-01-12T07:01:30Z"),
    )
    .await;
    legacy.mark("over_item_limit", id);
    legacy.mark("large_fits", id);
    ids.push(id);

    // Non-ASCII everywhere, an empty content, counts NULL and set (0 too).
    let id = insert_conversation(
        &db,
        edge_user,
        Some(NON_ASCII),
        Some("d32-हिंदी"),
        Some("2025-01-13T06:00:00Z"),
        Some("2025-01-13T06:20:00Z"),
    )
    .await;
    insert_message(&db, id, Row::new("user", NON_ASCII, "2025-01-13T06:00:01Z")).await;
    insert_message(
        &db,
        id,
        Row {
            token_count: None,
            inference_time_ms: None,
            ..Row::new("assistant", "", "2025-01-13T06:00:02Z")
        },
    )
    .await;
    insert_message(
        &db,
        id,
        Row {
            token_count: Some(0),
            inference_time_ms: Some(0),
            ..Row::new("user", "counts set to zero", "2025-01-13T06:00:03Z")
        },
    )
    .await;
    insert_message(
        &db,
        id,
        Row {
            token_count: Some(7),
            inference_time_ms: Some(1234),
            model_tag: Some("d34"),
            ..Row::new(
                "user",
                "counts set on a user message",
                "2025-01-13T06:00:04Z",
            )
        },
    )
    .await;
    insert_message(
        &db,
        id,
        Row::new(
            "assistant",
            &format!("{NON_ASCII} — answered"),
            "2025-01-13T06:00:05Z",
        ),
    )
    .await;
    legacy.mark("non_ascii", id);
    legacy.mark("empty_content", id);
    legacy.mark("null_counts", id);
    legacy.mark("zero_counts", id);
    ids.push(id);

    // Two conversations with the same updated_at.
    for title in ["Tie A", "Tie B"] {
        let id = insert_conversation(
            &db,
            edge_user,
            Some(title),
            Some("default"),
            Some("2025-01-14T05:00:00Z"),
            Some("2025-01-14T05:30:00.777777Z"),
        )
        .await;
        insert_message(&db, id, Row::new("user", title, "2025-01-14T05:00:01Z")).await;
        legacy.mark("equal_updated_at", id);
        ids.push(id);
    }

    // And one conversation of the edge user through the service.
    let id = api.create_id(edge_user, new_chat()).await;
    turns(api, edge_user, id, "edge", 2).await;
    ids.push(id);
    legacy.conversations.insert(edge_user, ids);
    legacy
}

// ---------------------------------------------------------------------------
// The comparison
// ---------------------------------------------------------------------------

/// Content over DynamoDB's 400 KB item limit may be cut (rule 7) when the whole
/// content is at least this long; the stored prefix is at least this long too.
pub const MIN_CUT_BYTES: usize = 300 * 1024;
/// DynamoDB's item size limit.
pub const ITEM_LIMIT_BYTES: usize = 400 * 1024;

/// A message's columns as stored in PostgreSQL, where the service's JSON hides
/// NULL behind 0 and "".
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub token_count: Option<i32>,
    pub inference_time_ms: Option<i32>,
    pub model_tag: Option<String>,
}

/// What [`compare`] needs beyond the two JSON documents.
#[derive(Debug, Default)]
pub struct Rules {
    /// The Python service's `GET` of each conversation, by id: a list item with
    /// a NULL `updated_at`/`created_at` needs its messages to derive the value.
    pub python_conversations: HashMap<String, Value>,
    /// The messages' NULL-able columns by message id. Without an entry, Python's
    /// 0 / "" may be the functions' null or 0 / "".
    pub raw_messages: HashMap<String, RawMessage>,
}

impl Rules {
    /// The raw message columns of the whole database.
    pub async fn from_postgres(pg: &Postgres) -> Rules {
        let db = pg.client().await;
        let rows = db
            .query(
                "SELECT id::text, token_count, inference_time_ms, model_tag FROM messages",
                &[],
            )
            .await
            .expect("read the messages' raw columns");
        let raw_messages = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    RawMessage {
                        token_count: r.get(1),
                        inference_time_ms: r.get(2),
                        model_tag: r.get(3),
                    },
                )
            })
            .collect();
        Rules {
            python_conversations: HashMap::new(),
            raw_messages,
        }
    }
}

/// An RFC 3339 instant in microseconds since the epoch.
pub fn instant(v: &Value) -> Option<i128> {
    let s = v.as_str()?;
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos() / 1000)
}

fn fmt_micros(us: i128) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(us * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{us}us"))
}

/// A value for a difference line, long strings cut.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > 80 => {
            let head: String = s.chars().take(60).collect();
            format!("{head:?}... ({} bytes)", s.len())
        }
        other => {
            let s = other.to_string();
            if s.chars().count() > 200 {
                format!(
                    "{}... ({} bytes)",
                    s.chars().take(200).collect::<String>(),
                    s.len()
                )
            } else {
                s
            }
        }
    }
}

/// The instants the functions must serve for a Python conversation (rule 8):
/// created_at, updated_at, and each copied (non-`system`) message's created_at.
#[derive(Debug)]
struct Effective {
    created_at: Option<i128>,
    updated_at: Option<i128>,
    messages: Vec<Option<i128>>,
}

fn effective(conversation: &Value) -> Effective {
    let copied: Vec<&Value> = conversation["messages"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] != "system").collect())
        .unwrap_or_default();
    let raw_created = instant(&conversation["created_at"]);
    let raw_updated = instant(&conversation["updated_at"]);
    // created_at NULL -> updated_at (when that is set).
    let created = raw_created.or(raw_updated);
    let mut messages = Vec::new();
    // A NULL message created_at: 1 µs after the message before it; the first
    // message's: the conversation's created_at itself.
    let mut prev: Option<Option<i128>> = None;
    for m in &copied {
        let at = instant(&m["created_at"]).or(match prev {
            None => created,
            Some(p) => p.map(|p| p + 1),
        });
        messages.push(at);
        prev = Some(at);
    }
    let updated = raw_updated.or_else(|| {
        std::iter::once(created)
            .chain(messages.iter().copied())
            .flatten()
            .max()
    });
    Effective {
        created_at: created,
        updated_at: updated,
        messages,
    }
}

/// The conversation fields both sides serve, compared under rules 2, 5 and 8.
fn compare_conversation_fields(
    py: &Value,
    fx: &Value,
    eff: Option<&Effective>,
    at: &str,
    out: &mut Vec<String>,
) {
    for field in ["id", "user_id"] {
        if py[field] != fx[field] {
            out.push(format!(
                "{at}: {field}: python {} functions {}",
                show(&py[field]),
                show(&fx[field])
            ));
        }
    }
    let title = if py["title"].is_null() {
        json!("New conversation")
    } else {
        py["title"].clone()
    };
    if title != fx["title"] {
        out.push(format!(
            "{at}: title: python {} (expected {}) functions {}",
            show(&py["title"]),
            show(&title),
            show(&fx["title"])
        ));
    }
    let tag = if py["model_tag"].is_null() {
        json!("default")
    } else {
        py["model_tag"].clone()
    };
    if tag != fx["model_tag"] {
        out.push(format!(
            "{at}: model_tag: python {} (expected {}) functions {}",
            show(&py["model_tag"]),
            show(&tag),
            show(&fx["model_tag"])
        ));
    }
    for (field, want) in [
        (
            "created_at",
            eff.and_then(|e| e.created_at)
                .or_else(|| instant(&py["created_at"])),
        ),
        (
            "updated_at",
            eff.and_then(|e| e.updated_at)
                .or_else(|| instant(&py["updated_at"])),
        ),
    ] {
        let got = instant(&fx[field]);
        match (want, got) {
            (Some(w), Some(g)) if w == g => {}
            (None, _) => out.push(format!(
                "{at}: {field}: python {} and no messages to derive it from",
                show(&py[field])
            )),
            (Some(w), _) => out.push(format!(
                "{at}: {field}: python {} (expected {}) functions {}",
                show(&py[field]),
                fmt_micros(w),
                show(&fx[field])
            )),
        }
    }
}

/// Python's 0 / "" for a NULL column against the functions' null (rule 3).
fn compare_nullable(
    field: &str,
    py: &Value,
    fx: &Value,
    raw: Option<Option<Value>>,
    at: &str,
    out: &mut Vec<String>,
) {
    let ok = match &raw {
        // NULL in PostgreSQL: the functions serve null.
        Some(None) => fx.is_null(),
        Some(Some(v)) => fx == v && py == v,
        // Unknown: Python's empty value may be either.
        None => fx == py || (fx.is_null() && (*py == json!(0) || *py == json!(""))),
    };
    if !ok {
        let stored = match &raw {
            Some(None) => " (NULL in PostgreSQL)".to_owned(),
            Some(Some(v)) => format!(" ({v} in PostgreSQL)"),
            None => String::new(),
        };
        out.push(format!(
            "{at}: {field}: python {}{stored} functions {}",
            show(py),
            show(fx)
        ));
    }
}

fn compare_messages(
    py: &Value,
    fx: &Value,
    eff: &Effective,
    rules: &Rules,
    at: &str,
    out: &mut Vec<String>,
) {
    let py_msgs: Vec<&Value> = py["messages"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] != "system").collect())
        .unwrap_or_default();
    let Some(fx_msgs) = fx["messages"].as_array() else {
        out.push(format!("{at}: functions serve no messages array"));
        return;
    };
    if py_msgs.len() != fx_msgs.len() {
        out.push(format!(
            "{at}: {} messages in python (without system), {} in functions",
            py_msgs.len(),
            fx_msgs.len()
        ));
    }
    let mut prev_id: Option<Uuid> = None;
    let mut seen = BTreeSet::new();
    for (i, (p, f)) in py_msgs.iter().zip(fx_msgs).enumerate() {
        let mat = format!(
            "{at} message {i} (python id {})",
            p["id"].as_str().unwrap_or("?")
        );
        // Rule 1: ids are re-minted UUIDv7, in message order.
        match f["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(id) => {
                if id.get_version_num() != 7 {
                    out.push(format!("{mat}: functions id {id} is not a UUIDv7"));
                }
                if prev_id.is_some_and(|p| p >= id) {
                    out.push(format!(
                        "{mat}: functions id {id} does not sort after the previous message's"
                    ));
                }
                if !seen.insert(id) {
                    out.push(format!("{mat}: functions id {id} repeated"));
                }
                prev_id = Some(id);
            }
            None => out.push(format!(
                "{mat}: functions id {} is not a UUID",
                show(&f["id"])
            )),
        }
        for field in ["conversation_id", "role"] {
            if p[field] != f[field] {
                out.push(format!(
                    "{mat}: {field}: python {} functions {}",
                    show(&p[field]),
                    show(&f[field])
                ));
            }
        }
        // Rules 4 and 7: content and status.
        let pc = p["content"].as_str().unwrap_or_default();
        let fc = f["content"].as_str();
        let status = f["status"].as_str().unwrap_or("<missing>");
        match fc {
            Some(fc) if fc == pc => {
                if status != "complete" {
                    out.push(format!(
                        "{mat}: status {status:?}, expected \"complete\" (content copied whole)"
                    ));
                }
                if pc.len() > ITEM_LIMIT_BYTES {
                    out.push(format!(
                        "{mat}: content of {} bytes served whole, over the item limit",
                        pc.len()
                    ));
                }
            }
            Some(fc) => {
                let cut_ok = pc.len() >= MIN_CUT_BYTES
                    && !fc.is_empty()
                    && pc.starts_with(fc)
                    && fc.len() >= MIN_CUT_BYTES
                    && fc.len() < ITEM_LIMIT_BYTES;
                if !cut_ok {
                    out.push(format!(
                        "{mat}: content: python {} functions {} (only content over the item limit may be cut, to a prefix of at least {MIN_CUT_BYTES} bytes)",
                        show(&p["content"]),
                        show(&f["content"])
                    ));
                } else if status != "incomplete" {
                    out.push(format!("{mat}: content cut to {} of {} bytes but status {status:?}, expected \"incomplete\"", fc.len(), pc.len()));
                }
            }
            None => out.push(format!(
                "{mat}: functions content {} is not a string",
                show(&f["content"])
            )),
        }
        // Rule 3.
        let raw = p["id"].as_str().and_then(|id| rules.raw_messages.get(id));
        compare_nullable(
            "token_count",
            &p["token_count"],
            &f["token_count"],
            raw.map(|r| r.token_count.map(|v| json!(v))),
            &mat,
            out,
        );
        compare_nullable(
            "inference_time_ms",
            &p["inference_time_ms"],
            &f["inference_time_ms"],
            raw.map(|r| r.inference_time_ms.map(|v| json!(v))),
            &mat,
            out,
        );
        compare_nullable(
            "model_tag",
            &p["model_tag"],
            &f["model_tag"],
            raw.map(|r| r.model_tag.clone().map(Value::String)),
            &mat,
            out,
        );
        // Rules 2 and 8.
        let want = eff.messages.get(i).copied().flatten();
        let got = instant(&f["created_at"]);
        if want.is_none() || want != got {
            out.push(format!(
                "{mat}: created_at: python {} (expected {}) functions {}",
                show(&p["created_at"]),
                want.map_or_else(|| "underivable".to_owned(), fmt_micros),
                show(&f["created_at"])
            ));
        }
    }
    for (i, f) in fx_msgs.iter().enumerate().skip(py_msgs.len()) {
        out.push(format!("{at} message {i}: only in functions: {}", show(f)));
    }
    for (i, p) in py_msgs.iter().enumerate().skip(fx_msgs.len()) {
        out.push(format!("{at} message {i}: only in python: {}", show(p)));
    }
}

fn compare_list(py: &Value, fx: &Value, rules: &Rules, out: &mut Vec<String>) {
    let empty = Vec::new();
    let py_items = py["items"].as_array().unwrap_or(&empty);
    let fx_items = fx["items"].as_array().unwrap_or(&empty);
    let id_of = |v: &Value| v["id"].as_str().unwrap_or("?").to_owned();
    let mut fx_by_id: HashMap<String, &Value> = HashMap::new();
    for f in fx_items {
        if fx_by_id.insert(id_of(f), f).is_some() {
            out.push(format!(
                "list: conversation {} served twice by the functions",
                id_of(f)
            ));
        }
    }
    let mut py_effective: Vec<(Option<i128>, String)> = Vec::new();
    let mut py_ids = BTreeSet::new();
    for p in py_items {
        let id = id_of(p);
        py_ids.insert(id.clone());
        let eff = rules.python_conversations.get(&id).map(effective);
        let updated = eff
            .as_ref()
            .and_then(|e| e.updated_at)
            .or_else(|| instant(&p["updated_at"]));
        py_effective.push((updated, id.clone()));
        match fx_by_id.get(&id) {
            Some(f) => {
                compare_conversation_fields(p, f, eff.as_ref(), &format!("list item {id}"), out)
            }
            None => out.push(format!(
                "list: conversation {id} ({}) missing from the functions' list",
                show(&p["title"])
            )),
        }
    }
    for f in fx_items {
        if !py_ids.contains(&id_of(f)) {
            out.push(format!(
                "list: conversation {} only in the functions' list",
                show(f)
            ));
        }
    }
    // Rule 9: newest updated_at first; equal instants in any order.
    let fx_times: Vec<Option<i128>> = fx_items.iter().map(|f| instant(&f["updated_at"])).collect();
    for (i, w) in fx_times.windows(2).enumerate() {
        if !matches!((w[0], w[1]), (Some(a), Some(b)) if a >= b) {
            out.push(format!(
                "list: functions' items {i} and {} not newest updated_at first: {} then {}",
                i + 1,
                show(&fx_items[i]["updated_at"]),
                show(&fx_items[i + 1]["updated_at"])
            ));
        }
    }
    py_effective.sort_by_key(|e| std::cmp::Reverse(e.0));
    let groups = |seq: Vec<(Option<i128>, String)>| -> Vec<(Option<i128>, BTreeSet<String>)> {
        let mut out: Vec<(Option<i128>, BTreeSet<String>)> = Vec::new();
        for (t, id) in seq {
            match out.last_mut() {
                Some((lt, set)) if *lt == t => {
                    set.insert(id);
                }
                _ => out.push((t, BTreeSet::from([id]))),
            }
        }
        out
    };
    let want = groups(py_effective);
    let got = groups(
        fx_items
            .iter()
            .map(|f| (instant(&f["updated_at"]), id_of(f)))
            .collect(),
    );
    let want_ids: Vec<&BTreeSet<String>> = want.iter().map(|g| &g.1).collect();
    let got_ids: Vec<&BTreeSet<String>> = got.iter().map(|g| &g.1).collect();
    if want_ids != got_ids {
        out.push(format!(
            "list order: expected (newest first, ties as sets) {want_ids:?}, functions {got_ids:?}"
        ));
    }
}

/// What differs between the Python service's JSON and the functions' JSON, for
/// one user's list (`{"items": [...]}` of every page) or one conversation's GET
/// (with `"messages"`), allowing only the migration's documented differences:
///
/// 1. message ids are re-minted UUIDv7 (the sort key): compared by position;
/// 2. timestamps are compared as instants;
/// 3. NULL `token_count`/`inference_time_ms`/message `model_tag` (Python: 0, 0,
///    "") are served as null;
/// 4. fields only one side has are not compared, but copied messages are
///    `status: "complete"` unless cut (7);
/// 5. a NULL title is "New conversation", a NULL conversation model_tag "default";
/// 6. `system` messages are not copied;
/// 7. content over the item limit is a non-empty prefix with `status: "incomplete"`;
/// 8. NULL message created_at: 1 µs after the message before it (or the
///    conversation's created_at); NULL updated_at: the latest of created_at and
///    the messages'; NULL created_at: updated_at;
/// 9. the list is newest `updated_at` first, equal instants in any order.
pub fn compare(python: &Value, functions: &Value, rules: &Rules) -> Vec<String> {
    let mut out = Vec::new();
    if python.get("items").is_some() {
        compare_list(python, functions, rules, &mut out);
    } else {
        let id = python["id"].as_str().unwrap_or("?");
        let at = format!("conversation {id}");
        let eff = effective(python);
        compare_conversation_fields(python, functions, Some(&eff), &at, &mut out);
        compare_messages(python, functions, &eff, rules, &at, &mut out);
    }
    out
}

/// Python's JSON turned into what the functions should serve under the rules
/// (for developing the comparison without the functions: comparing Python with
/// this must find nothing).
pub fn python_as_functions(python: &Value, rules: &Rules) -> Value {
    let conv = |p: &Value, eff: Option<&Effective>| -> Value {
        let mut c = p.clone();
        if c["title"].is_null() {
            c["title"] = json!("New conversation");
        }
        if c["model_tag"].is_null() {
            c["model_tag"] = json!("default");
        }
        if let Some(e) = eff {
            c["created_at"] = e.created_at.map_or(Value::Null, |t| json!(fmt_micros(t)));
            c["updated_at"] = e.updated_at.map_or(Value::Null, |t| json!(fmt_micros(t)));
        }
        c["is_favorited"] = json!(false);
        c
    };
    if let Some(items) = python["items"].as_array() {
        let mut items: Vec<Value> = items
            .iter()
            .map(|p| {
                let eff = p["id"]
                    .as_str()
                    .and_then(|id| rules.python_conversations.get(id))
                    .map(effective);
                let mut c = conv(p, eff.as_ref());
                if let Some(m) = c.as_object_mut() {
                    m.remove("messages");
                }
                c
            })
            .collect();
        items.sort_by_key(|c| std::cmp::Reverse(instant(&c["updated_at"])));
        return json!({ "items": items, "next_cursor": null });
    }
    let eff = effective(python);
    let mut c = conv(python, Some(&eff));
    let msgs: Vec<Value> = python["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["role"] != "system")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let base = Uuid::now_v7();
    for (i, m) in msgs.iter().enumerate() {
        let mut f = m.clone();
        let mut bytes = *base.as_bytes();
        bytes[14] = (i / 256) as u8;
        bytes[15] = (i % 256) as u8;
        f["id"] = json!(Uuid::from_bytes(bytes).to_string());
        f["created_at"] = eff.messages[i].map_or(Value::Null, |t| json!(fmt_micros(t)));
        if let Some(raw) = m["id"].as_str().and_then(|id| rules.raw_messages.get(id)) {
            f["token_count"] = raw.token_count.map_or(Value::Null, |v| json!(v));
            f["inference_time_ms"] = raw.inference_time_ms.map_or(Value::Null, |v| json!(v));
            f["model_tag"] = raw.model_tag.clone().map_or(Value::Null, Value::String);
        }
        f["status"] = json!("complete");
        let content = m["content"].as_str().unwrap_or_default();
        if content.len() > ITEM_LIMIT_BYTES {
            let mut cut = 350 * 1024;
            while !content.is_char_boundary(cut) {
                cut -= 1;
            }
            f["content"] = json!(&content[..cut]);
            f["status"] = json!("incomplete");
        }
        out.push(f);
    }
    c["messages"] = Value::Array(out);
    c
}

/// Prints every difference, one a line, under a heading.
pub fn report(differences: &[String]) -> String {
    let mut s = format!("{} differences:\n", differences.len());
    for d in differences {
        s.push_str("  ");
        s.push_str(d);
        s.push('\n');
    }
    s
}

/// `path` as a display string (for messages).
pub fn display(path: &Path) -> String {
    path.display().to_string()
}
