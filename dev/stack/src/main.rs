//! Developer CLI for the local stack.
//!
//! ```text
//! stack create-table                      create the table (TABLE_NAME) on the local endpoint
//! stack token [--user UUID] [--ttl SECS]  mint an access token like the auth service's
//! stack conversation [--user UUID]      create a conversation through the conversations
//!                                         function and print its id
//! stack chat [--user UUID] [--conversation ID] MESSAGE
//!                                         create a conversation (unless given) through the
//!                                         conversations function and stream a reply from send
//! ```
//!
//! Reads `TABLE_NAME`, `AWS_ENDPOINT_URL_DYNAMODB`, `JWT_PRIVATE_KEY_FILE`,
//! `JWT_ISSUER` and `FUNCTIONS_URL` (default `http://127.0.0.1:9000/lambda-url`).

use std::io::Write;
use std::process::ExitCode;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use samosachaat::adapters::upstream::sse::{Event, SseReader};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stack: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> Result<(), BoxError> {
    let (command, rest) = args
        .split_first()
        .ok_or("usage: stack create-table | token | chat")?;
    let opts = Opts::parse(rest)?;
    match command.as_str() {
        "create-table" => {
            let table = env("TABLE_NAME")?;
            let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let client = aws_sdk_dynamodb::Client::new(&aws);
            samosachaat::adapters::store::schema::create_table(&client, &table).await?;
            println!("table {table} ready");
            Ok(())
        }
        "token" => {
            println!("{}", mint(opts.user()?, opts.ttl)?);
            Ok(())
        }
        "chat" => chat(&opts).await,
        "conversation" => {
            let token = mint(opts.user()?, opts.ttl)?;
            println!(
                "{}",
                create_conversation(&reqwest::Client::new(), &functions_url(), &token).await?
            );
            Ok(())
        }
        other => Err(format!("unknown command {other:?}").into()),
    }
}

struct Opts {
    user: Option<Uuid>,
    conversation: Option<Uuid>,
    ttl: i64,
    words: Vec<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self, BoxError> {
        let mut opts = Opts {
            user: None,
            conversation: None,
            ttl: 3600,
            words: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--user" => opts.user = Some(Uuid::parse_str(value()?)?),
                "--conversation" => opts.conversation = Some(Uuid::parse_str(value()?)?),
                "--ttl" => opts.ttl = value()?.parse()?,
                _ => opts.words.push(arg.clone()),
            }
        }
        Ok(opts)
    }

    /// The given user, or a fixed local demo user so repeated runs share a sidebar.
    fn user(&self) -> Result<Uuid, BoxError> {
        Ok(self
            .user
            .unwrap_or(Uuid::parse_str("00000000-0000-4000-8000-000000000001")?))
    }
}

fn env(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn mint(user: Uuid, ttl: i64) -> Result<String, BoxError> {
    let pem = std::fs::read(env("JWT_PRIVATE_KEY_FILE")?)?;
    let key = EncodingKey::from_rsa_pem(&pem)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "sub": user.to_string(),
        "email": "dev@samosachaat.local",
        "name": "Local Developer",
        "iat": now,
        "exp": now + ttl,
        "iss": std::env::var("JWT_ISSUER").unwrap_or_else(|_| "samosachaat-auth".into()),
        "type": "access",
    });
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &key,
    )?)
}

async fn chat(opts: &Opts) -> Result<(), BoxError> {
    let base = functions_url();
    let message = opts.words.join(" ");
    if message.is_empty() {
        return Err("chat needs a message".into());
    }
    let token = mint(opts.user()?, opts.ttl)?;
    let http = reqwest::Client::new();
    let conversation = match opts.conversation {
        Some(id) => id,
        None => create_conversation(&http, &base, &token).await?,
    };
    eprintln!("conversation {conversation}");
    eprint!("you: {message}\nsamosaChaat: ");
    let mut resp = http
        .post(format!(
            "{base}/send/api/conversations/{conversation}/messages"
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "content": message }))
        .send()
        .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        return Err(format!("send: {status} {}", resp.text().await?).into());
    }
    let mut reader = SseReader::new();
    let mut events = Vec::new();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = resp.chunk().await? {
        reader.feed(&chunk, &mut events);
        for event in events.drain(..) {
            match event {
                Event::Token { text, .. } => {
                    print!("{text}");
                    stdout.flush()?;
                }
                Event::Other { json } => {
                    if json.contains("\"error\"") {
                        println!();
                        eprintln!("error event: {json}");
                    }
                }
                Event::Done => {}
            }
        }
    }
    println!();
    eprintln!(
        "\nsend more:  scripts/dev.sh chat --conversation {conversation} your next message\nread it:    curl -s -H \"authorization: Bearer $(scripts/dev.sh token)\" {base}/conversations/api/conversations/{conversation}"
    );
    Ok(())
}

fn functions_url() -> String {
    std::env::var("FUNCTIONS_URL").unwrap_or_else(|_| "http://127.0.0.1:9000/lambda-url".into())
}

/// Creates a conversation the way the frontend does: through the function.
async fn create_conversation(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> Result<Uuid, BoxError> {
    let resp = http
        .post(format!("{base}/conversations/api/conversations"))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await?;
    if status != reqwest::StatusCode::CREATED {
        return Err(format!("create conversation: {status} {body}").into());
    }
    let id = body["id"].as_str().ok_or("create conversation: no id")?;
    Ok(Uuid::parse_str(id)?)
}
