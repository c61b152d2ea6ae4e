//! The randomized run (`docs/reliability.md`): several users, two clients each,
//! choosing at random among every route of the product over the local stack,
//! with browsers leaving mid-stream, the upstream failing (the mock's
//! scenarios), DynamoDB failing (the fault proxy's rules, scoped to the run's own
//! conversations and users) and one `send` instance killed. Once everything has
//! settled, invariants are checked over what the clients saw and what the table
//! holds; a violation names the seed and the offending ids.
//!
//! Every choice a client makes comes from its own PRNG, seeded from the run's
//! seed and the client's number, so a seed replays the same operations in the
//! same order per client (the interleaving between clients follows timing).
//!
//! What it found, each now a targeted test: a function that dies mid-answer
//! (here the killed instance) and whose conversation is then deleted held its
//! user's generating place until the user's set was next full, and so did a
//! dead answer settled by a read (`e2e_limits`); a regeneration whose final
//! write met a delete ended `conflict` and left its last checkpoint in the
//! deleted partition (`e2e_live`); a delete whose response was lost after
//! DynamoDB applied it left the conversation's messages behind
//! (`e2e_faults_dynamodb`). See `docs/reliability.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::{s, Item, Stack, User};

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub duration: Duration,
    pub users: usize,
    pub clients_per_user: usize,
    /// Kill one `send` instance generating an answer, once, mid-run.
    pub kill: bool,
}

impl Settings {
    /// From the environment: `CHAOS_SEED` (default: from the clock),
    /// `CHAOS_SECS` (default `default_secs`), `CHAOS_USERS` (4),
    /// `CHAOS_CLIENTS` (2 per user), `CHAOS_KILL` (1; 0 keeps every instance).
    pub fn from_env(default_secs: u64) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let seed = var("CHAOS_SEED")
            .map(|v| v.parse().expect("CHAOS_SEED: an unsigned integer"))
            .unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                (nanos as u64) % 1_000_000_000
            });
        let num = |name: &str, default: u64| {
            var(name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}")))
        };
        Settings {
            seed,
            duration: Duration::from_secs(num("CHAOS_SECS", default_secs)),
            users: num("CHAOS_USERS", 4) as usize,
            clients_per_user: num("CHAOS_CLIENTS", 2) as usize,
            kill: num("CHAOS_KILL", 1) != 0,
        }
    }
}

/// SplitMix64: small, seedable, good enough to pick operations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next() % (hi - lo)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let i = self.range(0, items.len() as u64) as usize;
        items.get(i)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Op {
    Send,
    Regenerate,
    Retry,
    Stop,
    Resume,
    Get,
    List,
    Create,
    Rename,
    Delete,
    DynamoFault,
}

const OPS: &[(Op, u64)] = &[
    (Op::Send, 22),
    (Op::Regenerate, 7),
    (Op::Retry, 5),
    (Op::Stop, 9),
    (Op::Resume, 8),
    (Op::Get, 10),
    (Op::List, 5),
    (Op::Create, 5),
    (Op::Rename, 4),
    (Op::Delete, 5),
    (Op::DynamoFault, 6),
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Send => "send",
            Op::Regenerate => "regenerate",
            Op::Retry => "retry",
            Op::Stop => "stop",
            Op::Resume => "resume",
            Op::Get => "get",
            Op::List => "list",
            Op::Create => "create",
            Op::Rename => "rename",
            Op::Delete => "delete",
            Op::DynamoFault => "dynamodb-fault",
        }
    }

    fn choose(rng: &mut Rng) -> Op {
        let total: u64 = OPS.iter().map(|(_, w)| w).sum();
        let mut at = rng.range(0, total);
        for (op, weight) in OPS {
            if at < *weight {
                return *op;
            }
            at -= weight;
        }
        Op::Get
    }
}

/// One stream as a client saw it.
#[derive(Debug, Clone)]
struct Seen {
    op: Op,
    client: usize,
    user: usize,
    conversation: Uuid,
    key: Option<String>,
    /// Milliseconds since the run started: request sent, head received.
    sent_ms: u64,
    head_ms: u64,
    /// Wall clock (Unix seconds) when sent and when the head came.
    sent_unix: i64,
    head_unix: i64,
    /// 0 when no response head came at all.
    status: u16,
    events: Vec<Value>,
    /// The browser left on purpose before the end.
    left: bool,
    /// The body broke (an instance killed).
    broken: bool,
}

impl Seen {
    fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| e.get("token").and_then(Value::as_str))
            .collect()
    }

    fn done(&self) -> Option<&Value> {
        self.events
            .iter()
            .find(|e| e.get("done") == Some(&json!(true)))
    }

    fn outcome(&self) -> String {
        if self.status != 200 {
            return if self.status == 0 {
                "no response".into()
            } else {
                self.status.to_string()
            };
        }
        if self.left {
            return "200 browser left".into();
        }
        if self.broken {
            return "200 broken".into();
        }
        match (self.done(), self.error()) {
            (None, _) if self.events.is_empty() => "200 empty".into(),
            (None, _) => "200 no done".into(),
            (Some(_), Some(code)) => format!("200 {code}"),
            (Some(done), None) if done.get("stopped").is_some() => "200 stopped".into(),
            (Some(done), None) if done.get("message_id").is_some() => "200 done".into(),
            (Some(_), None) => "200 done, no text".into(),
        }
    }

    fn error(&self) -> Option<&str> {
        self.events
            .iter()
            .find_map(|e| e.get("error").and_then(Value::as_str))
    }
}

/// A request an idempotent retry can repeat.
#[derive(Debug, Clone)]
struct Keyed {
    op: Op,
    conversation: Uuid,
    key: String,
    body: Value,
    at: Instant,
}

#[derive(Default)]
struct UserState {
    conversations: Vec<Uuid>,
    /// The last content this user sent to each conversation (a regeneration's
    /// scenario matches it).
    last_sent: HashMap<Uuid, String>,
    keyed: Vec<Keyed>,
    /// Refused by a limit: until then most of the user's chat operations turn
    /// into other ones (a browser waits out `Retry-After`; some do not).
    paused_until: Option<Instant>,
}

#[derive(Default, Clone)]
struct Journal {
    seen: Vec<Seen>,
    /// (op, outcome) -> count.
    counts: BTreeMap<(String, String), u64>,
    /// Responses 5xx, or errors before any response, with what was asked.
    server_errors: Vec<String>,
    /// Every conversation the run created, by user; and those it deleted (204).
    created: Vec<(usize, Uuid)>,
    deleted: HashSet<Uuid>,
    /// Client op log, for replays: "client n: op conversation -> outcome".
    log: Vec<String>,
    kills: Vec<String>,
}

impl Journal {
    fn count(&mut self, op: Op, outcome: &str) {
        *self
            .counts
            .entry((op.name().to_owned(), outcome.to_owned()))
            .or_default() += 1;
    }
}

/// Everything a client needs.
struct Run {
    stack: Arc<Stack>,
    settings: Settings,
    users: Vec<User>,
    /// Each user's current token and when it was made: the stack's tokens live
    /// 10 minutes, a run may last longer, and the frontend refreshes its own.
    tokens: Vec<Mutex<(Instant, String)>>,
    state: Vec<Mutex<UserState>>,
    journal: Mutex<Journal>,
    started: Instant,
    /// Every word of user text in this run starts with it (found in logs = leak).
    word_prefix: String,
}

impl Run {
    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn word(&self, rng: &mut Rng) -> String {
        format!("{}{:06x}", self.word_prefix, rng.next() & 0xff_ffff)
    }

    fn words(&self, rng: &mut Rng, n: u64) -> String {
        (0..n).map(|_| self.word(rng)).collect::<Vec<_>>().join(" ")
    }

    fn note(&self, client: usize, op: Op, conversation: Option<Uuid>, outcome: &str) {
        let mut j = self.journal.lock().expect("journal");
        j.count(op, outcome);
        // Every request carries a valid token.
        if outcome == "401" {
            let what = format!("{} {conversation:?}: 401 with a valid token", op.name());
            j.server_errors.push(what);
        }
        let conv = conversation.map_or_else(|| "-".to_owned(), |c| c.to_string());
        let line = format!(
            "{:>8} ms client {client} {} {conv} -> {outcome}",
            self.ms(),
            op.name()
        );
        j.log.push(line);
    }

    /// The user's token, made again once it is five minutes old.
    fn token(&self, user: usize) -> String {
        let mut held = self.tokens[user].lock().expect("token");
        if held.0.elapsed() > Duration::from_secs(300) {
            *held = (Instant::now(), self.stack.token(self.users[user].id));
        }
        held.1.clone()
    }

    fn user(&self, user: usize) -> User {
        User {
            id: self.users[user].id,
            token: self.token(user),
        }
    }

    fn server_error(&self, what: String) {
        self.journal
            .lock()
            .expect("journal")
            .server_errors
            .push(what);
    }

    fn conversation(&self, user: usize, rng: &mut Rng) -> Option<Uuid> {
        let st = self.state[user].lock().expect("user");
        rng.pick(&st.conversations).copied()
    }
}

/// Runs the clients, lets everything settle, checks the invariants; returns the
/// report, and the violations (empty when all hold).
pub async fn run(stack: Arc<Stack>, settings: Settings) -> (String, Vec<String>) {
    let nonce = Uuid::new_v4().simple().to_string();
    let users: Vec<User> = (0..settings.users).map(|_| stack.user()).collect();
    let run = Arc::new(Run {
        stack: stack.clone(),
        tokens: users
            .iter()
            .map(|u| Mutex::new((Instant::now(), u.token.clone())))
            .collect(),
        users,
        state: (0..settings.users).map(|_| Mutex::default()).collect(),
        journal: Mutex::default(),
        started: Instant::now(),
        word_prefix: format!("zq{}", &nonce[..6]),
        settings: settings.clone(),
    });
    let logs = LogMarks::take(&stack);
    println!(
        "chaos: seed {} ({} users x {} clients, {} s, kill {}); replay with \
         CHAOS_SEED={} CHAOS_SECS={}",
        settings.seed,
        settings.users,
        settings.clients_per_user,
        settings.duration.as_secs(),
        settings.kill,
        settings.seed,
        settings.duration.as_secs()
    );

    let mut clients = Vec::new();
    for user in 0..settings.users {
        for c in 0..settings.clients_per_user {
            let client = user * settings.clients_per_user + c;
            let run = run.clone();
            clients.push(tokio::spawn(
                async move { client_loop(run, user, client).await },
            ));
        }
    }
    if settings.kill {
        let run = run.clone();
        clients.push(tokio::spawn(async move { killer(run).await }));
    }
    for c in clients {
        if let Err(e) = c.await {
            run.server_error(format!("a client task failed: {e}"));
        }
    }
    let ops_done = run.ms();

    // Settle: every answer still generating (a browser that left) ends by the
    // deadline; a dead one is dead after the stale time. Then one read of every
    // conversation settles what is dead.
    let env = &stack.env;
    let ms = |name: &str, default: u64| {
        env.get(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let stale = ms("LIVE_STALE_AFTER_MS", 4000);
    let deadline = ms("INFERENCE_DEADLINE_SECS", 6) * 1000;
    tokio::time::sleep(Duration::from_millis(stale.max(deadline) + 2000)).await;
    let created: Vec<(usize, Uuid)> = run.journal.lock().expect("journal").created.clone();
    for (user, id) in &created {
        let (status, _) = stack.get_conversation(&run.user(*user), *id).await;
        if status >= 500 {
            run.server_error(format!("settling GET {id}: {status}"));
        }
    }

    let violations = check(&run, &logs).await;
    let report = report(&run, ops_done, &violations);
    (report, violations)
}

async fn client_loop(run: Arc<Run>, user: usize, client: usize) {
    let mut rng =
        Rng::new(run.settings.seed ^ (client as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    while run.started.elapsed() < run.settings.duration {
        let mut op = Op::choose(&mut rng);
        let paused = run.state[user]
            .lock()
            .expect("user")
            .paused_until
            .is_some_and(|t| t > Instant::now());
        if paused && matches!(op, Op::Send | Op::Regenerate | Op::Retry) && rng.chance(85) {
            op = *rng
                .pick(&[Op::Stop, Op::Resume, Op::Get, Op::List])
                .expect("op");
        }
        match op {
            Op::Send | Op::Regenerate => chat(&run, user, client, op, &mut rng).await,
            Op::Retry => retry(&run, user, client, &mut rng).await,
            Op::Stop => stop(&run, user, client, &mut rng).await,
            Op::Resume => resume(&run, user, client, &mut rng).await,
            Op::Get | Op::List | Op::Create | Op::Rename | Op::Delete => {
                crud(&run, user, client, op, &mut rng).await
            }
            Op::DynamoFault => dynamo_fault(&run, user, client, &mut rng).await,
        }
        tokio::time::sleep(Duration::from_millis(rng.range(0, 250))).await;
    }
}

/// Registers what the upstream does with the next request for `content` (or
/// nothing: the mock's default answer, which echoes the message).
async fn upstream_scenario(run: &Run, rng: &mut Rng, content: &str) -> &'static str {
    let tokens: Vec<String> = (0..rng.range(4, 30)).map(|i| format!(" t{i}")).collect();
    let (name, scenario) = match rng.range(0, 100) {
        0..=34 => return "default",
        35..=59 => (
            "slow tokens",
            json!({"tokens": tokens, "token_delay_ms": rng.range(80, 350)}),
        ),
        60..=67 => ("http 500", json!({"status": 500})),
        68..=72 => ("http 503", json!({"status": 503})),
        73..=81 => (
            "drop mid-stream",
            json!({"tokens": tokens, "drop_after": rng.range(0, 6), "token_delay_ms": 60}),
        ),
        82..=89 => (
            "no done",
            json!({"tokens": tokens, "no_done": true, "token_delay_ms": 40}),
        ),
        90..=95 => (
            "slow first token",
            json!({"tokens": tokens, "first_token_delay_ms": rng.range(300, 2500)}),
        ),
        _ => (
            "hang",
            json!({"tokens": tokens, "hang_after": rng.range(1, 4)}),
        ),
    };
    let mut scenario = scenario;
    scenario["match"] = json!(content);
    let resp = run
        .stack
        .http
        .post(format!("{}/__mock/scenarios", run.stack.mock))
        .json(&scenario)
        .send()
        .await;
    if !matches!(resp, Ok(r) if r.status() == 201) {
        run.server_error(format!("mock scenario not registered: {scenario}"));
    }
    name
}

async fn chat(run: &Run, user: usize, client: usize, op: Op, rng: &mut Rng) {
    let Some(conversation) = run.conversation(user, rng) else {
        return crud(run, user, client, Op::Create, rng).await;
    };
    let body = if op == Op::Send {
        let marker = format!("{}q{:x}", run.word_prefix, rng.next());
        let n = rng.range(1, 6);
        let content = format!("{marker} {}", run.words(rng, n));
        upstream_scenario(run, rng, &marker).await;
        run.state[user]
            .lock()
            .expect("user")
            .last_sent
            .insert(conversation, marker);
        json!({ "content": content })
    } else {
        let last = run.state[user]
            .lock()
            .expect("user")
            .last_sent
            .get(&conversation)
            .cloned();
        if let Some(marker) = last {
            if rng.chance(50) {
                upstream_scenario(run, rng, &marker).await;
            }
        }
        json!({})
    };
    let key = rng
        .chance(30)
        .then(|| format!("k-{}-{:x}", run.word_prefix, rng.next()));
    if let Some(key) = &key {
        run.state[user].lock().expect("user").keyed.push(Keyed {
            op,
            conversation,
            key: key.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
    }
    let leave_after = rng.chance(20).then(|| rng.range(0, 6) as usize);
    stream(run, user, client, op, conversation, body, key, leave_after).await;
}

/// Sends a send or regenerate and reads its stream (leaving after
/// `leave_after` events, when given), and records what it saw.
#[allow(clippy::too_many_arguments)]
async fn stream(
    run: &Run,
    user: usize,
    client: usize,
    op: Op,
    conversation: Uuid,
    body: Value,
    key: Option<String>,
    leave_after: Option<usize>,
) {
    let (function, action) = match op {
        Op::Regenerate => ("regenerate", "regenerate"),
        _ => ("send", "messages"),
    };
    let route = if op == Op::Retry && body.get("content").is_none() {
        "regenerate"
    } else {
        function
    };
    let action = if route == "regenerate" {
        "regenerate"
    } else {
        action
    };
    let mut req = run
        .stack
        .http
        .post(run.stack.url(
            route,
            &format!("/api/conversations/{conversation}/{action}"),
        ))
        .bearer_auth(run.token(user))
        .json(&body);
    if let Some(key) = &key {
        req = req.header("Idempotency-Key", key);
    }
    read_stream(run, user, client, op, conversation, key, req, leave_after).await;
}

#[allow(clippy::too_many_arguments)]
async fn read_stream(
    run: &Run,
    user: usize,
    client: usize,
    op: Op,
    conversation: Uuid,
    key: Option<String>,
    req: reqwest::RequestBuilder,
    leave_after: Option<usize>,
) {
    let sent_ms = run.ms();
    let sent_unix = unix_now();
    let mut seen = Seen {
        op,
        client,
        user,
        conversation,
        key,
        sent_ms,
        head_ms: sent_ms,
        sent_unix,
        head_unix: sent_unix,
        status: 0,
        events: Vec::new(),
        left: false,
        broken: false,
    };
    match req.send().await {
        Err(e) => {
            run.server_error(format!("{} {conversation}: no response ({e})", op.name()));
        }
        Ok(mut resp) => {
            seen.status = resp.status().as_u16();
            if seen.status == 429 {
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(5)
                    .min(60);
                run.state[user].lock().expect("user").paused_until =
                    Some(Instant::now() + Duration::from_secs(wait));
            }
            seen.head_ms = run.ms();
            seen.head_unix = unix_now();
            let mut buf = Vec::new();
            loop {
                if leave_after.is_some_and(|n| seen.events.len() >= n) && seen.status == 200 {
                    seen.left = seen.done().is_none();
                    break;
                }
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        buf.extend_from_slice(&chunk);
                        while let Some(end) = find(&buf, b"\n\n") {
                            let block: Vec<u8> = buf.drain(..end + 2).collect();
                            let block = String::from_utf8_lossy(&block[..end]).to_string();
                            if let Some(data) = block.strip_prefix("data: ") {
                                seen.events.push(
                                    serde_json::from_str(data)
                                        .unwrap_or(Value::String(data.to_owned())),
                                );
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        seen.broken = true;
                        break;
                    }
                }
            }
            if seen.status >= 500 {
                run.server_error(format!(
                    "{} {conversation}: {} {}",
                    op.name(),
                    seen.status,
                    String::from_utf8_lossy(&buf)
                ));
            }
        }
    }
    let outcome = seen.outcome();
    run.note(client, op, Some(conversation), &outcome);
    run.journal.lock().expect("journal").seen.push(seen);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// An idempotent retry: a recent keyed request sent again as it was.
async fn retry(run: &Run, user: usize, client: usize, rng: &mut Rng) {
    let keyed = {
        let mut st = run.state[user].lock().expect("user");
        // Well inside the record's 10 minutes.
        st.keyed
            .retain(|k| k.at.elapsed() < Duration::from_secs(120));
        rng.pick(&st.keyed).cloned()
    };
    let Some(keyed) = keyed else {
        return chat(run, user, client, Op::Send, rng).await;
    };
    let _ = keyed.op;
    let leave_after = rng.chance(15).then(|| rng.range(0, 3) as usize);
    stream(
        run,
        user,
        client,
        Op::Retry,
        keyed.conversation,
        keyed.body,
        Some(keyed.key),
        leave_after,
    )
    .await;
}

async fn stop(run: &Run, user: usize, client: usize, rng: &mut Rng) {
    let Some(conversation) = run.conversation(user, rng) else {
        return;
    };
    let resp = run
        .stack
        .stop_req(&run.user(user), &conversation.to_string())
        .send()
        .await;
    let outcome = status_of(run, Op::Stop, conversation, resp).await;
    run.note(client, Op::Stop, Some(conversation), &outcome);
}

async fn resume(run: &Run, user: usize, client: usize, rng: &mut Rng) {
    let Some(conversation) = run.conversation(user, rng) else {
        return;
    };
    let req = run
        .stack
        .http
        .get(
            run.stack
                .url("send", &format!("/api/conversations/{conversation}/stream")),
        )
        .bearer_auth(run.token(user));
    let leave_after = rng.chance(25).then(|| rng.range(0, 4) as usize);
    read_stream(
        run,
        user,
        client,
        Op::Resume,
        conversation,
        None,
        req,
        leave_after,
    )
    .await;
}

async fn status_of(
    run: &Run,
    op: Op,
    conversation: Uuid,
    resp: Result<reqwest::Response, reqwest::Error>,
) -> String {
    match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            if status >= 500 {
                let body = resp.text().await.unwrap_or_default();
                run.server_error(format!("{} {conversation}: {status} {body}", op.name()));
            }
            status.to_string()
        }
        Err(e) => {
            run.server_error(format!("{} {conversation}: no response ({e})", op.name()));
            "no response".into()
        }
    }
}

async fn crud(run: &Run, user: usize, client: usize, op: Op, rng: &mut Rng) {
    let stack = &run.stack;
    let token = &run.token(user);
    let conversation = match op {
        Op::Create | Op::List => None,
        _ => match run.conversation(user, rng) {
            Some(c) => Some(c),
            None => return Box::pin(crud(run, user, client, Op::Create, rng)).await,
        },
    };
    let path = |c: Uuid| format!("/api/conversations/{c}");
    let resp = match (op, conversation) {
        (Op::Create, _) => {
            let body = if rng.chance(50) {
                json!({})
            } else {
                json!({ "title": run.words(rng, 2) })
            };
            stack
                .http
                .post(stack.url("conversations", "/api/conversations"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
        }
        (Op::List, _) => {
            stack
                .http
                .get(stack.url("conversations", "/api/conversations?limit=20"))
                .bearer_auth(token)
                .send()
                .await
        }
        (Op::Get, Some(c)) => {
            stack
                .http
                .get(stack.url("conversations", &path(c)))
                .bearer_auth(token)
                .send()
                .await
        }
        (Op::Rename, Some(c)) => {
            stack
                .http
                .put(stack.url("conversations", &path(c)))
                .bearer_auth(token)
                .json(&json!({ "title": run.words(rng, 3) }))
                .send()
                .await
        }
        (Op::Delete, Some(c)) => {
            stack
                .http
                .delete(stack.url("conversations", &path(c)))
                .bearer_auth(token)
                .send()
                .await
        }
        _ => return,
    };
    let conv_for_log = conversation.unwrap_or_default();
    let outcome = match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status >= 500 {
                run.server_error(format!("{} {conv_for_log}: {status} {body}", op.name()));
            }
            if op == Op::Create && status == 201 {
                if let Some(id) = body["id"].as_str().and_then(|v| Uuid::parse_str(v).ok()) {
                    run.state[user].lock().expect("user").conversations.push(id);
                    run.journal
                        .lock()
                        .expect("journal")
                        .created
                        .push((user, id));
                }
            }
            status.to_string()
        }
        Err(e) => {
            run.server_error(format!("{} {conv_for_log}: no response ({e})", op.name()));
            "no response".into()
        }
    };
    if op == Op::Delete {
        if let Some(c) = conversation {
            if outcome == "204" || outcome == "404" {
                run.state[user]
                    .lock()
                    .expect("user")
                    .conversations
                    .retain(|x| *x != c);
            }
            if outcome == "204" {
                run.journal.lock().expect("journal").deleted.insert(c);
            }
        }
    }
    run.note(client, op, conversation, &outcome);
}

/// A DynamoDB fault on the next request of one of the user's conversations, or
/// of the user's limit record. At most one rule not yet fired per scope, and
/// each fires once: the SDK's four attempts always get through.
async fn dynamo_fault(run: &Run, user: usize, client: usize, rng: &mut Rng) {
    let scope = match run.conversation(user, rng) {
        Some(c) if rng.chance(70) => c.to_string(),
        _ => format!("LIMIT#{}", run.users[user].id),
    };
    let operation = *rng
        .pick(&[
            "TransactWriteItems",
            "UpdateItem",
            "Query",
            "GetItem",
            "PutItem",
            "BatchWriteItem",
            "DeleteItem",
        ])
        .expect("operation");
    let fault = *rng
        .pick(&["throttle", "error500", "reset", "reset_after"])
        .expect("fault");
    let skip = rng.range(0, 3);
    let proxy = &run.stack.env["FAULT_PROXY_URL"];
    let rules: Value = match run.stack.http.get(format!("{proxy}/__faults")).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let pending = rules.as_array().is_some_and(|rules| {
        rules
            .iter()
            .any(|r| r["body_contains"] == json!(scope) && r["fired"].as_u64().unwrap_or(0) == 0)
    });
    let outcome = if pending {
        "skipped (one pending)".to_owned()
    } else {
        run.stack
            .fault(json!({
                "operation": operation, "body_contains": scope, "fault": fault,
                "skip": skip, "times": 1,
            }))
            .await;
        format!("{fault} {operation}")
    };
    run.note(client, Op::DynamoFault, None, &outcome);
}

/// Kills one `send` instance generating an answer, once, at a seeded moment
/// between a quarter and three quarters of the run.
async fn killer(run: Arc<Run>) {
    let mut rng = Rng::new(run.settings.seed ^ 0x5EED_0FC0_FFEE);
    let total = run.settings.duration.as_millis() as u64;
    let at = rng.range(total / 4, total * 3 / 4);
    tokio::time::sleep(Duration::from_millis(at)).await;
    // Wait for an instance with an upstream connection open.
    while run.started.elapsed() < run.settings.duration {
        if let Some(pid) = run.stack.generating_sends().await.first() {
            let killed = std::process::Command::new("kill")
                .args(["-KILL", pid])
                .status()
                .is_ok_and(|s| s.success());
            let line = format!("{} ms: send instance {pid} killed: {killed}", run.ms());
            run.journal.lock().expect("journal").kills.push(line);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.journal
        .lock()
        .expect("journal")
        .kills
        .push("no generating send instance found to kill".into());
}

/// Where each of the stack's logs ended when the run began.
struct LogMarks {
    files: Vec<(PathBuf, u64)>,
}

impl LogMarks {
    fn take(stack: &Stack) -> Self {
        let dir = PathBuf::from(&stack.env["STACK_DIR"]).join("logs");
        let files = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| {
                let len = std::fs::metadata(&p).map_or(0, |m| m.len());
                (p, len)
            })
            .collect();
        LogMarks { files }
    }

    /// The lines each log gained since: (file name, line).
    fn new_lines(&self) -> Vec<(String, String)> {
        let mut lines = Vec::new();
        for (path, from) in &self.files {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            let from = (*from as usize).min(bytes.len());
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for line in String::from_utf8_lossy(&bytes[from..]).lines() {
                lines.push((name.clone(), line.to_owned()));
            }
        }
        lines
    }
}

fn attr_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

async fn limit_record(stack: &Stack, user: Uuid) -> Item {
    stack
        .dynamodb
        .query()
        .table_name(&stack.table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("LIMIT#{user}")))
        .consistent_read(true)
        .send()
        .await
        .expect("query limits")
        .items()
        .first()
        .cloned()
        .unwrap_or_default()
}

/// The invariants, over what the clients saw and what the table holds.
async fn check(run: &Run, logs: &LogMarks) -> Vec<String> {
    let stack = &run.stack;
    let seed = run.settings.seed;
    let mut v = Vec::new();
    let journal = run.journal.lock().expect("journal").clone();

    // No 5xx and no request without an answer.
    for e in &journal.server_errors {
        v.push(format!("seed {seed}: server error: {e}"));
    }

    // The table, per conversation the run created.
    let mut partitions: HashMap<Uuid, Vec<Item>> = HashMap::new();
    for (_, id) in &journal.created {
        partitions.insert(*id, stack.all_items(*id).await);
    }
    let meta = |id: &Uuid| {
        partitions
            .get(id)
            .and_then(|items| items.iter().find(|i| s(i, "sk") == "META"))
    };
    let messages = |id: &Uuid| -> Vec<&Item> {
        partitions
            .get(id)
            .map(|items| {
                items
                    .iter()
                    .filter(|i| s(i, "sk").starts_with("M#"))
                    .collect()
            })
            .unwrap_or_default()
    };

    // 1. Every answer a stream ended `done` with a message id for is stored
    //    with the text the client received and the status it announced, unless
    //    a later regeneration replaced it or the conversation was deleted.
    // A keyed request's replays carry its first stream's time.
    let mut first_sent: HashMap<&str, u64> = HashMap::new();
    for seen in &journal.seen {
        if let Some(key) = &seen.key {
            first_sent.entry(key.as_str()).or_insert(seen.sent_ms);
        }
    }
    for seen in &journal.seen {
        let Some(done) = seen.done() else { continue };
        let Some(id) = done.get("message_id").and_then(Value::as_str) else {
            continue;
        };
        let conv = seen.conversation;
        let want_status = if done.get("stopped").is_some() {
            "stopped"
        } else if seen.error().is_some() {
            "incomplete"
        } else {
            "complete"
        };
        let stored = messages(&conv)
            .into_iter()
            .find(|m| s(m, "sk") == format!("M#{id}"));
        match stored {
            Some(m) => {
                let content = attr_s(m, "content").unwrap_or_default();
                let status = attr_s(m, "status").unwrap_or_default();
                if content != seen.text() || status != want_status {
                    v.push(format!(
                        "seed {seed}: answer {id} of conversation {conv} ({} by client {}) \
                         stored {status:?} with {} bytes, the client saw {want_status:?} \
                         with {} bytes",
                        seen.op.name(),
                        seen.client,
                        content.len(),
                        seen.text().len()
                    ));
                }
            }
            None => {
                let origin = seen
                    .key
                    .as_deref()
                    .and_then(|k| first_sent.get(k).copied())
                    .unwrap_or(seen.sent_ms);
                let replaced = journal.seen.iter().any(|r| {
                    r.conversation == conv
                        && r.status == 200
                        && r.sent_ms >= origin
                        && matches!(r.op, Op::Regenerate | Op::Retry)
                });
                let deleted = meta(&conv).is_none();
                if !replaced && !deleted {
                    v.push(format!(
                        "seed {seed}: answer {id} of conversation {conv} ({} by client {}) \
                         ended done but is not stored",
                        seen.op.name(),
                        seen.client
                    ));
                }
            }
        }
    }

    // 2. Conversations in order, nothing live or streaming left; deleted ones
    //    leave nothing behind.
    for (_, id) in &journal.created {
        let items = &partitions[id];
        let Some(m) = meta(id) else {
            if !items.is_empty() {
                let sks: Vec<String> = items.iter().map(|i| s(i, "sk")).collect();
                v.push(format!(
                    "seed {seed}: deleted conversation {id} left items {sks:?}"
                ));
            }
            continue;
        };
        if let Some(live) = attr_s(m, "live_id") {
            v.push(format!(
                "seed {seed}: conversation {id} still has live answer {live}"
            ));
        }
        let mut previous: Option<String> = None;
        for msg in messages(id) {
            let role = attr_s(msg, "role").unwrap_or_default();
            let status = attr_s(msg, "status").unwrap_or_default();
            let sk = s(msg, "sk");
            if status == "streaming" {
                v.push(format!("seed {seed}: {id} {sk} stored as streaming"));
            }
            if role == "assistant" && previous.as_deref() != Some("user") {
                v.push(format!(
                    "seed {seed}: conversation {id}: answer {sk} follows {:?}, not a question",
                    previous
                ));
            }
            previous = Some(role);
        }
    }

    // 3. Limits: nothing held once settled; the day counts what was admitted;
    //    no minute or user over its limit.
    let env_n = |name: &str| {
        stack
            .env
            .get(name)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    let per_minute = env_n("RATE_LIMIT_PER_MINUTE");
    let per_day = env_n("DAILY_MESSAGE_QUOTA");
    for (u, user) in run.users.iter().enumerate() {
        let record = limit_record(stack, user.id).await;
        if let Some(AttributeValue::Ss(held)) = record.get("answers") {
            v.push(format!(
                "seed {seed}: user {} holds generating places after settling: {held:?}",
                user.id
            ));
        }
        let mut counted = 0;
        for (name, value) in &record {
            match value {
                AttributeValue::N(n) if name.starts_with("day_") => {
                    counted += n.parse::<u64>().unwrap_or(0);
                    if n.parse::<u64>().unwrap_or(0) > per_day {
                        v.push(format!(
                            "seed {seed}: user {} {name} = {n} over the quota",
                            user.id
                        ));
                    }
                }
                AttributeValue::Ss(ids)
                    if name.starts_with("min_") && ids.len() as u64 > per_minute =>
                {
                    v.push(format!(
                        "seed {seed}: user {} {name} holds {} over the limit",
                        user.id,
                        ids.len()
                    ));
                }
                _ => {}
            }
        }
        // Requests that reached the upstream path: a stream (200) that was not
        // a replay of an earlier keyed request.
        let mut keys_streamed: HashSet<&str> = HashSet::new();
        let mut admitted = 0u64;
        let mut unknown = 0u64;
        let mut by_minute: BTreeMap<i64, u64> = BTreeMap::new();
        for seen in journal.seen.iter().filter(|x| x.user == u) {
            if !matches!(seen.op, Op::Send | Op::Regenerate | Op::Retry) {
                continue;
            }
            if seen.status == 0 {
                unknown += 1;
                continue;
            }
            if seen.status != 200 {
                continue;
            }
            if let Some(key) = &seen.key {
                if !keys_streamed.insert(key.as_str()) {
                    continue;
                }
            }
            admitted += 1;
            if seen.sent_unix.div_euclid(60) == seen.head_unix.div_euclid(60) {
                *by_minute.entry(seen.sent_unix.div_euclid(60)).or_default() += 1;
            }
        }
        if counted < admitted || counted > admitted + unknown {
            v.push(format!(
                "seed {seed}: user {} counted {counted} messages, the clients saw {admitted} \
                 admitted ({unknown} unknown)",
                user.id
            ));
        }
        for (minute, n) in by_minute {
            if n > per_minute {
                v.push(format!(
                    "seed {seed}: user {} had {n} requests admitted in minute {minute}",
                    user.id
                ));
            }
        }
    }

    // 4. No panic and no user text in any log line (metric records included).
    let mut panics = 0;
    let mut leaks = 0;
    for (file, line) in logs.new_lines() {
        if line.contains("panicked") {
            panics += 1;
            if panics <= 5 {
                v.push(format!("seed {seed}: panic in {file}: {line}"));
            }
        }
        if line.contains(&run.word_prefix) {
            leaks += 1;
            if leaks <= 5 {
                v.push(format!("seed {seed}: user text in {file}: {line}"));
            }
        }
    }
    v
}

fn report(run: &Run, ops_ms: u64, violations: &[String]) -> String {
    let j = run.journal.lock().expect("journal");
    let mut out = String::new();
    let total: u64 = j.counts.values().sum();
    let _ = writeln!(
        out,
        "chaos: seed {}, {} users x {} clients, operations for {:.1} s, {} operations",
        run.settings.seed,
        run.settings.users,
        run.settings.clients_per_user,
        ops_ms as f64 / 1000.0,
        total
    );
    let mut by_op: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for ((op, outcome), n) in &j.counts {
        by_op.entry(op).or_default().push((outcome, *n));
    }
    for (op, outcomes) in by_op {
        let sum: u64 = outcomes.iter().map(|(_, n)| n).sum();
        let parts: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o}: {n}")).collect();
        let _ = writeln!(out, "  {op:<15} {sum:>6}  ({})", parts.join(", "));
    }
    let _ = writeln!(
        out,
        "  conversations created {}, deleted {}",
        j.created.len(),
        j.deleted.len()
    );
    for k in &j.kills {
        let _ = writeln!(out, "  {k}");
    }
    if violations.is_empty() {
        let _ = writeln!(
            out,
            "chaos: all invariants hold (seed {})",
            run.settings.seed
        );
    } else {
        let _ = writeln!(
            out,
            "chaos: {} invariant violations (seed {}):",
            violations.len(),
            run.settings.seed
        );
        for x in violations {
            let _ = writeln!(out, "  {x}");
        }
    }
    // The full operation log, for a replay's comparison.
    let path =
        PathBuf::from(&run.stack.env["STACK_DIR"]).join(format!("chaos-{}.log", run.settings.seed));
    if std::fs::write(&path, j.log.join("\n") + "\n").is_ok() {
        let _ = writeln!(out, "  operation log: {}", path.display());
    }
    out
}
