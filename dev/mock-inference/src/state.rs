//! State shared by all connections: registered scenarios and recorded requests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::scenario::Scenario;
use crate::Config;

/// Recorded requests kept at most; the oldest are forgotten first, so a long-running
/// local stack does not grow without bound.
const MAX_RECORDED: usize = 10_000;

/// One inference request as received.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    /// Header names lower-cased.
    headers: BTreeMap<String, String>,
    /// The request body: its JSON, or its text as a JSON string when not JSON.
    body: Value,
    received_at_ms: u64,
    /// The content of the last `user` message, for filtering.
    #[serde(skip)]
    last_user: Option<String>,
}

impl Recorded {
    pub fn new(headers: BTreeMap<String, String>, body: Value, last_user: Option<String>) -> Self {
        let received_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Recorded {
            headers,
            body,
            received_at_ms,
            last_user,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// In registration order.
    scenarios: Vec<Scenario>,
    /// In arrival order.
    requests: VecDeque<Recorded>,
}

pub struct Shared {
    pub cfg: Config,
    inner: Mutex<Inner>,
}

impl Shared {
    pub fn new(cfg: Config) -> Self {
        Shared {
            cfg,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Critical sections cannot leave the state half-updated: a poisoned lock
        // is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn add_scenario(&self, scenario: Scenario) {
        self.lock().scenarios.push(scenario);
    }

    /// The first registered scenario whose pattern occurs in `last_user`; removed
    /// unless it repeats.
    pub fn take_scenario(&self, last_user: &str) -> Option<Scenario> {
        let mut inner = self.lock();
        let i = inner
            .scenarios
            .iter()
            .position(|s| last_user.contains(&s.pattern))?;
        if inner.scenarios[i].repeat {
            Some(inner.scenarios[i].clone())
        } else {
            Some(inner.scenarios.remove(i))
        }
    }

    pub fn record(&self, request: Recorded) {
        let mut inner = self.lock();
        if inner.requests.len() >= MAX_RECORDED {
            inner.requests.pop_front();
        }
        inner.requests.push_back(request);
    }

    /// Recorded requests whose last user message contains `pattern` (all of them
    /// without a pattern), in arrival order.
    pub fn requests_matching(&self, pattern: Option<&str>) -> Vec<Recorded> {
        self.lock()
            .requests
            .iter()
            .filter(|r| match pattern {
                None => true,
                Some(p) => r.last_user.as_deref().unwrap_or("").contains(p),
            })
            .cloned()
            .collect()
    }

    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.scenarios.clear();
        inner.requests.clear();
    }
}
