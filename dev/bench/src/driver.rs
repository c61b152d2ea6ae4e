//! The driver: the processes a run needs (DynamoDB Local, the mock upstream, the function
//! under a share), and one send or one direct upstream call, timed the same way.
//! Scenarios (`scenarios/`) are built from these.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use samosachaat::adapters::store::{
    limit_pk, HeldAnswer, Store, Windows, DEFAULT_TITLE, LIMITS_SK,
};
use samosachaat::adapters::upstream::{ChatParams, InferenceRequest, Turn};
use samosachaat::domain::prompt;
use samosachaat::foundation::config::InferenceDefaults;
use samosachaat::foundation::role::Role;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::http1::{Reader, Timeline};
use crate::procs::{self, Proc};
use crate::runtime_api::{Invoked, RuntimeApi};
use crate::share::Cgroup;
use crate::stats::ms;

const PRIVATE_KEY: &str = include_str!("../../../shared/tests/fixtures/jwt-private.pem");
const PUBLIC_KEY: &str = include_str!("../../../shared/tests/fixtures/jwt-public.pem");
const TABLE: &str = "samosachaat-bench";
/// The upstream's key: the one the Python peer's launcher gives its service, so
/// that both talk to the same mock process.
pub const API_KEY: &str = "peer-internal-key";
pub const TOKEN_KEY: &[u8] = b"\"token\"";
const INVOKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a (throttled) function may take to poll for its first event.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Sends before the measured ones in each warm process.
pub const WARMUP_SENDS: usize = 5;
/// Tokens of the answer of an ordinary send.
pub const SMALL_TOKENS: usize = 5;

pub type Res<T> = Result<T, String>;

/// What the scenarios share: the table, the user, the mock upstream, the
/// function's binary and configuration.
pub struct Bench {
    pub store: Store,
    /// The same client as `store`'s, for the benchmark's own clean-up.
    dynamodb_client: aws_sdk_dynamodb::Client,
    /// The user of the latest send (each send has a user of its own).
    pub user: Uuid,
    token: String,
    pub mock: SocketAddr,
    /// Where the function and the benchmark reach DynamoDB (DynamoDB Local).
    pub dynamodb: SocketAddr,
    control: reqwest::Client,
    seq: usize,
    send_bin: PathBuf,
    pub dir: PathBuf,
    env: BTreeMap<String, String>,
    /// Whether sends carry an `Idempotency-Key` header (a unique one each).
    pub idempotency_key: bool,
    /// Set while a function runs under a memory size: its
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`.
    pub memory_mb: Option<u32>,
    // Kept alive for the whole run.
    _dynamodb: Proc,
    _mock: Proc,
}

/// One send as the browser would feel it.
pub struct SendRun {
    pub invoked: Invoked,
    /// Arrival of each token event at the Runtime API.
    pub tokens: Vec<Instant>,
    /// Arrival of the final `done`.
    pub done: Instant,
}

impl SendRun {
    pub fn ttft(&self) -> Duration {
        self.tokens[0] - self.invoked.released
    }
}

/// A function process under test and its Runtime API.
pub struct Function {
    pub api: RuntimeApi,
    pub proc: Proc,
    pub started: Instant,
}

impl Bench {
    /// Starts DynamoDB Local (installed in `dynamodb_local`) and the mock
    /// upstream, and creates the table.
    pub async fn start(
        bin_dir: &Path,
        dynamodb_local: &Path,
        dir: &Path,
        extra: &[(String, String)],
    ) -> Res<Self> {
        let (dynamodb_proc, dynamodb) = procs::dynamodb_local(dynamodb_local, dir).await?;
        let (mock_proc, mock) =
            procs::mock_inference(&bin_dir.join("mock-inference"), dir, API_KEY).await?;
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://{dynamodb}"))
            .credentials_provider(Credentials::new("local", "local", None, None, "bench"))
            .build();
        let client = aws_sdk_dynamodb::Client::from_conf(conf);
        samosachaat::adapters::store::schema::create_table(&client, TABLE)
            .await
            .map_err(|e| format!("create table: {e}"))?;
        let user = Uuid::new_v4();
        let env = [
            ("AWS_LAMBDA_FUNCTION_NAME", "send".to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2025/11/25/[$LATEST]bench".into(),
            ),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/send".into()),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
            ("TABLE_NAME", TABLE.into()),
            ("INFERENCE_URL", format!("http://{mock}/generate")),
            ("INTERNAL_API_KEY", API_KEY.into()),
            ("JWT_PUBLIC_KEY", PUBLIC_KEY.into()),
            ("ALLOWED_ORIGINS", "http://localhost:3000".into()),
            ("AWS_ENDPOINT_URL_DYNAMODB", format!("http://{dynamodb}")),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "local".into()),
            ("AWS_SECRET_ACCESS_KEY", "local".into()),
            ("AWS_SESSION_TOKEN", "local".into()),
            ("TZ", ":UTC".into()),
            // The live-answer scenario's user sends many requests in a minute:
            // limits high enough never to refuse it, checked (and paid for) on
            // every send all the same.
            ("RATE_LIMIT_PER_MINUTE", "1000".into()),
            ("DAILY_MESSAGE_QUOTA", "10000000".into()),
            ("MAX_CONCURRENT_ANSWERS", "100".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(extra.iter().cloned())
        .collect();
        Ok(Self {
            store: Store::new(client.clone(), TABLE),
            dynamodb_client: client,
            user,
            token: mint(user)?,
            mock,
            dynamodb,
            control: reqwest::Client::new(),
            seq: 0,
            send_bin: bin_dir.join("send"),
            dir: dir.to_owned(),
            env,
            idempotency_key: false,
            memory_mb: None,
            _dynamodb: dynamodb_proc,
            _mock: mock_proc,
        })
    }

    pub fn marker(&mut self, what: &str) -> String {
        self.seq += 1;
        format!("bench-{what}-{:05}", self.seq)
    }

    /// Registers an answer of `tokens` tokens for the next request containing `marker`.
    pub async fn scenario(&self, marker: &str, tokens: usize) -> Res<()> {
        self.paced_scenario(marker, tokens, 0).await
    }

    /// [`Bench::scenario`] with `delay_ms` between tokens.
    pub async fn paced_scenario(&self, marker: &str, tokens: usize, delay_ms: u64) -> Res<()> {
        let tokens: Vec<String> = (0..tokens).map(|i| format!(" w{i}")).collect();
        let resp = self
            .control
            .post(format!("http://{}/__mock/scenarios", self.mock))
            .json(&json!({ "match": marker, "tokens": tokens, "token_delay_ms": delay_ms }))
            .send()
            .await
            .map_err(|e| format!("mock scenario: {e}"))?;
        if resp.status().as_u16() != 201 {
            return Err(format!("mock scenario: status {}", resp.status()));
        }
        Ok(())
    }

    /// Forgets the mock's recorded requests (they grow with long answers).
    pub async fn reset_mock(&self) -> Res<()> {
        self.control
            .post(format!("http://{}/__mock/reset", self.mock))
            .send()
            .await
            .map_err(|e| format!("mock reset: {e}"))?;
        Ok(())
    }

    /// Starts the function process (in `cgroup` when given) with its own
    /// Runtime API; `env` overrides the configuration. Does not wait for init.
    pub async fn start_function(
        &self,
        name: &str,
        cgroup: Option<&Cgroup>,
        env: &[(&str, String)],
    ) -> Res<Function> {
        let api = RuntimeApi::start().await.map_err(|e| e.to_string())?;
        let mut all = self.env.clone();
        all.insert("AWS_LAMBDA_RUNTIME_API".into(), api.addr.to_string());
        all.insert(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
            self.memory_mb.unwrap_or(256).to_string(),
        );
        for (k, v) in env {
            all.insert((*k).to_owned(), v.clone());
        }
        let join = cgroup
            .map(Cgroup::procs_files)
            .transpose()?
            .unwrap_or_default();
        let (proc, started) = procs::function(&self.send_bin, &self.dir, name, &all, join)?;
        Ok(Function { api, proc, started })
    }

    /// The direct exchange with the mock: a fresh connection (the mock closes
    /// every one, as it does for the function), the same request body the
    /// function sends, read by the same reader the Runtime API uses.
    pub async fn direct(&mut self, tokens: usize) -> Res<(Instant, Vec<Instant>)> {
        let marker = self.marker("direct");
        self.scenario(&marker, tokens).await?;
        let turns = [Turn {
            role: Role::User,
            content: format!("benchmark message {marker}"),
        }];
        let request = InferenceRequest::new(
            prompt::with_system_prompt(&turns, false),
            &ChatParams::default(),
            &InferenceDefaults {
                temperature: 0.8,
                max_tokens: 1024,
                top_k: 50,
            },
        );
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let headers = format!("x-internal-api-key: {API_KEY}\r\naccept: text/event-stream\r\n");
        let (started, times) = post_stream(self.mock, "/generate", &headers, &body).await?;
        if times.len() != tokens {
            return Err(format!(
                "direct: {} tokens instead of {tokens}",
                times.len()
            ));
        }
        Ok((started, times))
    }

    /// The event of a send of `content` to `conversation`.
    pub fn event(&self, conversation: Uuid, content: &str, key: Option<&str>) -> Vec<u8> {
        let path = format!("/api/conversations/{conversation}/messages");
        let now = time::OffsetDateTime::now_utc();
        let mut event = json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": {
                "authorization": format!("Bearer {}", self.token),
                "content-type": "application/json",
                "accept": "text/event-stream",
                "host": "bench.lambda-url.us-east-1.on.aws",
                "origin": "http://localhost:3000",
                "user-agent": "samosachaat-bench",
                "x-forwarded-for": "127.0.0.1",
                "x-forwarded-port": "443",
                "x-forwarded-proto": "https",
            },
            "requestContext": {
                "accountId": "anonymous",
                "apiId": "bench",
                "domainName": "bench.lambda-url.us-east-1.on.aws",
                "domainPrefix": "bench",
                "http": {
                    "method": "POST",
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "127.0.0.1",
                    "userAgent": "samosachaat-bench",
                },
                "requestId": Uuid::new_v4().to_string(),
                "routeKey": "$default",
                "stage": "$default",
                "time": "25/Nov/2025:00:00:00 +0000",
                "timeEpoch": now.unix_timestamp() * 1000,
            },
            "body": json!({ "content": content }).to_string(),
            "isBase64Encoded": false,
        });
        if let Some(key) = key {
            event["headers"]["idempotency-key"] = json!(key);
        }
        event.to_string().into_bytes()
    }

    /// One send of a fresh conversation whose answer has `tokens` tokens; returns
    /// once the function polls again (idle).
    pub async fn send(&mut self, api: &RuntimeApi, tokens: usize) -> Res<SendRun> {
        let marker = self.marker("send");
        self.scenario(&marker, tokens).await?;
        // A user of its own for each send, so the limit record is the size a
        // real user's is (a few request ids in the minute's set), not one
        // user's minute holding every request of the run, which inflated its
        // write units.
        self.user = Uuid::new_v4();
        self.token = mint(self.user)?;
        let conversation = self
            .store
            .create_conversation(self.user, DEFAULT_TITLE, "default")
            .await
            .map_err(|e| format!("create conversation: {e}"))?;
        let key = self.idempotency_key.then(|| marker.clone());
        let event = self.event(
            conversation.id,
            &format!("benchmark message {marker}"),
            key.as_deref(),
        );
        let invoked = api.invoke(event, INVOKE_TIMEOUT).await?;
        api.poll(INVOKE_TIMEOUT).await?;
        let (prelude, timeline, start) = invoked.stream()?;
        if std::env::var_os("BENCH_TRACE").is_some() {
            for (at, data) in &invoked.chunks {
                eprintln!(
                    "  +{:8.3} ms  {:?}",
                    ms(*at - invoked.released),
                    String::from_utf8_lossy(&data[..data.len().min(60)])
                );
            }
        }
        let text = || String::from_utf8_lossy(&timeline.bytes[start..]).into_owned();
        if prelude["statusCode"] != 200 {
            return Err(format!("send: prelude {prelude}, body {}", text()));
        }
        let tokens_at = timeline.times_of(TOKEN_KEY, start);
        let done = timeline.times_of(b"\"message_id\"", start);
        if tokens_at.len() != tokens
            || done.len() != 1
            || !timeline.times_of(b"\"error\"", start).is_empty()
        {
            return Err(format!(
                "send: {} tokens of {tokens}, done {}; body starts {:.300}",
                tokens_at.len(),
                done.len(),
                text()
            ));
        }
        // Every send meets the same table: the conversation at hand and nothing
        // of earlier sends.
        self.store
            .delete_conversation(self.user, conversation.id)
            .await
            .map_err(|e| format!("delete conversation: {e}"))?;
        // And so is the user's limit record, or the table would grow by one
        // item a send.
        self.dynamodb_client
            .delete_item()
            .table_name(TABLE)
            .key("pk", AttributeValue::S(limit_pk(self.user)))
            .key("sk", AttributeValue::S(LIMITS_SK.into()))
            .send()
            .await
            .map_err(|e| format!("delete limit record: {e}"))?;
        Ok(SendRun {
            invoked,
            tokens: tokens_at,
            done: done[0],
        })
    }

    /// One sample of the floor under the TTFT overhead: the one DynamoDB round
    /// trip a send waits for before its upstream call, issued from the
    /// benchmark the way the function issues it: the chat Query
    /// (`Store::load_chat`), the live slot's claim (`Store::claim_slot`) and the
    /// limit record's count (`Store::count_request`) side by side, on a fresh
    /// conversation of a fresh user as a send's; the time until the last of the
    /// three answered (ms). What it made is deleted afterwards.
    pub async fn floor_sample(&self) -> Res<f64> {
        let user = Uuid::new_v4();
        let conversation = self
            .store
            .create_conversation(user, DEFAULT_TITLE, "default")
            .await
            .map_err(|e| e.to_string())?;
        let answer = Uuid::now_v7();
        let now = time::OffsetDateTime::now_utc();
        let windows = Windows {
            minute: now.unix_timestamp() / 60,
            day: format!(
                "{:04}-{:02}-{:02}",
                now.year(),
                u8::from(now.month()),
                now.day()
            ),
            per_minute: 1000,
            per_day: 10_000_000,
            concurrent: 100,
            expires_at: now.unix_timestamp() + 2 * 86_400,
        };
        let held = HeldAnswer {
            answer,
            conversation: conversation.id,
        };
        let deadline_ms = samosachaat::foundation::time_fmt::now_ms() + 600_000;
        let t = Instant::now();
        let (chat, claim, count) = tokio::join!(
            self.store.load_chat(user, conversation.id, 51),
            self.store
                .claim_slot(user, conversation.id, answer, deadline_ms),
            self.store.count_request(user, &windows, answer, held),
        );
        let took = ms(t.elapsed());
        chat.map_err(|e| e.to_string())?
            .ok_or("floor: conversation not found")?;
        claim.map_err(|e| e.to_string())?;
        count.map_err(|e| e.to_string())?;
        self.store
            .delete_conversation(user, conversation.id)
            .await
            .map_err(|e| e.to_string())?;
        self.dynamodb_client
            .delete_item()
            .table_name(TABLE)
            .key("pk", AttributeValue::S(limit_pk(user)))
            .key("sk", AttributeValue::S(LIMITS_SK.into()))
            .send()
            .await
            .map_err(|e| format!("delete limit record: {e}"))?;
        Ok(took)
    }
}

/// POSTs `body` to `path` on a fresh connection and reads the streamed answer;
/// returns when the request was started and when each token event arrived.
/// `headers` are extra header lines, each ending in CRLF.
pub async fn post_stream(
    addr: SocketAddr,
    path: &str,
    headers: &str,
    body: &[u8],
) -> Res<(Instant, Vec<Instant>)> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         {headers}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    let started = Instant::now();
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    w.write_all(&out)
        .await
        .map_err(|e| format!("write {addr}: {e}"))?;
    let mut reader = Reader::new(r);
    let head = reader
        .head()
        .await
        .map_err(|e| format!("read {addr}: {e}"))?
        .ok_or_else(|| format!("{addr}: connection closed"))?;
    if head.start[1] != "200" {
        return Err(format!("POST {path}: status {}", head.start[1]));
    }
    let body = reader
        .response_body(&head, |_, _| {})
        .await
        .map_err(|e| format!("body from {addr}: {e}"))?;
    let timeline = Timeline::from_chunks(&body.chunks);
    Ok((started, timeline.times_of(TOKEN_KEY, 0)))
}

fn mint(user: Uuid) -> Res<String> {
    let key = EncodingKey::from_rsa_pem(PRIVATE_KEY.as_bytes()).map_err(|e| e.to_string())?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({
        "sub": user.to_string(),
        "email": "bench@samosachaat.local",
        "name": "Benchmark",
        "iat": now,
        "exp": now + 6 * 3600,
        "iss": "samosachaat-auth",
        "type": "access",
    });
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).map_err(|e| e.to_string())
}
