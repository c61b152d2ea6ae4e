//! The processes the benchmark runs: DynamoDB Local, the mock inference server
//! and the function itself; and what /proc says about them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (and reaped) when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    /// SIGTERM first (so a profiler wrapping the process can write its data),
    /// SIGKILL after two seconds.
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_file(dir: &Path, name: &str) -> std::io::Result<File> {
    File::create(dir.join(format!("{name}.log")))
}

/// DynamoDB Local (`DynamoDBLocal.jar` in `install`, run by `java`) in memory
/// on a free port; waits until it answers.
pub async fn dynamodb_local(install: &Path, dir: &Path) -> Result<(Proc, SocketAddr), String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let log = log_file(dir, "dynamodb-local").map_err(|e| e.to_string())?;
    let jar = install.join("DynamoDBLocal.jar");
    if !jar.is_file() {
        return Err(format!(
            "{} missing (run scripts/bootstrap.sh)",
            jar.display()
        ));
    }
    let child = Command::new("java")
        .arg(format!(
            "-Djava.library.path={}",
            install.join("DynamoDBLocal_lib").display()
        ))
        .arg("-jar")
        .arg(&jar)
        .args(["-inMemory", "-sharedDb", "-disableTelemetry", "-port"])
        .arg(port.to_string())
        // It writes a metadata file where it starts.
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start java: {e} (run scripts/bootstrap.sh)"))?;
    let mut proc = Proc { child };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok((proc, addr));
        }
        if let Some(status) = proc.exited() {
            return Err(format!(
                "DynamoDB Local exited ({status}); log in {}",
                dir.display()
            ));
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("DynamoDB Local did not listen within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The mock inference server (`--addr 127.0.0.1:0`); its address from its
/// `listening on` line.
pub async fn mock_inference(
    bin: &Path,
    dir: &Path,
    api_key: &str,
) -> Result<(Proc, SocketAddr), String> {
    let log = log_file(dir, "mock-inference").map_err(|e| e.to_string())?;
    let mut child = Command::new(bin)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--api-key",
            api_key,
            "--token-delay-ms",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let proc = Proc { child };
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .map_err(|_| "mock-inference did not start within 30 s")?
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("unexpected mock-inference line {line:?}"))?;
    Ok((proc, addr))
}

/// Starts the function binary the way Lambda does: a clean environment of the
/// Lambda variables and the function's configuration, output to a log file.
/// `join` are `cgroup.procs` files the process enters before it execs (so its
/// init already runs under Lambda's CPU share). Returns the process and the
/// instant its exec began: after the fork and the cgroup joins, which are the
/// sandbox's making (Lambda's Init Duration does not count them; a cgroup join
/// alone took 0.3 to 13 ms here), and before the binary is loaded, which is.
pub fn function(
    bin: &Path,
    dir: &Path,
    name: &str,
    env: &BTreeMap<String, String>,
    join: Vec<File>,
) -> Result<(Proc, Instant), String> {
    let log = log_file(dir, name).map_err(|e| e.to_string())?;
    let (mut exec_read, exec_write) = std::io::pipe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    let base = Instant::now();
    // SAFETY: between fork and exec the closure only reads the monotonic clock
    // and calls write(2) on files opened before the fork, with buffers on the
    // stack: no allocation, no locks. Writing "0" to a cgroup v1 `cgroup.procs`
    // moves the writing process. The pipe is close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            for mut f in &join {
                f.write_all(b"0")?;
            }
            let at = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            (&exec_write).write_all(&at.to_le_bytes())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    // The closure (and its copy of the write end) is dropped with `cmd`.
    drop(cmd);
    let mut at = [0u8; 8];
    exec_read
        .read_exact(&mut at)
        .map_err(|e| format!("{}: no exec time from the child: {e}", bin.display()))?;
    let started = base + Duration::from_nanos(u64::from_le_bytes(at));
    Ok((Proc { child }, started))
}

/// A field of /proc/<pid>/status in kB (`VmHWM`, `VmRSS`).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time of all threads of `pid` so far (schedstat, nanoseconds).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path: PathBuf = task.ok()?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())?;
        }
    }
    Some(total)
}

/// The Python peer (`serve.py` of `shared/peers/python-chat-api`) on a free port,
/// run by its own launcher. Returns the process, its address, the instant before
/// it was started and the instant it printed `ready`.
pub async fn peer(
    python: &Path,
    serve: &Path,
    dir: &Path,
    inference: SocketAddr,
) -> Result<(Proc, SocketAddr, Instant, Instant), String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let log = log_file(dir, "peer").map_err(|e| e.to_string())?;
    let mut cmd = Command::new(python);
    cmd.arg(serve)
        .args(["--port", &port.to_string()])
        .args(["--inference", &format!("http://{inference}")])
        .args(["--db", &dir.join("peer.db").display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let proc = Proc { child };
    let ready = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) if line.starts_with("ready ") => return Some(Instant::now()),
                Ok(_) => {}
            }
        }
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .map_err(|_| "the peer did not print ready within 60 s")?
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the peer exited before ready; log in {}", dir.display()))?;
    Ok((
        proc,
        SocketAddr::from(([127, 0, 0, 1], port)),
        started,
        ready,
    ))
}
