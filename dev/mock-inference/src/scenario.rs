//! Scenarios: how the mock answers one inference request, and the SSE bytes it sends.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// A scenario as registered over the control API. Every field but `match` is
/// optional and `null` counts as absent; unknown fields are rejected so that a
/// typo in a test fails loudly instead of silently testing the default reply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    #[serde(rename = "match")]
    pattern: String,
    repeat: Option<bool>,
    tokens: Option<Vec<String>>,
    first_token_delay_ms: Option<u64>,
    headers_delay_ms: Option<u64>,
    token_delay_ms: Option<u64>,
    status: Option<u16>,
    drop_after: Option<usize>,
    no_done: Option<bool>,
    hang_after: Option<usize>,
    reset_before_headers: Option<bool>,
    events_per_chunk: Option<usize>,
    chunk_bytes: Option<usize>,
    split_delay_ms: Option<u64>,
    crlf: Option<bool>,
    junk: Option<bool>,
    bom: Option<bool>,
    gpu: Option<u32>,
    done_extra: Option<bool>,
}

/// How a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// All events (done included unless `no_done`), then the last chunk.
    Clean,
    /// After N token events: close the connection without the last chunk.
    Drop(usize),
    /// After N token events: send nothing more, keep the connection open.
    Hang(usize),
}

/// A validated scenario with its defaults filled in.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub pattern: String,
    pub repeat: bool,
    /// `None`: the default reply to the request.
    pub tokens: Option<Vec<String>>,
    pub first_token_delay: Duration,
    pub headers_delay: Duration,
    /// `None`: the server's configured per-token delay.
    pub token_delay: Option<Duration>,
    /// Answer with this status and a JSON error body instead of a stream.
    pub status: Option<u16>,
    pub ending: Ending,
    pub no_done: bool,
    pub reset_before_headers: bool,
    pub events_per_chunk: usize,
    pub chunk_bytes: Option<usize>,
    pub split_delay: Duration,
    pub crlf: bool,
    pub junk: bool,
    pub bom: bool,
    pub gpu: u32,
    pub done_extra: bool,
}

impl TryFrom<ScenarioSpec> for Scenario {
    type Error = String;

    fn try_from(s: ScenarioSpec) -> Result<Self, String> {
        let ms = Duration::from_millis;
        if let Some(status) = s.status {
            if !(200..=599).contains(&status) {
                return Err(format!("status must be within 200..=599, got {status}"));
            }
        }
        let ending = match (s.drop_after, s.hang_after) {
            (Some(_), Some(_)) => {
                return Err("drop_after and hang_after are mutually exclusive".to_owned())
            }
            (Some(n), None) => Ending::Drop(n),
            (None, Some(n)) => Ending::Hang(n),
            (None, None) => Ending::Clean,
        };
        if s.events_per_chunk == Some(0) {
            return Err("events_per_chunk must be at least 1".to_owned());
        }
        if s.chunk_bytes == Some(0) {
            return Err("chunk_bytes must be at least 1".to_owned());
        }
        Ok(Scenario {
            pattern: s.pattern,
            repeat: s.repeat.unwrap_or(false),
            tokens: s.tokens,
            first_token_delay: ms(s.first_token_delay_ms.unwrap_or(0)),
            headers_delay: ms(s.headers_delay_ms.unwrap_or(0)),
            token_delay: s.token_delay_ms.map(ms),
            status: s.status,
            ending,
            no_done: s.no_done.unwrap_or(false),
            reset_before_headers: s.reset_before_headers.unwrap_or(false),
            events_per_chunk: s.events_per_chunk.unwrap_or(1),
            chunk_bytes: s.chunk_bytes,
            split_delay: ms(s.split_delay_ms.unwrap_or(2)),
            crlf: s.crlf.unwrap_or(false),
            junk: s.junk.unwrap_or(false),
            bom: s.bom.unwrap_or(false),
            gpu: s.gpu.unwrap_or(0),
            done_extra: s.done_extra.unwrap_or(false),
        })
    }
}

impl Scenario {
    /// What answers a request that no registered scenario matched.
    pub fn default_reply() -> Self {
        Scenario {
            pattern: String::new(),
            repeat: false,
            tokens: None,
            first_token_delay: Duration::ZERO,
            headers_delay: Duration::ZERO,
            token_delay: None,
            status: None,
            ending: Ending::Clean,
            no_done: false,
            reset_before_headers: false,
            events_per_chunk: 1,
            chunk_bytes: None,
            split_delay: Duration::ZERO,
            crlf: false,
            junk: false,
            bom: false,
            gpu: 0,
            done_extra: false,
        }
    }

    /// The body pieces to send, each to be written (and flushed) as its own HTTP
    /// chunk, given the tokens to stream. The stream is cut short as `ending` says.
    pub fn render(&self, tokens: &[String]) -> Vec<Vec<u8>> {
        let events = self.events(tokens);
        let mut pieces: Vec<Vec<u8>> = events
            .chunks(self.events_per_chunk)
            .map(|group| group.concat())
            .collect();
        if self.bom {
            match pieces.first_mut() {
                Some(first) => {
                    first.splice(0..0, BOM.iter().copied());
                }
                None => pieces.push(BOM.to_vec()),
            }
        }
        if let Some(n) = self.chunk_bytes {
            // Re-split the whole byte stream, ignoring event boundaries: pieces may
            // hold the end of one event and the start of the next, or half of a
            // multi-byte UTF-8 character.
            let all = pieces.concat();
            pieces = all.chunks(n).map(<[u8]>::to_vec).collect();
        }
        pieces
    }

    /// The SSE events of the stream, already cut where `ending` says.
    fn events(&self, tokens: &[String]) -> Vec<Vec<u8>> {
        let nl = if self.crlf { "\r\n" } else { "\n" };
        let cut = match self.ending {
            Ending::Clean => None,
            Ending::Drop(n) | Ending::Hang(n) => Some(n.min(tokens.len())),
        };
        let sent = cut.unwrap_or(tokens.len());
        let mut events = Vec::new();
        // Junk: every kind before the first real event, then one kind in turn
        // before each later one.
        let mut junk = JUNK.iter().cycle();
        let mut push_junk = |events: &mut Vec<Vec<u8>>| {
            if !self.junk {
                return;
            }
            let count = if events.is_empty() { JUNK.len() } else { 1 };
            for j in junk.by_ref().take(count) {
                events.push(j.replace('\n', nl).into_bytes());
            }
        };
        for (i, token) in tokens[..sent].iter().enumerate() {
            push_junk(&mut events);
            // Same spacing as Python's json.dumps, which the real upstream uses;
            // the token itself is JSON-encoded so any string round-trips.
            let data = format!(
                "{{\"token\": {}, \"gpu\": {}}}",
                Value::from(token.as_str()),
                self.gpu
            );
            let fields = if self.junk {
                // Fields a client must ignore, inside the very event carrying data.
                format!("event: message{nl}id: {i}{nl}")
            } else {
                String::new()
            };
            events.push(format!("{fields}data: {data}{nl}{nl}").into_bytes());
        }
        if cut.is_none() && !self.no_done {
            push_junk(&mut events);
            let data = if self.done_extra {
                format!("{{\"done\": true, \"gpu\": {}}}", self.gpu)
            } else {
                "{\"done\": true}".to_owned()
            };
            events.push(format!("data: {data}{nl}{nl}").into_bytes());
        }
        events
    }
}

const BOM: &[u8] = "\u{feff}".as_bytes();

/// Events a tolerant SSE client must skip, when `junk` is on. Written with `\n`; converted for `crlf`.
const JUNK: &[&str] = &[
    ": keepalive\n\n",
    "event: message\nid: 3\nretry: 10\n\n",
    "data: not json\n\n",
    "data:\n\n",
    "data: [1,2]\n\n",
];

/// The default reply's tokens: `Hello!`, ` You`, ` said:`, then each
/// whitespace-separated word of `last_user` with a leading space. Like the real
/// upstream, a system prompt before the first blank line is not part of what the
/// user said.
pub fn default_tokens(last_user: &str) -> Vec<String> {
    let said = match last_user.split_once("\n\n") {
        Some((prompt, rest)) if prompt.starts_with("You are ") => rest,
        _ => last_user,
    };
    ["Hello!", " You", " said:"]
        .into_iter()
        .map(str::to_owned)
        .chain(said.split_whitespace().map(|w| format!(" {w}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(json: Value) -> Scenario {
        let spec: ScenarioSpec = serde_json::from_value(json).expect("spec");
        Scenario::try_from(spec).expect("valid")
    }

    fn text(pieces: &[Vec<u8>]) -> String {
        String::from_utf8(pieces.concat()).expect("utf-8")
    }

    #[test]
    fn default_reply_events() {
        let tokens = default_tokens("  hi   there ");
        assert_eq!(tokens, ["Hello!", " You", " said:", " hi", " there"]);
        let prompted = default_tokens("You are samosaChaat.\n\nhi there");
        assert_eq!(prompted, ["Hello!", " You", " said:", " hi", " there"]);
        let pieces = Scenario::default_reply().render(&tokens[..2]);
        assert_eq!(pieces.len(), 3);
        assert_eq!(
            text(&pieces),
            "data: {\"token\": \"Hello!\", \"gpu\": 0}\n\n\
             data: {\"token\": \" You\", \"gpu\": 0}\n\n\
             data: {\"done\": true}\n\n"
        );
    }

    #[test]
    fn tokens_are_json_encoded() {
        let tok = "a \"q\"\nb\\ 😀".to_owned();
        let out = text(&Scenario::default_reply().render(std::slice::from_ref(&tok)));
        let first = out.lines().next().expect("line");
        let v: Value = serde_json::from_str(first.trim_start_matches("data: ")).expect("json");
        assert_eq!(v["token"], tok);
    }

    #[test]
    fn grouping_bom_crlf_and_done_extra() {
        let sc = scenario(serde_json::json!({
            "match": "m", "events_per_chunk": 2, "bom": true, "crlf": true,
            "done_extra": true, "gpu": 3
        }));
        let toks = default_tokens("x");
        let pieces = sc.render(&toks);
        assert_eq!(pieces.len(), 3); // 4 tokens + done, two per piece
        assert!(pieces[0].starts_with(BOM));
        let out = text(&pieces);
        assert!(!out.replace("\r\n", "").contains('\n'));
        assert!(out.ends_with("data: {\"done\": true, \"gpu\": 3}\r\n\r\n"));
    }

    #[test]
    fn cuts_and_no_done() {
        let toks = default_tokens("a b c");
        let out = text(&scenario(serde_json::json!({"match": "m", "drop_after": 2})).render(&toks));
        assert_eq!(out.matches("\"token\"").count(), 2);
        assert!(!out.contains("done"));
        let out =
            text(&scenario(serde_json::json!({"match": "m", "hang_after": 99})).render(&toks));
        assert_eq!(out.matches("\"token\"").count(), toks.len());
        assert!(!out.contains("done"));
        let out = text(&scenario(serde_json::json!({"match": "m", "no_done": true})).render(&toks));
        assert_eq!(out.matches("\"token\"").count(), toks.len());
        assert!(!out.contains("done"));
    }

    #[test]
    fn chunk_bytes_resplits_everything() {
        let sc = scenario(serde_json::json!({"match": "m", "chunk_bytes": 3, "junk": true}));
        let toks = vec!["é😀".to_owned()];
        let pieces = sc.render(&toks);
        assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= 3));
        assert!(pieces.iter().any(|p| std::str::from_utf8(p).is_err()));
        let out = text(&pieces);
        assert!(out.contains(": keepalive\n\n"));
        assert!(out.contains("data: not json\n\n"));
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            serde_json::json!({"tokens": []}),
            serde_json::json!({"match": "m", "typo_field": 1}),
            serde_json::json!({"match": "m", "status": 99}),
            serde_json::json!({"match": "m", "chunk_bytes": 0}),
            serde_json::json!({"match": "m", "events_per_chunk": 0}),
            serde_json::json!({"match": "m", "drop_after": 1, "hang_after": 1}),
        ] {
            let ok = serde_json::from_value::<ScenarioSpec>(bad.clone())
                .map_err(|e| e.to_string())
                .and_then(Scenario::try_from)
                .is_ok();
            assert!(!ok, "{bad}");
        }
        // null counts as absent
        scenario(serde_json::json!({"match": "m", "no_done": null, "gpu": null}));
    }
}
