//! Cold starts: a new function process per sample; Init Duration (exec to its
//! first `GET .../next`) and the TTFT of its first send.

use crate::driver::{Bench, Res, INIT_TIMEOUT, SMALL_TOKENS};
use crate::procs;
use crate::share::Cgroup;
use crate::stats::ms;

pub struct Cold {
    pub init_ms: Vec<f64>,
    pub first_ttft_ms: Vec<f64>,
    /// Function CPU from exec to the first poll (ms).
    pub init_cpu_ms: Vec<f64>,
    pub hwm_kb: Vec<u64>,
}

pub async fn run(b: &mut Bench, cgroup: Option<&Cgroup>, n: usize) -> Res<Cold> {
    let mut cold = Cold {
        init_ms: Vec::new(),
        first_ttft_ms: Vec::new(),
        init_cpu_ms: Vec::new(),
        hwm_kb: Vec::new(),
    };
    for i in 0..n {
        let f = b
            .start_function(&format!("send-cold-{i}"), cgroup, &[])
            .await?;
        let polled = f.api.poll(INIT_TIMEOUT).await?;
        cold.init_ms.push(ms(polled - f.started));
        cold.init_cpu_ms
            .push(procs::cpu_ns(f.proc.pid()).unwrap_or(0) as f64 / 1e6);
        let run = b.send(&f.api, SMALL_TOKENS).await?;
        cold.first_ttft_ms.push(ms(run.ttft()));
        cold.hwm_kb
            .push(procs::status_kb(f.proc.pid(), "VmHWM").unwrap_or(0));
    }
    Ok(cold)
}
