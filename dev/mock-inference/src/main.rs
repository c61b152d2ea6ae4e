//! `mock-inference [--addr 127.0.0.1:8900] [--api-key K] [--token-delay-ms 5]`
//!
//! The API key may also come from `MOCK_API_KEY` (the flag wins). Prints one line,
//! `mock-inference listening on http://ADDR`, once listening; logs go to stderr
//! (`RUST_LOG` filters them, default `info`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use mock_inference::{serve, Config};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

const USAGE: &str =
    "usage: mock-inference [--addr 127.0.0.1:8900] [--api-key K] [--token-delay-ms 5]";

struct Args {
    addr: String,
    api_key: Option<String>,
    token_delay_ms: u64,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        addr: "127.0.0.1:8900".to_owned(),
        api_key: None,
        token_delay_ms: 5,
    };
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--addr" => parsed.addr = value()?,
            "--api-key" => parsed.api_key = Some(value()?),
            "--token-delay-ms" => {
                let v = value()?;
                parsed.token_delay_ms = v
                    .parse()
                    .map_err(|_| format!("--token-delay-ms: not a number of milliseconds: {v}"))?;
            }
            _ => return Err(format!("unknown argument: {flag}")),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            if msg.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("mock-inference: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let api_key = args
        .api_key
        .or_else(|| std::env::var("MOCK_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let cfg = Config {
        api_key,
        token_delay: Duration::from_millis(args.token_delay_ms),
    };

    let listener = match TcpListener::bind(&args.addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("mock-inference: cannot listen on {}: {err}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("mock-inference: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Scripts wait for this exact line (and read the port from it).
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "mock-inference listening on http://{addr}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);
    tracing::info!(%addr, api_key = cfg.api_key.is_some(), "listening");

    serve(listener, cfg).await;
    ExitCode::SUCCESS
}
