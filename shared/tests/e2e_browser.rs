//! The local chat page (`dev/chat-page`) in a real browser: headless Chromium
//! (Debian's `chromium`, installed by `scripts/bootstrap.sh`) driven over WebDriver by
//! Debian's `chromedriver`. The page is served from its own origin by the test
//! stack (`CHAT_PAGE_URL`) and calls the functions' URLs with `fetch` across
//! origins, reading the streamed bodies itself, so these tests fail if CORS, the
//! browser's view of the stream, or any flow of the page breaks.
//!
//! Every wait is on a condition with a generous bound; nothing asserts a speed.
//! `CHAT_PAGE_SCREENSHOT=docs/chat-page.png` also saves the README's screenshot.

mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{marker, Stack, User};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::{json, Value};
use uuid::Uuid;

/// Bound of every wait on the page: far above what any step needs.
const WAIT: Duration = Duration::from_secs(30);

const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,820",
];

/// chromedriver and its Chromium, with a fresh profile; torn down after the flow,
/// whether it passed or panicked.
async fn with_browser<F, Fut>(name: &str, flow: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&tmp).expect("browser temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let mut driver = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        // No chromedriver log: it would record the messages typed and read.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {chromedriver}: {e}. The browser tests need Debian's chromium and \
                 chromium-driver: run scripts/bootstrap.sh (as root)"
            )
        });
    let client = match connect(port, &tmp).await {
        Ok(client) => client,
        Err(e) => {
            let _ = driver.kill();
            let _ = driver.wait();
            panic!("{e}");
        }
    };
    let outcome = AssertUnwindSafe(flow(client.clone())).catch_unwind().await;
    let _ = client.close().await;
    let _ = driver.kill();
    let _ = driver.wait();
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn connect(port: u16, tmp: &Path) -> Result<Client, String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut args: Vec<String> = FLAGS.iter().map(|f| f.to_string()).collect();
    args.push(format!("--user-data-dir={}", tmp.join("profile").display()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chromium, "args": args }),
    );
    // chromedriver listens a moment after it starts: retry the session until then.
    let start = Instant::now();
    loop {
        // fantoccini brings hyper-util's legacy client (its own dependency): plain HTTP.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return Ok(client),
            Err(e) if start.elapsed() > WAIT => {
                return Err(format!("no WebDriver session from chromedriver: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs `script` in the page (its value returned as JSON).
async fn js(client: &Client, script: &str) -> Value {
    client
        .execute(script, vec![])
        .await
        .expect("script in page")
}

/// Polls `script` until it returns something other than null/false; its value.
async fn until(client: &Client, what: &str, script: &str) -> Value {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        let value = js(client, script).await;
        if !matches!(value, Value::Null | Value::Bool(false)) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = js(
        client,
        "return [document.getElementById('status').textContent,
                 document.getElementById('notice').textContent]",
    )
    .await;
    let answer = last_answer(client).await;
    panic!("timed out waiting for {what} (page status, notice: {page}; last answer: {answer})");
}

/// The last visible answer on the page: `{status, text, resumed}` or null.
const LAST_ANSWER: &str = "
    const all = [...document.querySelectorAll('#messages .msg[data-role=assistant]')]
        .filter(e => !e.hidden);
    const b = all.pop();
    return b ? { status: b.dataset.status, text: b.querySelector('.text').textContent,
                 resumed: b.dataset.resumed === 'true', answers: all.length + 1 } : null;";

/// [`LAST_ANSWER`], but null until `condition` (on the answer `b`) holds.
fn answer_where(condition: &str) -> String {
    LAST_ANSWER.replace(
        "return b ?",
        &format!("if (!b || !({condition})) return null;\n    return b ?"),
    )
}

async fn last_answer(client: &Client) -> Value {
    js(client, LAST_ANSWER).await
}

/// Waits until the last answer is `status` with exactly `text`.
async fn until_answer(client: &Client, status: &str, text: &str) -> Value {
    let condition = format!(
        "b.dataset.status === {} && b.querySelector('.text').textContent === {}",
        json!(status),
        json!(text)
    );
    until(
        client,
        &format!("an answer {status:?} reading {text:?}"),
        &answer_where(&condition),
    )
    .await
}

/// Clicks `css`, again if the page re-rendered it between finding and clicking.
async fn click(client: &Client, css: &str) {
    let start = Instant::now();
    loop {
        let clicked = match client.find(Locator::Css(css)).await {
            Ok(element) => element.click().await,
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => return,
            Err(e) if start.elapsed() > WAIT => panic!("cannot click {css}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until no answer streams and no request of the page is in flight.
async fn until_idle(client: &Client) {
    until(
        client,
        "the page to be idle",
        "return document.body.dataset.pending === '0' && !document.getElementById('send').disabled",
    )
    .await;
}

async fn type_and_send(client: &Client, text: &str) {
    let input = client.find(Locator::Css("#input")).await.expect("input");
    input.send_keys(text).await.expect("type");
    click(client, "#send").await;
}

/// Opens the page as `user` (a new user per test: its sidebar is its own).
async fn open_page(client: &Client, page: &str, user: &User) {
    client
        .goto(&format!("{page}?user={}", user.id))
        .await
        .expect("load the page");
    until_ready(client).await;
}

async fn until_ready(client: &Client) {
    until(
        client,
        "the page to load its token and conversation list",
        "return document.getElementById('status').dataset.state === 'ready'",
    )
    .await;
}

/// "New chat": the conversation the page created and opened.
async fn new_chat(client: &Client) -> Uuid {
    let before = js(client, "return location.hash").await;
    click(client, "#new-chat").await;
    let hash = until(
        client,
        "a new conversation to open",
        &format!(
            "const h = location.hash; return h.length > 1 && h !== {before} ? h.slice(1) : null"
        ),
    )
    .await;
    Uuid::parse_str(hash.as_str().expect("hash")).expect("conversation id in the hash")
}

fn page_url(stack: &Stack) -> String {
    stack.env.get("CHAT_PAGE_URL").cloned().expect(
        "CHAT_PAGE_URL missing from the stack's client.env: restart it with \
         `scripts/stack.sh up test`",
    )
}

fn user_of(stack: &Stack) -> User {
    let id = Uuid::new_v4();
    User {
        id,
        token: stack.token(id),
    }
}

/// `text` as the mock's tokens: one word each, with its leading space.
fn tokens(text: &str) -> Vec<String> {
    text.split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// The last answer is streaming and already holds `text`.
fn streaming_with(text: &str) -> String {
    answer_where(&format!(
        "b.dataset.status === 'streaming' && b.querySelector('.text').textContent.startsWith({})",
        json!(text)
    ))
}

const LONG: &str = "Samosa chaat starts with a crushed samosa, then chickpea curry, \
    whisked yogurt, tamarind and mint chutneys, chopped onion, coriander, chaat masala \
    and a handful of crisp sev on top, eaten at once.";

/// Streams an answer, reloads, regenerates, renames, shows an upstream error,
/// opens from the list, deletes; the README's screenshot comes from here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_streams_reloads_regenerates_renames_and_deletes() {
    let stack = Stack::get().await;
    let page = page_url(&stack);
    let user = user_of(&stack);
    with_browser("chat-page-flows", |client| async move {
        open_page(&client, &page, &user).await;
        let id = new_chat(&client).await;

        // Send: the answer grows on the page while its stream is still open.
        let m = marker();
        let full = "A samosa is a fried pastry with a savoury filling of spiced potatoes and peas.";
        stack
            .scenario(json!({"match": m, "tokens": tokens(full), "token_delay_ms": 200}))
            .await;
        let content = format!("What is a samosa? [{m}]");
        type_and_send(&client, &content).await;
        let mut seen: Vec<String> = Vec::new();
        let start = Instant::now();
        loop {
            let a = last_answer(&client).await;
            if a["status"] != "streaming" && !seen.is_empty() {
                break;
            }
            let text = a["text"].as_str().unwrap_or_default().to_owned();
            if a["status"] == "streaming" && !text.is_empty() && seen.last() != Some(&text) {
                seen.push(text);
            }
            assert!(start.elapsed() < WAIT, "the answer never streamed: {a}");
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let partial: Vec<&String> = seen.iter().filter(|t| t.len() < full.len()).collect();
        assert!(
            partial.len() >= 3,
            "tokens should appear one by one while the stream is open; seen {seen:?}"
        );
        for pair in seen.windows(2) {
            assert!(pair[1].starts_with(&pair[0]), "the text only grows: {seen:?}");
        }
        until_answer(&client, "complete", full).await;
        let (status, conv) = stack.get_conversation(&user, id).await;
        assert_eq!(status, 200);
        assert_eq!(conv["messages"][1]["content"], full);

        // Reload: the stored conversation is listed (titled by the first message)
        // and reopened from the address.
        client.refresh().await.expect("reload");
        until_ready(&client).await;
        until(
            &client,
            "the stored conversation in the list",
            &format!(
                "const li = document.querySelector('#conversations li[data-id=\"{id}\"] .title');
                 return li && li.textContent === {} && li.closest('li').classList.contains('active')",
                json!(content)
            ),
        )
        .await;
        until_answer(&client, "complete", full).await;
        let user_text = js(
            &client,
            "return document.querySelector('#messages .msg[data-role=user] .text').textContent",
        )
        .await;
        assert_eq!(user_text, content.as_str());

        // Regenerate: a new answer streams and replaces the old one.
        let again = "Samosas are crisp triangles of pastry around spiced potato, peas and onion.";
        stack
            .scenario(json!({"match": m, "tokens": tokens(again), "token_delay_ms": 60}))
            .await;
        click(&client, "#messages .regenerate").await;
        let a = until_answer(&client, "complete", again).await;
        assert_eq!(a["answers"], 1, "one answer for the turn");
        let (_, conv) = stack.get_conversation(&user, id).await;
        let stored: Vec<&str> = conv["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(stored, vec![content.as_str(), again]);

        // Rename from the list.
        until_idle(&client).await;
        click(&client, &format!("#conversations li[data-id=\"{id}\"] .rename")).await;
        let input = client
            .find(Locator::Css("#conversations .rename-input"))
            .await
            .expect("rename input");
        input.clear().await.expect("clear");
        input
            .send_keys(&("Renamed in the browser".to_owned() + &Key::Enter.to_string()))
            .await
            .expect("type the title");
        until(
            &client,
            "the new title in the list and the header",
            &format!(
                "const li = document.querySelector('#conversations li[data-id=\"{id}\"] .title');
                 return li && li.textContent === 'Renamed in the browser'
                     && document.getElementById('conversation-title').textContent === 'Renamed in the browser'"
            ),
        )
        .await;
        let (_, conv) = stack.get_conversation(&user, id).await;
        assert_eq!(conv["title"], "Renamed in the browser");

        // An upstream failure is shown as the stream reports it.
        let failing = marker();
        stack
            .scenario(json!({"match": failing, "status": 503}))
            .await;
        type_and_send(&client, &format!("And a recipe? [{failing}]")).await;
        until(
            &client,
            "the stream's error on the page",
            "const n = document.getElementById('notice');
             return !n.hidden && n.textContent.includes('inference_error')
                 && n.textContent.includes('503') && !document.getElementById('send').disabled",
        )
        .await;

        // A second conversation, then back to the first from the list.
        let other = new_chat(&client).await;
        assert_ne!(other, id);
        click(&client, &format!("#conversations li[data-id=\"{id}\"] .title")).await;
        until(
            &client,
            "the first conversation reopened from the list",
            &format!("return location.hash === '#{id}' && document.querySelectorAll('#messages .msg').length === 3"),
        )
        .await;
        screenshot(&client).await;

        // Delete (two clicks) the second one.
        let del = format!("#conversations li[data-id=\"{other}\"] .delete");
        click(&client, &del).await;
        click(&client, &del).await;
        until(
            &client,
            "the deleted conversation to leave the list",
            &format!(
                "return !document.querySelector('#conversations li[data-id=\"{other}\"]')
                     && document.querySelectorAll('#conversations li').length === 1"
            ),
        )
        .await;
        let (status, _) = stack.get_conversation(&user, other).await;
        assert_eq!(status, 404, "deleted");
    })
    .await;
}

/// Stop a long answer; reload in the middle of another and see the page re-attach.
/// Needs the stop and resume routes (SPEC sections 2, 3, 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_stops_an_answer_and_resumes_another_after_a_reload() {
    let stack = Stack::get().await;
    let page = page_url(&stack);
    let user = user_of(&stack);
    with_browser("chat-page-stop-resume", |client| async move {
        open_page(&client, &page, &user).await;
        let id = new_chat(&client).await;

        // Stop: a long answer ends `stopped` with the text so far.
        let m = marker();
        let full = LONG;
        stack
            .scenario(json!({"match": m, "tokens": tokens(full), "token_delay_ms": 120}))
            .await;
        type_and_send(&client, &format!("How is samosa chaat made? [{m}]")).await;
        until(
            &client,
            "a few tokens of the long answer",
            &streaming_with("Samosa chaat starts"),
        )
        .await;
        click(&client, "#stop").await;
        let a = until(
            &client,
            "the answer to end stopped (POST .../stop)",
            &answer_where("b.dataset.status === 'stopped'"),
        )
        .await;
        let kept = a["text"].as_str().expect("text").to_owned();
        assert!(
            !kept.is_empty() && kept.len() < full.len() && full.starts_with(&kept),
            "a stopped answer keeps a strict prefix: {kept:?}"
        );
        let (_, conv) = stack.get_conversation(&user, id).await;
        let answer = &conv["messages"][1];
        assert_eq!(answer["status"], "stopped", "{conv}");
        assert_eq!(answer["content"], kept.as_str());

        // Resume: reload while another answer streams; the page lists it as live,
        // re-attaches (GET .../stream) and follows it to its end.
        let m2 = marker();
        stack
            .scenario(json!({"match": m2, "tokens": tokens(full), "token_delay_ms": 120}))
            .await;
        type_and_send(&client, &format!("Again, all of it please [{m2}]")).await;
        until(
            &client,
            "a few tokens before the reload",
            &streaming_with("Samosa chaat"),
        )
        .await;
        client.refresh().await.expect("reload");
        until_ready(&client).await;
        until(
            &client,
            "the page to re-attach to the live answer after the reload",
            "return document.body.dataset.resumed === '1'",
        )
        .await;
        until_answer(&client, "complete", full).await;
        let (_, conv) = stack.get_conversation(&user, id).await;
        let answer = &conv["messages"][3];
        assert_eq!(answer["status"], "complete", "{conv}");
        assert_eq!(answer["content"], full);
    })
    .await;
}

/// The page as the test's browser saw it: always under the target directory, and
/// at `CHAT_PAGE_SCREENSHOT` (a path from the repository root) when set.
async fn screenshot(client: &Client) {
    let png = client.screenshot().await.expect("screenshot");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chat-page.png");
    std::fs::write(&tmp, &png).expect("write screenshot");
    if let Ok(path) = std::env::var("CHAT_PAGE_SCREENSHOT") {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path);
        std::fs::write(&path, &png).expect("write the README's screenshot");
    }
}
