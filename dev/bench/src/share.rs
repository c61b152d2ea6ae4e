//! Lambda's CPU share and memory limit, applied to the measured function process
//! only, with the Linux cgroup v1 CPU and memory controllers.
//!
//! Lambda gives a function CPU in proportion to its memory: 1,769 MB is one vCPU,
//! so a function of `m` MB gets `m / 1769` of one CPU. Here that is a CFS bandwidth
//! quota (`cpu.cfs_quota_us = period × m / 1769`) in a child cgroup of our own,
//! and `memory.limit_in_bytes = m MiB` in another. The function process joins
//! both between fork and exec, so its init runs under the share too; the
//! benchmark, DynamoDB Local and the mock upstream stay unthrottled.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Lambda's "one vCPU" memory size.
pub const MB_PER_VCPU: f64 = 1769.0;
/// The kernel's smallest CFS quota.
const MIN_QUOTA_US: u64 = 1000;
const CPU_ROOT: &str = "/sys/fs/cgroup/cpu";
const MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";

/// One setting to measure under: a Lambda memory size and the CFS period used to
/// enforce its CPU share, or the whole host (`memory_mb` `None`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub memory_mb: Option<u32>,
    pub period_ms: u32,
}

impl Share {
    pub const HOST: Share = Share {
        memory_mb: None,
        period_ms: 0,
    };

    /// Fraction of one CPU Lambda gives this memory size (`None`: unlimited).
    pub fn cpus(&self) -> Option<f64> {
        self.memory_mb.map(|m| f64::from(m) / MB_PER_VCPU)
    }

    fn quota_us(&self) -> Option<(u64, u64)> {
        let period = u64::from(self.period_ms) * 1000;
        let cpus = self.cpus()?;
        Some((period, ((period as f64 * cpus) as u64).max(MIN_QUOTA_US)))
    }

    /// `128 MB / 20 ms` or `host`.
    pub fn label(&self) -> String {
        match self.memory_mb {
            Some(m) => format!("{m} MB / {} ms", self.period_ms),
            None => "host".into(),
        }
    }
}

/// The cgroups of one share, removed when dropped (after the processes in them
/// have exited).
#[derive(Debug)]
pub struct Cgroup {
    cpu: PathBuf,
    memory: PathBuf,
}

/// Whether the share could be applied; `Err` says why not (the run goes on
/// unthrottled and the report says so).
pub fn create(share: &Share, name: &str) -> Result<Option<Cgroup>, String> {
    let (Some((period, quota)), Some(mb)) = (share.quota_us(), share.memory_mb) else {
        return Ok(None);
    };
    let cpu = own_cgroup("cpu", CPU_ROOT)?.join(name);
    let memory = own_cgroup("memory", MEMORY_ROOT)?.join(name);
    let mkdir = |p: &Path| match fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("{}: {e}", p.display())),
    };
    mkdir(&cpu)?;
    let group = Cgroup {
        cpu: cpu.clone(),
        memory: memory.clone(),
    };
    // The quota must fit the period: set the period first when the old quota
    // is unlimited (-1, the default in a new group).
    write(&cpu.join("cpu.cfs_period_us"), &period.to_string())?;
    write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
    mkdir(&memory)?;
    write(
        &memory.join("memory.limit_in_bytes"),
        &(u64::from(mb) * 1024 * 1024).to_string(),
    )?;
    Ok(Some(group))
}

impl Cgroup {
    /// The `cgroup.procs` files to join, opened before fork so that the child
    /// only has to `write` to them (see `procs::function`). The CPU group is
    /// joined last, so the work of joining the memory group is not charged to
    /// the function's CPU quota.
    pub fn procs_files(&self) -> Result<Vec<File>, String> {
        [&self.memory, &self.cpu]
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))
            })
            .collect()
    }

    /// `(periods throttled, total time throttled in ns)` so far.
    pub fn throttled(&self) -> Option<(u64, u64)> {
        let text = fs::read_to_string(self.cpu.join("cpu.stat")).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        Some((field("nr_throttled ")?, field("throttled_time ")?))
    }

    /// The memory cgroup's peak usage (resident memory plus the page cache it
    /// charged, as Lambda's "Max Memory Used" counts), in bytes.
    pub fn memory_peak(&self) -> Option<u64> {
        fs::read_to_string(self.memory.join("memory.max_usage_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Starts a new peak measurement (the group must be empty or quiet).
    pub fn reset_memory_peak(&self) {
        let _ = write(&self.memory.join("memory.max_usage_in_bytes"), "0");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.cpu);
        let _ = fs::remove_dir(&self.memory);
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// This process's cgroup directory of a v1 controller (from /proc/self/cgroup).
fn own_cgroup(controller: &str, root: &str) -> Result<PathBuf, String> {
    let text = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let rel = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            parts.next();
            parts.next().zip(parts.next())
        })
        .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))
        .map(|(_, path)| path.trim_start_matches('/').to_owned())
        .ok_or_else(|| format!("no cgroup v1 {controller} controller (cgroup v2 only?)"))?;
    let dir = Path::new(root).join(rel);
    if !dir.join("cgroup.procs").exists() {
        return Err(format!("{} is not mounted", dir.display()));
    }
    Ok(dir)
}

/// Parses `--memory 128,256,host` and `--period 20,100` into the shares to run.
pub fn parse(memory: &str, periods: &str) -> Result<Vec<Share>, String> {
    let periods: Vec<u32> = periods
        .split(',')
        .map(|p| match p.trim().parse::<u32>() {
            Ok(ms) if (1..=1000).contains(&ms) => Ok(ms),
            _ => Err(format!("--period: {p} is not 1..1000 ms")),
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for m in memory.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        if m == "host" {
            out.push(Share::HOST);
            continue;
        }
        let mb = m
            .trim_end_matches("MB")
            .parse::<u32>()
            .ok()
            .filter(|mb| (128..=10240).contains(mb))
            .ok_or_else(|| format!("--memory: {m} is not host or 128..10240"))?;
        for &period_ms in &periods {
            out.push(Share {
                memory_mb: Some(mb),
                period_ms,
            });
        }
    }
    if out.is_empty() {
        return Err("--memory: nothing to run".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_the_share_of_the_period() {
        let s = Share {
            memory_mb: Some(1769),
            period_ms: 100,
        };
        assert_eq!(s.quota_us(), Some((100_000, 100_000)));
        let s = Share {
            memory_mb: Some(128),
            period_ms: 20,
        };
        assert_eq!(s.quota_us(), Some((20_000, 1447)));
        // Below the kernel's minimum the quota is the minimum.
        let s = Share {
            memory_mb: Some(128),
            period_ms: 5,
        };
        assert_eq!(s.quota_us(), Some((5_000, 1000)));
        assert_eq!(Share::HOST.quota_us(), None);
    }

    #[test]
    fn parses_memory_sizes_and_periods() {
        let s = parse("host,128,256", "20,100").expect("parse");
        assert_eq!(s.len(), 5);
        assert_eq!(s[0], Share::HOST);
        assert_eq!(s[2].label(), "128 MB / 100 ms");
        assert!(parse("64", "20").is_err());
        assert!(parse("128", "0").is_err());
    }
}
