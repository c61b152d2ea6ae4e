//! The Python chat-api this replaces (`shared/peers/python-chat-api`), run by its
//! own launcher against the same mock upstream, with the same answers: process
//! start to first answer, TTFT overhead paired with direct calls, relay cost per
//! token (wall and CPU), peak memory. It is a long-lived uvicorn process on the
//! whole host (no Lambda share: that is how it was deployed).

use std::path::Path;
use std::time::Instant;

use serde_json::json;
use uuid::Uuid;

use crate::driver::{post_stream, Bench, Res, SMALL_TOKENS, WARMUP_SENDS};
use crate::procs;
use crate::stats::ms;

pub struct Peer {
    /// Process start → `ready` printed by its launcher (ms).
    pub ready_ms: f64,
    /// Process start → first token of its first answer (ms).
    pub first_answer_ms: f64,
    pub direct_ttft_ms: Vec<f64>,
    pub send_ttft_ms: Vec<f64>,
    pub overhead_ms: Vec<f64>,
    pub small_cpu_us: Vec<f64>,
    pub relay_direct_ms: Vec<f64>,
    pub relay_send_ms: Vec<f64>,
    pub relay_cpu_us: Vec<f64>,
    pub relay_tokens: usize,
    pub hwm_kb: u64,
}

impl Peer {
    /// Relay cost per token, wall (µs), one value per long answer.
    pub fn relay_wall_us(&self) -> Vec<f64> {
        super::relay_wall_us(
            &self.relay_send_ms,
            &self.relay_direct_ms,
            self.relay_tokens,
        )
    }

    /// CPU per relayed token (µs): the long send minus a short one.
    pub fn relay_cpu_per_token_us(&self) -> f64 {
        super::relay_cpu_per_token_us(&self.relay_cpu_us, &self.small_cpu_us, self.relay_tokens)
    }
}

struct Client {
    addr: std::net::SocketAddr,
    auth: String,
    http: reqwest::Client,
}

impl Client {
    async fn conversation(&self) -> Res<String> {
        let resp = self
            .http
            .post(format!("http://{}/api/conversations", self.addr))
            .header("authorization", &self.auth)
            .json(&json!({}))
            .send()
            .await
            .map_err(|e| format!("peer: create conversation: {e}"))?;
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("peer: create conversation: {e}"))?;
        v["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("peer: create conversation answered {v}"))
    }

    /// One send on a fresh conversation: its start and its token arrivals.
    async fn send(&self, b: &mut Bench, tokens: usize) -> Res<(Instant, Vec<Instant>)> {
        let marker = b.marker("peer");
        b.scenario(&marker, tokens).await?;
        let id = self.conversation().await?;
        let body = json!({ "content": format!("benchmark message {marker}") }).to_string();
        let headers = format!(
            "authorization: {}\r\naccept: text/event-stream\r\n",
            self.auth
        );
        let path = format!("/api/conversations/{id}/messages");
        let (started, times) = post_stream(self.addr, &path, &headers, body.as_bytes()).await?;
        if times.len() != tokens {
            return Err(format!("peer: {} tokens instead of {tokens}", times.len()));
        }
        Ok((started, times))
    }
}

pub async fn run(
    b: &mut Bench,
    python: &Path,
    serve: &Path,
    sends: usize,
    relay_tokens: usize,
    relay_runs: usize,
) -> Res<Peer> {
    let (proc, addr, started, ready) = procs::peer(python, serve, &b.dir, b.mock).await?;
    let pid = proc.pid();
    let client = Client {
        addr,
        auth: format!("Bearer peer-{}", Uuid::new_v4()),
        http: reqwest::Client::new(),
    };
    let (_, first) = client.send(b, SMALL_TOKENS).await?;
    let mut p = Peer {
        ready_ms: ms(ready - started),
        first_answer_ms: ms(first[0] - started),
        direct_ttft_ms: Vec::new(),
        send_ttft_ms: Vec::new(),
        overhead_ms: Vec::new(),
        small_cpu_us: Vec::new(),
        relay_direct_ms: Vec::new(),
        relay_send_ms: Vec::new(),
        relay_cpu_us: Vec::new(),
        relay_tokens,
        hwm_kb: 0,
    };
    for i in 0..WARMUP_SENDS + sends {
        let (d0, dt) = b.direct(SMALL_TOKENS).await?;
        let cpu = procs::cpu_ns(pid).unwrap_or(0);
        let (s0, st) = client.send(b, SMALL_TOKENS).await?;
        let cpu = procs::cpu_ns(pid).unwrap_or(0).saturating_sub(cpu);
        if i < WARMUP_SENDS {
            continue;
        }
        let (direct, send) = (ms(dt[0] - d0), ms(st[0] - s0));
        p.direct_ttft_ms.push(direct);
        p.send_ttft_ms.push(send);
        p.overhead_ms.push(send - direct);
        p.small_cpu_us.push(cpu as f64 / 1000.0);
    }
    b.reset_mock().await?;
    let n = relay_tokens;
    for _ in 0..relay_runs {
        let (_, dt) = b.direct(n).await?;
        p.relay_direct_ms.push(ms(dt[n - 1] - dt[0]));
        let cpu = procs::cpu_ns(pid).unwrap_or(0);
        let (_, st) = client.send(b, n).await?;
        p.relay_cpu_us
            .push(procs::cpu_ns(pid).unwrap_or(0).saturating_sub(cpu) as f64 / 1000.0);
        p.relay_send_ms.push(ms(st[n - 1] - st[0]));
        b.reset_mock().await?;
    }
    p.hwm_kb = procs::status_kb(pid, "VmHWM").ok_or("peer: no VmHWM")?;
    Ok(p)
}
