//! `bench`: the speed users feel from the `send` function, on this machine, under
//! the CPU share Lambda gives each memory size, beside the Python service it
//! replaces.
//!
//! ```text
//! bench [--memory host,128,256,512,1024] [--period 20[,100]] [--sends 40]
//!       [--cold-starts 7] [--relay-tokens 5000] [--relay-runs 5] [--count-sends 10]
//!       [--peer DIR | --no-peer] [--peer-python PATH] [--bin-dir target/release]
//!       [--dynamodb-local .tools/dynamodb-local] [--keep] [--env K=V]...
//! ```
//!
//! Layout: `driver` (processes, one send, one direct upstream call), `share`
//! (Lambda's CPU share and memory limit through cgroups), `scenarios/` (cold
//! starts, warm sends and relays, DynamoDB requests, the Python peer), `report`
//! and `cost` (the tables), and the wire pieces (`http1`, `runtime_api`,
//! `proxy`, `capacity`). `scripts/bench.sh` builds everything and runs it. Not
//! part of the test suite: nothing here asserts a time.

mod capacity;
mod cost;
mod driver;
mod http1;
mod procs;
mod proxy;
mod report;
mod runtime_api;
mod scenarios;
mod share;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::driver::{Bench, Res, SMALL_TOKENS};
use crate::report::ShareRun;
use crate::share::Share;

struct Args {
    shares: Vec<Share>,
    sends: usize,
    cold_starts: usize,
    relay_tokens: usize,
    relay_runs: usize,
    count_sends: usize,
    bin_dir: PathBuf,
    /// Where DynamoDB Local is installed (`DynamoDBLocal.jar`).
    dynamodb_local: PathBuf,
    /// The Python peer's directory and interpreter, unless `--no-peer`.
    peer: Option<(PathBuf, PathBuf)>,
    keep: bool,
    /// Extra environment of the function (`--env K=V`), for experiments.
    env: Vec<(String, String)>,
}

const USAGE: &str = "usage: bench [--memory host,128,256,512,1024] [--period 20[,100]] \
    [--sends N] [--cold-starts N] [--relay-tokens N] [--relay-runs N] [--count-sends N] \
    [--peer DIR | --no-peer] [--peer-python PATH] [--bin-dir DIR] \
    [--dynamodb-local DIR] [--keep] [--env K=V]...";

fn parse_args() -> Res<Args> {
    let root = workspace_root();
    let mut memory = "host,128,256,512,1024".to_owned();
    let mut period = "20".to_owned();
    let mut peer_dir = Some(root.join("../shared/peers/python-chat-api"));
    let mut peer_python = root.join(".tools/peer-venv/bin/python");
    let mut a = Args {
        shares: Vec::new(),
        sends: 40,
        // Init under a share is bimodal (see the README's "Bursts"): enough
        // samples for its median to be steady.
        cold_starts: 15,
        relay_tokens: 5000,
        relay_runs: 5,
        count_sends: 10,
        bin_dir: root.join("target/release"),
        dynamodb_local: root.join(".tools/dynamodb-local"),
        peer: None,
        keep: false,
        env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|_| format!("not a number: {v}"));
        match flag.as_str() {
            "--memory" => memory = value()?,
            "--period" => period = value()?,
            "--sends" => a.sends = num(value()?)?.max(1),
            "--cold-starts" => a.cold_starts = num(value()?)?.max(1),
            "--relay-tokens" => a.relay_tokens = num(value()?)?.max(SMALL_TOKENS + 2),
            "--relay-runs" => a.relay_runs = num(value()?)?.max(1),
            "--count-sends" => a.count_sends = num(value()?)?,
            "--peer" => peer_dir = Some(PathBuf::from(value()?)),
            "--no-peer" => peer_dir = None,
            "--peer-python" => peer_python = PathBuf::from(value()?),
            "--bin-dir" => a.bin_dir = PathBuf::from(value()?),
            "--dynamodb-local" => a.dynamodb_local = PathBuf::from(value()?),
            "--keep" => a.keep = true,
            "--env" => {
                let kv = value()?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--env {kv}: expected K=V"))?;
                a.env.push((k.to_owned(), v.to_owned()));
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    a.shares = share::parse(&memory, &period)?;
    a.peer = peer_dir.map(|d| (d, peer_python));
    Ok(a)
}

fn workspace_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

/// `MemorySize` in the template's `Globals` (what the functions ship with).
fn template_memory() -> Option<u32> {
    let text = std::fs::read_to_string(workspace_root().join("template.yaml")).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("MemorySize:"))
        .and_then(|v| v.trim().parse().ok())
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
    match run(&args, &dir).await {
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

async fn run(args: &Args, dir: &Path) -> Res<String> {
    for bin in ["send", "mock-inference"] {
        if !args.bin_dir.join(bin).is_file() {
            return Err(format!(
                "{} missing: build first (cargo build --release -p send -p mock-inference), or run scripts/bench.sh",
                args.bin_dir.join(bin).display()
            ));
        }
    }
    eprintln!("bench: starting DynamoDB Local and mock inference");
    let mut b = Bench::start(&args.bin_dir, &args.dynamodb_local, dir, &args.env).await?;

    let mut runs = Vec::new();
    for (k, s) in args.shares.iter().enumerate() {
        let name = format!("samosachaat-bench-{}-{k}", std::process::id());
        let (cgroup, unapplied) = match share::create(s, &name) {
            Ok(g) => (g, None),
            Err(why) => {
                eprintln!(
                    "bench: CPU/memory controller not writable ({why}): {} runs UNTHROTTLED",
                    s.label()
                );
                (None, Some(why))
            }
        };
        b.memory_mb = s.memory_mb;
        eprintln!(
            "bench: {}: {} cold starts, {} sends (+warm-up), {} relays of {} tokens",
            s.label(),
            args.cold_starts,
            args.sends,
            args.relay_runs,
            args.relay_tokens
        );
        let cold = scenarios::cold::run(&mut b, cgroup.as_ref(), args.cold_starts).await?;
        let warm = scenarios::warm::run(
            &mut b,
            cgroup.as_ref(),
            args.sends,
            args.relay_tokens,
            args.relay_runs,
        )
        .await?;
        runs.push(ShareRun {
            share: *s,
            unapplied,
            cold,
            warm,
        });
    }
    b.memory_mb = None;

    let counts = if args.count_sends > 0 {
        eprintln!(
            "bench: 2 x {} sends (without, with Idempotency-Key) through DynamoDB and inference proxies",
            args.count_sends
        );
        b.reset_mock().await?;
        scenarios::requests::run(&mut b, args.count_sends).await?
    } else {
        Vec::new()
    };

    let peer = match &args.peer {
        None => None,
        Some((peer_dir, python)) if !python.is_file() || !peer_dir.is_dir() => Some(Err(format!(
            "{} or {} missing; scripts/bench.sh installs it",
            peer_dir.display(),
            python.display()
        ))),
        Some((peer_dir, python)) => {
            eprintln!("bench: the Python peer: same sends and relays");
            b.reset_mock().await?;
            Some(
                scenarios::peer::run(
                    &mut b,
                    python,
                    &peer_dir.join("serve.py"),
                    args.sends,
                    args.relay_tokens,
                    args.relay_runs,
                )
                .await,
            )
        }
    };
    if let Some(Err(e)) = &peer {
        eprintln!("bench: python peer: {e}");
    }

    eprintln!("bench: live answers: a 20 s answer with a resumed reader, then stops");
    b.reset_mock().await?;
    let live = scenarios::live::run(&mut b, 8).await;

    let sizes: Vec<(String, Option<u64>)> = ["send", "regenerate", "conversations"]
        .iter()
        .map(|n| {
            let size = std::fs::metadata(args.bin_dir.join(n))
                .ok()
                .map(|m| m.len());
            ((*n).to_owned(), size)
        })
        .collect();
    Ok(report::render(&report::Input {
        bin_dir: args.bin_dir.clone(),
        extra_env: &args.env,
        shipped_mb: template_memory(),
        runs: &runs,
        counts: &counts,
        peer: peer.as_ref().map(|p| p.as_ref().map_err(Clone::clone)),
        sizes: &sizes,
    }) + &scenarios::live::render(&live))
}
