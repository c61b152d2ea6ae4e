//! A warm function process: sends paired with direct upstream calls (TTFT
//! overhead, function CPU per send), long answers (relay cost per token), then
//! its peak memory.

use crate::driver::{Bench, Res, INIT_TIMEOUT, SMALL_TOKENS, WARMUP_SENDS};
use crate::procs;
use crate::share::Cgroup;
use crate::stats::ms;

pub struct Warm {
    pub direct_ttft_ms: Vec<f64>,
    pub send_ttft_ms: Vec<f64>,
    pub overhead_ms: Vec<f64>,
    /// The DynamoDB floor, one sample right after each send
    /// ([`Bench::floor_sample`]), so both meet the same moment's load.
    pub floor_ms: Vec<f64>,
    pub small_cpu_us: Vec<f64>,
    pub small_duration_ms: Vec<f64>,
    /// Last token → end of the invocation (storing the answer), 5-token sends.
    pub tail_ms: Vec<f64>,
    pub relay_direct_ms: Vec<f64>,
    pub relay_send_ms: Vec<f64>,
    pub relay_send_done_ms: Vec<f64>,
    pub relay_cpu_us: Vec<f64>,
    pub relay_tokens: usize,
    pub hwm_kb: u64,
    pub rss_kb: u64,
    /// The cgroup's peak memory (bytes), when the function ran in one.
    pub cgroup_peak: Option<u64>,
    /// CFS periods throttled and time throttled (ns) during the warm runs.
    pub throttled: Option<(u64, u64)>,
}

impl Warm {
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

pub async fn run(
    b: &mut Bench,
    cgroup: Option<&Cgroup>,
    sends: usize,
    relay_tokens: usize,
    relay_runs: usize,
) -> Res<Warm> {
    if let Some(g) = cgroup {
        g.reset_memory_peak();
    }
    let throttled_before = cgroup.and_then(Cgroup::throttled);
    let f = b.start_function("send-warm", cgroup, &[]).await?;
    let pid = f.proc.pid();
    f.api.poll(INIT_TIMEOUT).await?;
    let mut w = Warm {
        direct_ttft_ms: Vec::new(),
        send_ttft_ms: Vec::new(),
        overhead_ms: Vec::new(),
        floor_ms: Vec::new(),
        small_cpu_us: Vec::new(),
        small_duration_ms: Vec::new(),
        tail_ms: Vec::new(),
        relay_direct_ms: Vec::new(),
        relay_send_ms: Vec::new(),
        relay_send_done_ms: Vec::new(),
        relay_cpu_us: Vec::new(),
        relay_tokens,
        hwm_kb: 0,
        rss_kb: 0,
        cgroup_peak: None,
        throttled: None,
    };
    for i in 0..WARMUP_SENDS + sends {
        let (started, times) = b.direct(SMALL_TOKENS).await?;
        let direct = ms(times[0] - started);
        let cpu = procs::cpu_ns(pid).unwrap_or(0);
        let run = b.send(&f.api, SMALL_TOKENS).await?;
        let cpu = procs::cpu_ns(pid).unwrap_or(0).saturating_sub(cpu);
        let floor = b.floor_sample().await?;
        if i < WARMUP_SENDS {
            continue;
        }
        w.floor_ms.push(floor);
        let send = ms(run.ttft());
        w.direct_ttft_ms.push(direct);
        w.send_ttft_ms.push(send);
        w.overhead_ms.push(send - direct);
        w.small_cpu_us.push(cpu as f64 / 1000.0);
        w.small_duration_ms
            .push(ms(run.invoked.finished - run.invoked.released));
        if let Some(last) = run.tokens.last() {
            w.tail_ms
                .push(ms(run.invoked.finished.saturating_duration_since(*last)));
        }
    }
    b.reset_mock().await?;
    let n = relay_tokens;
    for _ in 0..relay_runs {
        let (_, times) = b.direct(n).await?;
        w.relay_direct_ms.push(ms(times[n - 1] - times[0]));
        let cpu = procs::cpu_ns(pid).unwrap_or(0);
        let run = b.send(&f.api, n).await?;
        let cpu = procs::cpu_ns(pid).unwrap_or(0).saturating_sub(cpu);
        w.relay_send_ms.push(ms(run.tokens[n - 1] - run.tokens[0]));
        w.relay_send_done_ms.push(ms(run.done - run.tokens[0]));
        w.relay_cpu_us.push(cpu as f64 / 1000.0);
        b.reset_mock().await?;
    }
    w.hwm_kb = procs::status_kb(pid, "VmHWM").ok_or("no VmHWM")?;
    w.rss_kb = procs::status_kb(pid, "VmRSS").unwrap_or(0);
    w.cgroup_peak = cgroup.and_then(Cgroup::memory_peak);
    w.throttled = match (throttled_before, cgroup.and_then(Cgroup::throttled)) {
        (Some((p0, t0)), Some((p1, t1))) => Some((p1 - p0, t1 - t0)),
        _ => None,
    };
    Ok(w)
}
