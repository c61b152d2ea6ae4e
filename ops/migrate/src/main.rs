//! `migrate`: the Python chat-api's PostgreSQL into the functions' DynamoDB table.
//!
//! ```text
//! migrate copy|catch-up|verify|dry-run --postgres URL --table NAME
//!         [--postgres-ca FILE] [--concurrency N] [--report FILE]
//! ```
//!
//! It only reads PostgreSQL. See docs/cutover.md for the decisions it takes and
//! the runbook it belongs to. Exit status: 0 done (verify: no difference),
//! 1 verify found differences or the run failed midway (run it again: it
//! finishes), 2 bad input (nothing was written).

mod plan;
mod report;
mod run;
mod source;
mod target;

use std::process::ExitCode;
use std::time::Instant;

use aws_config::retry::RetryConfig;
use aws_config::BehaviorVersion;
use thiserror::Error;

use crate::report::{Progress, Tally};
use crate::run::{Mode, Run};
use crate::source::Source;
use crate::target::Target;

const USAGE: &str = "usage: migrate copy|catch-up|verify|dry-run --postgres URL --table NAME
               [--postgres-ca FILE] [--concurrency N] [--report FILE]
  copy      copy every conversation not copied yet or changed since its copy
  catch-up  the same, and delete what was deleted in PostgreSQL since (after a copy)
  verify    compare both sides per conversation; exit 1 on any difference
  dry-run   say what a copy would do and every row it cannot copy as it is; write nothing
  --postgres defaults to $MIGRATE_POSTGRES_URL, --table to $TABLE_NAME, --postgres-ca (the CA
  bundle a TLS server's certificate must chain to; Mozilla's roots without it) to
  $PGSSLROOTCERT; the URL's sslmode (disable, prefer, require) decides TLS. DynamoDB's region,
  credentials and endpoint come from the AWS SDK's environment (AWS_REGION, AWS_PROFILE,
  AWS_ENDPOINT_URL_DYNAMODB).";

#[derive(Debug, Error)]
pub enum Failure {
    /// The command line, the database or the table is not what a run needs;
    /// nothing was written.
    #[error("{0}")]
    Input(String),
    /// PostgreSQL failed during the run.
    #[error("{0}")]
    Source(String),
    /// DynamoDB failed during the run.
    #[error("{0}")]
    Target(String),
}

struct Args {
    mode: Mode,
    postgres: String,
    table: String,
    concurrency: usize,
    report: Option<String>,
    postgres_ca: Option<std::path::PathBuf>,
}

fn args(mut raw: impl Iterator<Item = String>) -> Result<Args, Failure> {
    let bad = |m: String| Failure::Input(format!("{m}\n{USAGE}"));
    let mode = raw.next().ok_or_else(|| bad("no mode given".into()))?;
    let mode = Mode::parse(&mode).ok_or_else(|| bad(format!("unknown mode `{mode}`")))?;
    let mut postgres = std::env::var("MIGRATE_POSTGRES_URL").ok();
    let mut table = std::env::var("TABLE_NAME").ok();
    let mut concurrency = 32;
    let mut report = None;
    let mut postgres_ca = std::env::var_os("PGSSLROOTCERT").map(Into::into);
    while let Some(flag) = raw.next() {
        let mut value = || {
            raw.next()
                .ok_or_else(|| bad(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--postgres" => postgres = Some(value()?),
            "--table" => table = Some(value()?),
            "--report" => report = Some(value()?),
            "--postgres-ca" => postgres_ca = Some(value()?.into()),
            "--concurrency" => {
                concurrency = value()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| bad("--concurrency: a number from 1 to 256".into()))?
            }
            other => return Err(bad(format!("unknown argument `{other}`"))),
        }
    }
    Ok(Args {
        mode,
        postgres: postgres
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad("--postgres (or MIGRATE_POSTGRES_URL) is required".into()))?,
        table: table
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad("--table (or TABLE_NAME) is required".into()))?,
        concurrency,
        report,
        postgres_ca,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    match migrate().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("migrate: {e}");
            match e {
                Failure::Input(_) => ExitCode::from(2),
                Failure::Source(_) | Failure::Target(_) => {
                    eprintln!(
                        "migrate: stopped midway; running the same command again finishes the work"
                    );
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn migrate() -> Result<ExitCode, Failure> {
    let args = args(std::env::args().skip(1))?;
    let started = Instant::now();
    let started_at =
        samosachaat::foundation::time_fmt::format(samosachaat::foundation::time_fmt::now());
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(8))
        .load()
        .await;
    let target = Target::new(aws_sdk_dynamodb::Client::new(&sdk), args.table.clone());
    target.check().await?;
    let since = target.last_run().await?;
    if args.mode == Mode::CatchUp && since.is_none() {
        return Err(Failure::Input(
            "catch-up follows a finished copy, and the table records none: run `migrate copy` first".into(),
        ));
    }
    let mut source = Source::connect(&args.postgres, args.postgres_ca.as_deref()).await?;
    let snapshot = source.snapshot().await?;
    let progress = Progress::new(snapshot.count().await?);
    let tally = Tally::default();
    Run {
        mode: args.mode,
        concurrency: args.concurrency,
        snapshot: &snapshot,
        target: &target,
        tally: &tally,
        now: samosachaat::foundation::time_fmt::now(),
    }
    .go(&progress)
    .await?;
    progress.done();
    if matches!(args.mode, Mode::Copy | Mode::CatchUp) {
        target.record_run(args.mode.name(), &started_at).await?;
    }
    let summary = report::summary(
        args.mode.name(),
        &tally,
        &target.pushback,
        started,
        since.as_ref().filter(|_| args.mode == Mode::CatchUp),
    );
    print!("{}", report::text(&summary));
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&summary).unwrap_or_default();
        std::fs::write(path, json)
            .map_err(|e| Failure::Input(format!("--report {path}: cannot write: {e}")))?;
    }
    if args.mode == Mode::Verify && tally.differences() > 0 {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
