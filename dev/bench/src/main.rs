//! `bench`: the speed users feel from the `send` function, on this machine.
//!
//! ```text
//! bench [--sends 40] [--cold-starts 7] [--relay-tokens 5000] [--relay-runs 5]
//!       [--count-sends 10] [--bin-dir target/release] [--moto .tools/venv/bin/moto_server]
//!       [--keep] [--env K=V]...
//! ```
//!
//! Runs the release binaries against its own moto DynamoDB server and mock
//! inference server, and drives `send` the way Lambda does, through a minimal
//! Lambda Runtime API of its own (streaming responses included). Prints cold start
//! (Init Duration), time-to-first-token overhead, relay cost per token, peak
//! memory, binary sizes and DynamoDB requests per send, against the targets.
//! `scripts/bench.sh` builds everything and runs it. Not part of the test suite.

mod http1;
mod procs;
mod proxy;
mod runtime_api;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use samosachaat::api::ChatParams;
use samosachaat::config::InferenceDefaults;
use samosachaat::inference::InferenceRequest;
use samosachaat::prompt::{self, Role, Turn, DEFAULT_TITLE};
use samosachaat::store::Store;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::http1::{Reader, Timeline};
use crate::procs::Proc;
use crate::runtime_api::{Invoked, RuntimeApi};

const PRIVATE_KEY: &str = include_str!("../../../shared/tests/fixtures/jwt-private.pem");
const PUBLIC_KEY: &str = include_str!("../../../shared/tests/fixtures/jwt-public.pem");
const TABLE: &str = "samosachaat-bench";
const API_KEY: &str = "bench-internal-key";
const TOKEN_KEY: &[u8] = b"\"token\"";
const INVOKE_TIMEOUT: Duration = Duration::from_secs(60);
const WARMUP_SENDS: usize = 5;
const SMALL_TOKENS: usize = 5;

// The issue's targets.
const TARGET_OVERHEAD_MS: f64 = 4.0;
const TARGET_RELAY_US: f64 = 5.0;
const TARGET_INIT_MS: f64 = 30.0;
const TARGET_PEAK_MIB: f64 = 32.0;

type Res<T> = Result<T, String>;

struct Args {
    sends: usize,
    cold_starts: usize,
    relay_tokens: usize,
    relay_runs: usize,
    count_sends: usize,
    bin_dir: PathBuf,
    moto: PathBuf,
    keep: bool,
    /// Extra environment of the function (`--env K=V`), for experiments.
    env: Vec<(String, String)>,
}

fn parse_args() -> Res<Args> {
    let root = workspace_root();
    let mut a = Args {
        sends: 40,
        cold_starts: 7,
        relay_tokens: 5000,
        relay_runs: 5,
        count_sends: 10,
        bin_dir: root.join("target/release"),
        moto: root.join(".tools/venv/bin/moto_server"),
        keep: false,
        env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|_| format!("not a number: {v}"));
        match flag.as_str() {
            "--sends" => a.sends = num(value()?)?.max(1),
            "--cold-starts" => a.cold_starts = num(value()?)?.max(1),
            "--relay-tokens" => a.relay_tokens = num(value()?)?.max(SMALL_TOKENS + 2),
            "--relay-runs" => a.relay_runs = num(value()?)?.max(1),
            "--count-sends" => a.count_sends = num(value()?)?.max(1),
            "--bin-dir" => a.bin_dir = PathBuf::from(value()?),
            "--moto" => a.moto = PathBuf::from(value()?),
            "--keep" => a.keep = true,
            "--env" => {
                let kv = value()?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--env {kv}: expected K=V"))?;
                a.env.push((k.to_owned(), v.to_owned()));
            }
            "-h" | "--help" => {
                return Err(
                    "usage: bench [--sends N] [--cold-starts N] [--relay-tokens N] \
                     [--relay-runs N] [--count-sends N] [--bin-dir DIR] [--moto PATH] [--keep] \
                     [--env K=V]..."
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn workspace_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("samosachaat-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("bench: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let result = run(&args, &dir).await;
    match result {
        Ok(report) => {
            print!("{report}");
            if !args.keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: {e}\n(logs of the processes in {})", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// What the benchmark shares between its phases.
struct Bench {
    store: Store,
    user: Uuid,
    token: String,
    mock: SocketAddr,
    control: reqwest::Client,
    seq: usize,
    send_bin: PathBuf,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    /// Whether sends carry an `Idempotency-Key` header (a unique one each).
    idempotency_key: bool,
}

/// One send as the browser would feel it.
struct SendRun {
    invoked: Invoked,
    /// Arrival of each token event at the Runtime API.
    tokens: Vec<Instant>,
    /// Arrival of the final `done`.
    done: Instant,
}

impl SendRun {
    fn ttft(&self) -> Duration {
        self.tokens[0] - self.invoked.released
    }
}

impl Bench {
    fn marker(&mut self, what: &str) -> String {
        self.seq += 1;
        format!("bench-{what}-{:05}", self.seq)
    }

    async fn scenario(&self, marker: &str, tokens: usize) -> Res<()> {
        let tokens: Vec<String> = (0..tokens).map(|i| format!(" w{i}")).collect();
        let resp = self
            .control
            .post(format!("http://{}/__mock/scenarios", self.mock))
            .json(&json!({ "match": marker, "tokens": tokens, "token_delay_ms": 0 }))
            .send()
            .await
            .map_err(|e| format!("mock scenario: {e}"))?;
        if resp.status().as_u16() != 201 {
            return Err(format!("mock scenario: status {}", resp.status()));
        }
        Ok(())
    }

    async fn reset_mock(&self) -> Res<()> {
        self.control
            .post(format!("http://{}/__mock/reset", self.mock))
            .send()
            .await
            .map_err(|e| format!("mock reset: {e}"))?;
        Ok(())
    }

    fn function_env(&self, runtime_api: SocketAddr) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.insert("AWS_LAMBDA_RUNTIME_API".into(), runtime_api.to_string());
        env
    }

    fn start_function(&self, name: &str, env: &BTreeMap<String, String>) -> Res<(Proc, Instant)> {
        procs::function(&self.send_bin, &self.dir, name, env)
    }

    /// The direct exchange with the mock: a fresh connection (the mock closes
    /// every one, as it does for the function), the same request body the
    /// function sends, read by the same reader the Runtime API uses.
    async fn direct(&mut self, tokens: usize) -> Res<(Instant, Vec<Instant>)> {
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
        let mut out = format!(
            "POST /generate HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             accept: text/event-stream\r\nx-internal-api-key: {API_KEY}\r\ncontent-length: {}\r\n\r\n",
            self.mock,
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);

        let started = Instant::now();
        let stream = TcpStream::connect(self.mock)
            .await
            .map_err(|e| format!("direct connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (r, mut w) = stream.into_split();
        w.write_all(&out)
            .await
            .map_err(|e| format!("direct write: {e}"))?;
        let mut reader = Reader::new(r);
        let head = reader
            .head()
            .await
            .map_err(|e| format!("direct read: {e}"))?
            .ok_or("direct: connection closed")?;
        if head.start[1] != "200" {
            return Err(format!("direct: status {}", head.start[1]));
        }
        let body = reader
            .response_body(&head, |_, _| {})
            .await
            .map_err(|e| format!("direct body: {e}"))?;
        let timeline = Timeline::from_chunks(&body.chunks);
        let times = timeline.times_of(TOKEN_KEY, 0);
        if times.len() != tokens {
            return Err(format!(
                "direct: {} tokens instead of {tokens}",
                times.len()
            ));
        }
        Ok((started, times))
    }

    fn event(&self, conversation: Uuid, content: &str, key: Option<&str>) -> Vec<u8> {
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
    async fn send(&mut self, api: &RuntimeApi, tokens: usize) -> Res<SendRun> {
        let marker = self.marker("send");
        self.scenario(&marker, tokens).await?;
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
        // moto's Query time grows with the size of the table (it is not O(result)
        // like DynamoDB's), so the table is kept to the conversation at hand.
        self.store
            .delete_conversation(self.user, conversation.id)
            .await
            .map_err(|e| format!("delete conversation: {e}"))?;
        Ok(SendRun {
            invoked,
            tokens: tokens_at,
            done: done[0],
        })
    }
}

async fn run(args: &Args, dir: &Path) -> Res<String> {
    for bin in ["send", "mock-inference"] {
        if !args.bin_dir.join(bin).is_file() {
            return Err(format!(
                "{} missing: build first (cargo build --release -p send -p mock-inference), or run scripts/bench.sh",
                args.bin_dir.join(bin).display()
            ));
        }
    }
    eprintln!("bench: starting moto DynamoDB server and mock inference");
    let (_moto, moto_addr) = procs::moto(&args.moto, dir).await?;
    let (_mock, mock_addr) =
        procs::mock_inference(&args.bin_dir.join("mock-inference"), dir, API_KEY).await?;

    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{moto_addr}"))
        .credentials_provider(Credentials::new("local", "local", None, None, "bench"))
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(conf);
    samosachaat::schema::create_table(&client, TABLE)
        .await
        .map_err(|e| format!("create table: {e}"))?;
    let store = Store::new(client, TABLE);
    let user = Uuid::new_v4();
    let token = mint(user)?;

    let env: BTreeMap<String, String> = [
        ("AWS_LAMBDA_FUNCTION_NAME", "send".to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2025/11/25/[$LATEST]bench".into(),
        ),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/send".into()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
        ("TABLE_NAME", TABLE.into()),
        ("INFERENCE_URL", format!("http://{mock_addr}/generate")),
        ("INTERNAL_API_KEY", API_KEY.into()),
        ("JWT_PUBLIC_KEY", PUBLIC_KEY.into()),
        ("ALLOWED_ORIGINS", "http://localhost:3000".into()),
        ("AWS_ENDPOINT_URL_DYNAMODB", format!("http://{moto_addr}")),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "local".into()),
        ("AWS_SECRET_ACCESS_KEY", "local".into()),
        ("AWS_SESSION_TOKEN", "local".into()),
        ("TZ", ":UTC".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(args.env.iter().cloned())
    .collect();

    let mut b = Bench {
        store,
        user,
        token,
        mock: mock_addr,
        control: reqwest::Client::new(),
        seq: 0,
        send_bin: args.bin_dir.join("send"),
        dir: dir.to_owned(),
        env,
        idempotency_key: false,
    };

    // The floor: one Query like the function's, from here.
    let floor = query_floor(&b).await?;

    eprintln!("bench: {} cold starts", args.cold_starts);
    let cold = cold_starts(&mut b, args.cold_starts).await?;

    eprintln!(
        "bench: {} sends (+{WARMUP_SENDS} warm-up) and {} relays of {} tokens",
        args.sends, args.relay_runs, args.relay_tokens
    );
    let warm = warm_runs(&mut b, args).await?;

    eprintln!(
        "bench: 2 x {} sends (without, with Idempotency-Key) through DynamoDB and inference proxies",
        args.count_sends
    );
    b.reset_mock().await?;
    let counts = count_requests(&mut b, moto_addr, args.count_sends).await?;

    let sizes: Vec<(String, Option<u64>)> = ["send", "regenerate", "conversations"]
        .iter()
        .map(|n| {
            let size = std::fs::metadata(args.bin_dir.join(n))
                .ok()
                .map(|m| m.len());
            ((*n).to_owned(), size)
        })
        .collect();

    // The same after the runs (moto's Query is slower on a larger table; each
    // send deletes its conversation, so this should match the first).
    let floor_after = query_floor(&b).await?;

    Ok(report(
        args,
        [&floor, &floor_after],
        &cold,
        &warm,
        &counts,
        &sizes,
    ))
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

/// The function's one Query before the upstream, issued from the benchmark.
async fn query_floor(b: &Bench) -> Res<Vec<f64>> {
    let conversation = b
        .store
        .create_conversation(b.user, DEFAULT_TITLE, "default")
        .await
        .map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    for i in 0..35 {
        let t = Instant::now();
        b.store
            .load_chat(b.user, conversation.id, 51)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("floor: conversation not found")?;
        if i >= 5 {
            times.push(ms(t.elapsed()));
        }
    }
    b.store
        .delete_conversation(b.user, conversation.id)
        .await
        .map_err(|e| e.to_string())?;
    Ok(times)
}

struct Cold {
    init_ms: Vec<f64>,
    first_ttft_ms: Vec<f64>,
    hwm_kb: Vec<u64>,
}

async fn cold_starts(b: &mut Bench, n: usize) -> Res<Cold> {
    let mut cold = Cold {
        init_ms: Vec::new(),
        first_ttft_ms: Vec::new(),
        hwm_kb: Vec::new(),
    };
    for i in 0..n {
        let api = RuntimeApi::start().await.map_err(|e| e.to_string())?;
        let env = b.function_env(api.addr);
        let (proc, started) = b.start_function(&format!("send-cold-{i}"), &env)?;
        let polled = api.poll(Duration::from_secs(20)).await?;
        cold.init_ms.push(ms(polled - started));
        let run = b.send(&api, SMALL_TOKENS).await?;
        cold.first_ttft_ms.push(ms(run.ttft()));
        cold.hwm_kb
            .push(procs::status_kb(proc.pid(), "VmHWM").unwrap_or(0));
        drop(proc);
    }
    Ok(cold)
}

struct Warm {
    direct_ttft_ms: Vec<f64>,
    send_ttft_ms: Vec<f64>,
    overhead_ms: Vec<f64>,
    small_cpu_us: Vec<f64>,
    small_duration_ms: Vec<f64>,
    relay_direct_ms: Vec<f64>,
    relay_send_ms: Vec<f64>,
    relay_send_done_ms: Vec<f64>,
    relay_cpu_us: Vec<f64>,
    relay_tokens: usize,
    hwm_kb: u64,
    rss_kb: u64,
}

async fn warm_runs(b: &mut Bench, args: &Args) -> Res<Warm> {
    let api = RuntimeApi::start().await.map_err(|e| e.to_string())?;
    let env = b.function_env(api.addr);
    let (proc, _) = b.start_function("send-warm", &env)?;
    let pid = proc.pid();
    api.poll(Duration::from_secs(20)).await?;
    let mut w = Warm {
        direct_ttft_ms: Vec::new(),
        send_ttft_ms: Vec::new(),
        overhead_ms: Vec::new(),
        small_cpu_us: Vec::new(),
        small_duration_ms: Vec::new(),
        relay_direct_ms: Vec::new(),
        relay_send_ms: Vec::new(),
        relay_send_done_ms: Vec::new(),
        relay_cpu_us: Vec::new(),
        relay_tokens: args.relay_tokens,
        hwm_kb: 0,
        rss_kb: 0,
    };
    for i in 0..WARMUP_SENDS + args.sends {
        let (started, times) = b.direct(SMALL_TOKENS).await?;
        let direct = ms(times[0] - started);
        let cpu = procs::cpu_ns(pid).unwrap_or(0);
        let run = b.send(&api, SMALL_TOKENS).await?;
        let cpu = procs::cpu_ns(pid).unwrap_or(0).saturating_sub(cpu);
        if i < WARMUP_SENDS {
            continue;
        }
        let send = ms(run.ttft());
        w.direct_ttft_ms.push(direct);
        w.send_ttft_ms.push(send);
        w.overhead_ms.push(send - direct);
        w.small_cpu_us.push(cpu as f64 / 1000.0);
        w.small_duration_ms
            .push(ms(run.invoked.finished - run.invoked.released));
    }
    b.reset_mock().await?;
    let n = args.relay_tokens;
    for _ in 0..args.relay_runs {
        let (_, times) = b.direct(n).await?;
        w.relay_direct_ms.push(ms(times[n - 1] - times[0]));
        let cpu = procs::cpu_ns(pid).unwrap_or(0);
        let run = b.send(&api, n).await?;
        let cpu = procs::cpu_ns(pid).unwrap_or(0).saturating_sub(cpu);
        w.relay_send_ms.push(ms(run.tokens[n - 1] - run.tokens[0]));
        w.relay_send_done_ms.push(ms(run.done - run.tokens[0]));
        w.relay_cpu_us.push(cpu as f64 / 1000.0);
        b.reset_mock().await?;
    }
    w.hwm_kb = procs::status_kb(pid, "VmHWM").ok_or("no VmHWM")?;
    w.rss_kb = procs::status_kb(pid, "VmRSS").unwrap_or(0);
    drop(proc);
    Ok(w)
}

/// What one send did, seen from the proxies.
struct Counted {
    /// Sent with an `Idempotency-Key`.
    keyed: bool,
    /// Time to first token through the proxies.
    ttft_ms: f64,
    /// Requests started before the function opened its upstream connection.
    before_open: usize,
    /// Requests started before the upstream request's first byte.
    before_request: usize,
    total: usize,
    /// New DynamoDB connections the function opened.
    connections: usize,
    pattern: String,
    /// released → Query sent → Query answered → upstream opened → first token (ms).
    phases: Option<[f64; 4]>,
}

async fn count_requests(b: &mut Bench, moto: SocketAddr, n: usize) -> Res<Vec<Counted>> {
    let ddb = proxy::Proxy::dynamodb(moto)
        .await
        .map_err(|e| e.to_string())?;
    let upstream = proxy::Proxy::connections(b.mock)
        .await
        .map_err(|e| e.to_string())?;
    let api = RuntimeApi::start().await.map_err(|e| e.to_string())?;
    let mut env = b.function_env(api.addr);
    env.insert(
        "AWS_ENDPOINT_URL_DYNAMODB".into(),
        format!("http://{}", ddb.addr),
    );
    env.insert(
        "INFERENCE_URL".into(),
        format!("http://{}/generate", upstream.addr),
    );
    let (proc, _) = b.start_function("send-count", &env)?;
    api.poll(Duration::from_secs(20)).await?;
    let mut out = Vec::new();
    for i in 0..2 * n {
        // The first half without an Idempotency-Key, the second with one.
        b.idempotency_key = i >= n;
        let run = b.send(&api, SMALL_TOKENS).await?;
        let released = run.invoked.released;
        let finished = run.invoked.finished;
        let logged: Vec<_> = ddb
            .since(released)
            .into_iter()
            .filter(|l| l.at <= finished)
            .collect();
        let query_reply = logged
            .iter()
            .position(|l| l.what == "Query")
            .and_then(|i| logged[i..].iter().find(|l| l.what == proxy::REPLY))
            .map(|l| l.at);
        let connections = logged.iter().filter(|l| l.what == proxy::OPEN).count();
        let requests: Vec<_> = logged
            .into_iter()
            .filter(|l| l.what != proxy::REPLY && l.what != proxy::OPEN)
            .collect();
        let up = upstream.since(released);
        let at = |what: &str| up.iter().find(|l| l.what == what).map(|l| l.at);
        let (open, request) = (at("open"), at("request"));
        let count_before = |t: Option<Instant>| {
            requests
                .iter()
                .filter(|l| t.is_none_or(|u| l.at < u))
                .count()
        };
        let mut pattern = String::new();
        let mut marks = [(open, "[upstream opened]"), (request, "[upstream request]")];
        marks.sort_by_key(|m| m.0);
        let mut marks = marks.iter().filter(|m| m.0.is_some()).peekable();
        for l in &requests {
            while let Some(m) = marks.next_if(|m| m.0.is_some_and(|t| t <= l.at)) {
                let _ = write!(pattern, "{} ", m.1);
            }
            let _ = write!(pattern, "{} ", l.what);
        }
        for m in marks {
            let _ = write!(pattern, "{} ", m.1);
        }
        let phases = match (requests.first(), query_reply, open) {
            (Some(q), Some(r), Some(u)) if q.what == "Query" => Some([
                ms(q.at - released),
                ms(r.saturating_duration_since(q.at)),
                ms(u.saturating_duration_since(r)),
                ms(run.tokens[0].saturating_duration_since(u)),
            ]),
            _ => None,
        };
        out.push(Counted {
            keyed: b.idempotency_key,
            ttft_ms: ms(run.ttft()),
            before_open: count_before(open),
            before_request: count_before(request),
            total: requests.len(),
            connections,
            pattern: pattern.trim().to_owned(),
            phases,
        });
    }
    b.idempotency_key = false;
    drop(proc);
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// Nearest-rank percentile.
fn pct(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn machine() -> (String, usize) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    (cpu, n)
}

fn report(
    args: &Args,
    floor: [&[f64]; 2],
    cold: &Cold,
    warm: &Warm,
    counts: &[Counted],
    sizes: &[(String, Option<u64>)],
) -> String {
    let (cpu, nproc) = machine();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut o = String::new();
    let _ = writeln!(o, "samosaChaat send benchmark");
    let _ = writeln!(o, "date:    {date}");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let _ = writeln!(
        o,
        "machine: nproc {nproc}, {cpu}, load average {} (other work on the machine inflates the times)",
        load.join(" ")
    );
    let _ = writeln!(
        o,
        "driver:  the benchmark's own Lambda Runtime API on 127.0.0.1 (streaming responses), \
         release binaries from {}",
        args.bin_dir.display()
    );
    let _ = writeln!(
        o,
        "         moto_server (DynamoDB), mock-inference (release, token_delay_ms 0); \
         each send on a fresh conversation"
    );
    if !args.env.is_empty() {
        let extra: Vec<String> = args.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            o,
            "         extra function environment: {}",
            extra.join(" ")
        );
    }
    let _ = writeln!(o);

    let init = median(&cold.init_ms);
    let over50 = median(&warm.overhead_ms);
    let over95 = pct(&warm.overhead_ms, 95.0);
    let n = warm.relay_tokens;
    let relay_wall: Vec<f64> = warm
        .relay_send_ms
        .iter()
        .zip(&warm.relay_direct_ms)
        .map(|(s, d)| (s - d) * 1000.0 / (n - 1) as f64)
        .collect();
    let relay_us = median(&relay_wall);
    let relay_cpu_us =
        (median(&warm.relay_cpu_us) - median(&warm.small_cpu_us)) / (n - SMALL_TOKENS) as f64;
    let peak_mib = warm.hwm_kb as f64 / 1024.0;
    let (keyed, plain): (Vec<&Counted>, Vec<&Counted>) = counts.iter().partition(|c| c.keyed);
    let of = |v: &[&Counted], f: fn(&Counted) -> usize| v.iter().map(|c| f(c)).collect::<Vec<_>>();
    let befores = of(&plain, |c| c.before_open);
    let all_one_before = befores.iter().all(|&b| b == 1);
    let range = |v: &[usize]| {
        let (lo, hi) = (
            v.iter().min().copied().unwrap_or(0),
            v.iter().max().copied().unwrap_or(0),
        );
        if lo == hi {
            format!("{lo} (all {} sends)", v.len())
        } else {
            let ones = v.iter().filter(|&&x| x == lo).count();
            format!("{lo}..{hi} ({ones}/{} sends at {lo})", v.len())
        }
    };

    let _ = writeln!(o, "{:<52} {:>22} {:>12}", "figure", "measured", "target");
    let mut row = |name: &str, value: String, target: &str, ok: Option<bool>| {
        let _ = writeln!(
            o,
            "{name:<52} {value:>22} {target:>12}  {}",
            ok.map(verdict).unwrap_or("")
        );
    };
    row(
        &format!(
            "cold start: Init Duration, median of {}",
            cold.init_ms.len()
        ),
        format!("{init:.1} ms"),
        "<= 30 ms",
        Some(init <= TARGET_INIT_MS),
    );
    row(
        &format!(
            "TTFT overhead p50 (send - direct, {} sends)",
            warm.overhead_ms.len()
        ),
        format!("{over50:.2} ms"),
        "<= 4 ms",
        Some(over50 <= TARGET_OVERHEAD_MS),
    );
    row("TTFT overhead p95", format!("{over95:.2} ms"), "", None);
    row(
        &format!(
            "relay cost per token, wall ({n} tokens, median of {})",
            relay_wall.len()
        ),
        format!("{relay_us:.2} µs"),
        "<= 5 µs",
        Some(relay_us <= TARGET_RELAY_US),
    );
    row(
        "relay cost per token, function CPU",
        format!("{relay_cpu_us:.2} µs"),
        "",
        None,
    );
    row(
        "peak memory VmHWM (after all warm runs)",
        format!("{peak_mib:.1} MiB"),
        "<= 32 MiB",
        Some(peak_mib <= TARGET_PEAK_MIB),
    );
    row(
        "DynamoDB requests before the upstream call opens",
        range(&befores),
        "exactly 1",
        Some(all_one_before),
    );
    row(
        "  ... before the upstream request's first byte",
        range(&of(&plain, |c| c.before_request)),
        "",
        None,
    );
    row(
        "DynamoDB requests per send, total",
        range(&of(&plain, |c| c.total)),
        "",
        None,
    );
    row(
        "DynamoDB connections opened per send",
        range(&of(&plain, |c| c.connections)),
        "",
        None,
    );
    row(
        "with Idempotency-Key: requests before upstream opens",
        range(&of(&keyed, |c| c.before_open)),
        "",
        None,
    );
    row(
        "with Idempotency-Key: requests per send, total",
        range(&of(&keyed, |c| c.total)),
        "",
        None,
    );
    for (name, size) in sizes {
        row(
            &format!("release binary size: {name}"),
            size.map_or("missing".into(), |s| {
                format!("{:.1} MiB ({s} B)", s as f64 / 1024.0 / 1024.0)
            }),
            "",
            None,
        );
    }

    let _ = writeln!(o);
    let _ = writeln!(o, "details (ms unless noted)");
    let line = |o: &mut String, name: &str, v: &[f64]| {
        let _ = writeln!(
            o,
            "  {name:<50} p50 {:>8.3}  p95 {:>8.3}  min {:>8.3}  max {:>8.3}  (n {})",
            median(v),
            pct(v, 95.0),
            pct(v, 0.0),
            pct(v, 100.0),
            v.len()
        );
    };
    line(
        &mut o,
        "TTFT direct (mock, fresh connection)",
        &warm.direct_ttft_ms,
    );
    line(
        &mut o,
        "TTFT through send (event released -> token)",
        &warm.send_ttft_ms,
    );
    line(
        &mut o,
        "TTFT overhead (paired send - direct)",
        &warm.overhead_ms,
    );
    let _ = writeln!(
        o,
        "  {:<50} {:.3}",
        "TTFT overhead as p50(send) - p50(direct)",
        median(&warm.send_ttft_ms) - median(&warm.direct_ttft_ms)
    );
    line(
        &mut o,
        "one DynamoDB Query from the bench (the floor)",
        floor[0],
    );
    line(&mut o, "  the same after all the runs", floor[1]);
    line(
        &mut o,
        "send duration, 5 tokens (released -> end)",
        &warm.small_duration_ms,
    );
    line(
        &mut o,
        "function CPU per 5-token send (µs)",
        &warm.small_cpu_us,
    );
    line(&mut o, "cold start Init Duration", &cold.init_ms);
    line(
        &mut o,
        "TTFT of the first send after a cold start",
        &cold.first_ttft_ms,
    );
    let cold_over: Vec<f64> = cold
        .first_ttft_ms
        .iter()
        .map(|t| t - median(&warm.direct_ttft_ms))
        .collect();
    line(&mut o, "  its overhead over the direct p50", &cold_over);
    line(
        &mut o,
        &format!("relay {n} tokens direct, first -> last token"),
        &warm.relay_direct_ms,
    );
    line(
        &mut o,
        &format!("relay {n} tokens via send, first -> last token"),
        &warm.relay_send_ms,
    );
    line(
        &mut o,
        &format!("relay {n} tokens via send, first token -> done"),
        &warm.relay_send_done_ms,
    );
    line(
        &mut o,
        &format!("function CPU per {n}-token send (µs)"),
        &warm.relay_cpu_us,
    );
    let _ = writeln!(
        o,
        "  {:<50} VmHWM {:.1} MiB after one send (median of cold starts), VmRSS {:.1} MiB after the warm runs",
        "memory",
        median(&cold.hwm_kb.iter().map(|&k| k as f64 / 1024.0).collect::<Vec<_>>()),
        warm.rss_kb as f64 / 1024.0
    );
    let phases: Vec<[f64; 4]> = plain.iter().filter_map(|c| c.phases).collect();
    if !phases.is_empty() {
        let _ = writeln!(
            o,
            "  where a send's time goes (through the proxies, {} sends):",
            phases.len()
        );
        let names = [
            "  event released -> Query sent",
            "  Query sent -> its reply starts (moto)",
            "  Query reply -> upstream connection opened",
            "  upstream opened -> first token at Runtime API",
        ];
        for (k, name) in names.iter().enumerate() {
            let v: Vec<f64> = phases.iter().map(|p| p[k]).collect();
            line(&mut o, name, &v);
        }
    }
    let ttft = |v: &[&Counted]| v.iter().map(|c| c.ttft_ms).collect::<Vec<f64>>();
    line(
        &mut o,
        "TTFT through the proxies, no Idempotency-Key",
        &ttft(&plain),
    );
    line(
        &mut o,
        "TTFT through the proxies, with Idempotency-Key",
        &ttft(&keyed),
    );
    let mut patterns: BTreeMap<String, usize> = BTreeMap::new();
    for c in counts {
        let key = if c.keyed { "(Idempotency-Key) " } else { "" };
        *patterns.entry(format!("{key}{}", c.pattern)).or_default() += 1;
    }
    let _ = writeln!(o, "  DynamoDB requests per send, in order of arrival:");
    for (p, k) in patterns {
        let _ = writeln!(o, "    {k:>3} x  {p}");
    }
    o
}
