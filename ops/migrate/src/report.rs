//! What a run counts, the progress line on a terminal, and the final report
//! (text on stdout, JSON with `--report`). Only ids, counts and reasons: never
//! a title or a message's text.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::plan::{Note, Planned};
use crate::target::Pushback;

/// Listed one by one in the text report; the JSON report has them all.
const LISTED: usize = 50;

#[derive(Debug, Default)]
struct Counts {
    seen: u64,
    copied: u64,
    unchanged: u64,
    deleted: u64,
    left_deleted: u64,
    verified: u64,
    messages: u64,
    bytes: u64,
    notes: Vec<Note>,
    conflicts: Vec<(Uuid, &'static str)>,
    differences: Vec<(Uuid, String)>,
    not_compared: Vec<(Uuid, &'static str)>,
}

/// Counts shared by a run's concurrent work.
#[derive(Debug, Default)]
pub struct Tally(Mutex<Counts>);

impl Tally {
    fn with<R>(&self, f: impl FnOnce(&mut Counts) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn seen(&self) {
        self.with(|c| c.seen += 1);
    }
    pub fn unchanged(&self) {
        self.with(|c| c.unchanged += 1);
    }
    pub fn left_deleted(&self) {
        self.with(|c| c.left_deleted += 1);
    }
    pub fn deleted(&self) {
        self.with(|c| c.deleted += 1);
    }
    pub fn copied(&self, p: &Planned) {
        self.with(|c| {
            c.copied += 1;
            c.messages += p.messages.len() as u64;
            c.bytes += p.content_bytes;
        });
    }
    pub fn verified(&self, p: &Planned) {
        self.with(|c| {
            c.verified += 1;
            c.messages += p.messages.len() as u64;
            c.bytes += p.content_bytes;
        });
    }
    pub fn noted(&self, notes: &[Note]) {
        if !notes.is_empty() {
            self.with(|c| c.notes.extend_from_slice(notes));
        }
    }
    pub fn conflict(&self, id: Uuid, why: &'static str) {
        self.with(|c| c.conflicts.push((id, why)));
    }
    pub fn differs(&self, id: Uuid, what: String) {
        self.with(|c| c.differences.push((id, what)));
    }
    pub fn not_compared(&self, id: Uuid, why: &'static str) {
        self.with(|c| c.not_compared.push((id, why)));
    }
    pub fn differences(&self) -> usize {
        self.with(|c| c.differences.len())
    }
}

/// The progress line, drawn on stderr when it is a terminal.
pub struct Progress {
    started: Instant,
    total: i64,
    tty: bool,
}

impl Progress {
    pub fn new(total: i64) -> Self {
        Self {
            started: Instant::now(),
            total,
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn tick(&self, tally: &Tally) {
        if !self.tty {
            return;
        }
        let (seen, messages) = tally.with(|c| (c.seen, c.messages));
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = seen as f64 / secs;
        let left = (self.total - seen as i64).max(0) as f64;
        let eta = if rate > 0.0 { left / rate } else { 0.0 };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{seen}/{} conversations, {messages} messages, {:.0} messages/s, ETA {:.0} s   ",
            self.total,
            messages as f64 / secs,
            eta
        );
        let _ = err.flush();
    }

    pub fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// The largest resident set the process had (`VmHWM`), in KiB.
pub fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The final report as JSON.
pub fn summary(
    mode: &str,
    tally: &Tally,
    pushback: &Pushback,
    started: Instant,
    since: Option<&(String, String)>,
) -> Value {
    let secs = started.elapsed().as_secs_f64();
    tally.with(|c| {
        let notes: Vec<Value> = c
            .notes
            .iter()
            .map(|n| {
                json!({
                    "conversation_id": n.conversation_id,
                    "message_id": n.message_id,
                    "reason": n.reason,
                    "action": n.action,
                })
            })
            .collect();
        let pairs = |v: &[(Uuid, &str)]| -> Vec<Value> {
            v.iter()
                .map(|(id, why)| json!({"conversation_id": id, "reason": why}))
                .collect()
        };
        json!({
            "mode": mode,
            "since_last_run": since.map(|(m, at)| json!({"mode": m, "finished_at": at})),
            "conversations": {
                "read": c.seen,
                "copied": c.copied,
                "unchanged": c.unchanged,
                "deleted": c.deleted,
                "deleted_in_postgresql_left_for_catch_up": c.left_deleted,
                "verified": c.verified,
                "conflicts": c.conflicts.len(),
            },
            "messages": c.messages,
            "content_bytes": c.bytes,
            "messages_per_second": (c.messages as f64 / secs.max(0.001)).round(),
            "seconds": (secs * 1000.0).round() / 1000.0,
            "peak_memory_kib": peak_memory_kib(),
            "dynamodb": {
                "unprocessed_retries": pushback.unprocessed_retries.load(Ordering::Relaxed),
                "throttled": pushback.throttled.load(Ordering::Relaxed),
            },
            "rows_not_copied_as_they_are": notes,
            "conflicts": pairs(&c.conflicts),
            "differences": c.differences.iter()
                .map(|(id, what)| json!({"conversation_id": id, "difference": what}))
                .collect::<Vec<_>>(),
            "not_compared": pairs(&c.not_compared),
        })
    })
}

/// The report as a person reads it.
pub fn text(report: &Value) -> String {
    let mut out = String::new();
    let c = &report["conversations"];
    let mode = report["mode"].as_str().unwrap_or("");
    let verb = match mode {
        "dry-run" => "would copy",
        "verify" => "verified",
        _ => "copied",
    };
    out.push_str(&format!(
        "migrate {mode}: done in {} s\n",
        report["seconds"]
    ));
    if let Some(since) = report["since_last_run"].as_object() {
        out.push_str(&format!(
            "  changes since the last {} (finished {})\n",
            since["mode"].as_str().unwrap_or(""),
            since["finished_at"].as_str().unwrap_or("")
        ));
    }
    out.push_str(&format!(
        "  conversations: {} read, {} {verb}, {} unchanged since the last run, {} deleted, {} conflicts\n",
        c["read"],
        if mode == "verify" { &c["verified"] } else { &c["copied"] },
        c["unchanged"],
        c["deleted"],
        c["conflicts"]
    ));
    if c["deleted_in_postgresql_left_for_catch_up"]
        .as_u64()
        .unwrap_or(0)
        > 0
    {
        out.push_str(&format!(
            "  {} conversations deleted in PostgreSQL are left in the table: catch-up deletes them\n",
            c["deleted_in_postgresql_left_for_catch_up"]
        ));
    }
    out.push_str(&format!(
        "  messages: {} ({} bytes of content), {} messages/s\n",
        report["messages"], report["content_bytes"], report["messages_per_second"]
    ));
    out.push_str(&format!(
        "  peak memory: {} KiB; DynamoDB: {} retries of unprocessed items, {} throttled requests\n",
        report["peak_memory_kib"],
        report["dynamodb"]["unprocessed_retries"],
        report["dynamodb"]["throttled"]
    ));
    let notes = report["rows_not_copied_as_they_are"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !notes.is_empty() {
        let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
        for n in &notes {
            let key = format!(
                "{} -> {}",
                generic(n["reason"].as_str().unwrap_or("")),
                n["action"].as_str().unwrap_or("")
            );
            *by_reason.entry(key).or_default() += 1;
        }
        out.push_str(&format!("  rows not copied as they are: {}\n", notes.len()));
        for (reason, n) in by_reason {
            out.push_str(&format!("    {n} x {reason}\n"));
        }
        for n in notes.iter().take(LISTED) {
            out.push_str(&format!(
                "    conversation {} message {}: {}\n",
                n["conversation_id"].as_str().unwrap_or(""),
                n["message_id"].as_str().unwrap_or("-"),
                n["reason"].as_str().unwrap_or("")
            ));
        }
        if notes.len() > LISTED {
            out.push_str(&format!(
                "    ... {} more (--report FILE lists them all)\n",
                notes.len() - LISTED
            ));
        }
    }
    for (key, title) in [
        ("conflicts", "conflicts"),
        ("differences", "differences"),
        ("not_compared", "not compared"),
    ] {
        let list = report[key].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            continue;
        }
        out.push_str(&format!("  {title}: {}\n", list.len()));
        for item in list.iter().take(LISTED) {
            out.push_str(&format!(
                "    conversation {}: {}\n",
                item["conversation_id"].as_str().unwrap_or(""),
                item["reason"]
                    .as_str()
                    .or(item["difference"].as_str())
                    .unwrap_or("")
            ));
        }
        if list.len() > LISTED {
            out.push_str(&format!(
                "    ... {} more (--report FILE lists them all)\n",
                list.len() - LISTED
            ));
        }
    }
    out
}

/// A reason without its figures, to count reasons alike.
fn generic(reason: &str) -> String {
    reason
        .split_whitespace()
        .map(|w| {
            if w.trim_matches(|c: char| !c.is_ascii_alphanumeric())
                .chars()
                .any(|c| c.is_ascii_digit())
            {
                "N"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
