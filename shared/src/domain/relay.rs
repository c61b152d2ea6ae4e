//! The relay: upstream token stream in, browser event stream out (SPEC section 3).
//!
//! Each upstream event is forwarded the moment it is read. The browser gets a
//! `: ping` comment after every `ping` of silence on its side, whether the
//! upstream is slow to answer at all or slow between tokens. A deadline bounds
//! the whole exchange so a stream that never ends still leaves time to store
//! what arrived. A [`Watch`] sees the text as it arrives and can cut the
//! exchange short (a stop request): the upstream response is dropped, which
//! closes its connection, so the model stops generating.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::adapters::upstream::sse::{Event, SseReader};
use crate::adapters::upstream::{InferenceClient, InferenceRequest, StartError, Upstream};

const PING: &[u8] = b": ping\n\n";
/// The most answer text (UTF-8 bytes) a relay takes. DynamoDB refuses an item
/// over 400 KB, and the answer is stored as one item (and again in its
/// idempotency record): an upstream that ignores `max_tokens` would otherwise
/// stream an answer that can never be stored (`persist_failed`, nothing kept).
/// 4096 tokens of a model's vocabulary are a small fraction of this.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The browser side of the stream. Sending never blocks and never fails: once the
/// browser is gone the events are dropped and the work goes on.
pub struct Sink {
    tx: mpsc::UnboundedSender<Bytes>,
    last_sent: Instant,
    /// Events queued by [`Sink::queue`], sent together by [`Sink::flush`].
    queued: Vec<u8>,
}

impl Sink {
    pub fn new(tx: mpsc::UnboundedSender<Bytes>) -> Self {
        Self {
            tx,
            last_sent: Instant::now(),
            queued: Vec::new(),
        }
    }

    /// Queues `data: <json>\n\n` to go with the others of the same upstream
    /// chunk: one message on the channel and one frame to the Runtime API for
    /// all of them, instead of one each.
    pub fn queue(&mut self, json: &str) {
        self.queued.reserve(json.len() + 8);
        self.queued.extend_from_slice(b"data: ");
        self.queued.extend_from_slice(json.as_bytes());
        self.queued.extend_from_slice(b"\n\n");
    }

    /// Sends what [`Sink::queue`] gathered, if anything.
    pub fn flush(&mut self) {
        if !self.queued.is_empty() {
            let bytes = Bytes::from(std::mem::take(&mut self.queued));
            self.send(bytes);
        }
    }

    pub fn send(&mut self, bytes: Bytes) {
        self.last_sent = Instant::now();
        // A closed channel means the browser left; the answer is still stored.
        let _ = self.tx.send(bytes);
    }

    /// Sends `data: <json>\n\n`.
    pub fn data(&mut self, json: &str) {
        self.queue(json);
        self.flush();
    }

    pub fn event(&mut self, value: &serde_json::Value) {
        self.data(&value.to_string());
    }

    /// When the browser last got anything (an event or a ping).
    pub fn last_sent(&self) -> Instant {
        self.last_sent
    }

    pub fn browser_connected(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// Why an exchange with the upstream ended without its `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Unavailable,
    Status(u16),
    Interrupted,
}

impl Failure {
    /// The error event the browser sees.
    pub fn event(self) -> serde_json::Value {
        match self {
            Failure::Unavailable => json!({ "error": "inference_unavailable" }),
            Failure::Status(code) => json!({ "error": "inference_error", "status_code": code }),
            Failure::Interrupted => json!({ "error": "inference_interrupted" }),
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Failure::Unavailable => "inference_unavailable",
            Failure::Status(_) => "inference_error",
            Failure::Interrupted => "inference_interrupted",
        }
    }
}

/// Why an exchange was cut short from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// A stop request for this answer.
    Stop,
    /// The answer is no longer this function's to store (settled by another request).
    Lost,
    /// The conversation was deleted.
    Gone,
}

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The upstream sent its `done`.
    Done,
    Failed(Failure),
    Interrupted(Interrupt),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub content: String,
    pub token_count: u64,
    pub inference_time_ms: u64,
    pub ending: Ending,
    /// When the upstream request was sent.
    pub started: Instant,
    /// When the first token was handed to the browser's stream.
    pub first_token: Option<Instant>,
}

/// Sees an exchange's text as it arrives, and may cut it short.
pub trait Watch: Send {
    /// Text of one token event; `tokens` counts the token events so far.
    fn text(&mut self, text: &str, tokens: u64);
    /// Resolves when the exchange must end now. Polled alongside every wait and
    /// dropped when something else happens first, so it must be cancel-safe.
    fn interrupted(&mut self) -> impl Future<Output = Interrupt> + Send;
}

/// A [`Watch`] that never interrupts: a plain relay.
pub struct Unwatched;

impl Watch for Unwatched {
    fn text(&mut self, _: &str, _: u64) {}

    fn interrupted(&mut self) -> impl Future<Output = Interrupt> + Send {
        std::future::pending()
    }
}

/// Why a wait ended without its result.
enum Cut {
    Deadline,
    Interrupt(Interrupt),
}

impl Cut {
    fn ending(self, at_deadline: Failure) -> Ending {
        match self {
            Cut::Deadline => Ending::Failed(at_deadline),
            Cut::Interrupt(i) => Ending::Interrupted(i),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ping: Duration,
    pub deadline: Instant,
}

/// The upstream's answer to the request: its response head, or why there is none.
pub struct Opened {
    started: Instant,
    head: Result<Upstream, Ending>,
}

/// Sends the request and waits for the response head, pinging the browser
/// meanwhile. `trace` is the invocation's X-Ray trace header, passed upstream.
pub async fn open(
    client: &InferenceClient,
    request: &InferenceRequest,
    trace: Option<&str>,
    sink: &mut Sink,
    timing: Timing,
    watch: &mut impl Watch,
) -> Opened {
    let started = Instant::now();
    let head = match with_pings(client.start(request, trace), sink, timing, watch).await {
        Err(cut) => Err(cut.ending(Failure::Unavailable)),
        Ok(Err(StartError::Unavailable)) => Err(Ending::Failed(Failure::Unavailable)),
        Ok(Err(StartError::Status(code))) => Err(Ending::Failed(Failure::Status(code))),
        Ok(Ok(response)) => Ok(response),
    };
    Opened { started, head }
}

/// Forwards the opened exchange's events to `sink` until its `done`, its end,
/// the deadline or an interrupt.
pub async fn stream(
    opened: Opened,
    sink: &mut Sink,
    timing: Timing,
    watch: &mut impl Watch,
) -> Outcome {
    let mut outcome = Outcome {
        content: String::new(),
        token_count: 0,
        inference_time_ms: 0,
        ending: Ending::Done,
        started: opened.started,
        first_token: None,
    };
    outcome.ending = match opened.head {
        Err(ending) => ending,
        Ok(response) => read_stream(response, sink, timing, watch, &mut outcome).await,
    };
    outcome.inference_time_ms =
        u64::try_from(opened.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    outcome
}

async fn read_stream(
    mut response: Upstream,
    sink: &mut Sink,
    timing: Timing,
    watch: &mut impl Watch,
    outcome: &mut Outcome,
) -> Ending {
    let mut reader = SseReader::new();
    let mut events = Vec::with_capacity(8);
    loop {
        // An interrupt drops `response` on return: its connection closes.
        let finished = match with_pings(response.chunk(), sink, timing, watch).await {
            Err(cut) => return cut.ending(Failure::Interrupted),
            Ok(Err(_)) => return Ending::Failed(Failure::Interrupted),
            Ok(Ok(Some(bytes))) => {
                reader.feed(&bytes, &mut events);
                false
            }
            Ok(Ok(None)) => {
                reader.finish(&mut events);
                true
            }
        };
        // The events of one upstream chunk go to the browser together.
        for event in events.drain(..) {
            match event {
                Event::Token { text, json } => {
                    // Cut like a broken stream: what the browser got is stored
                    // `incomplete`, and the upstream connection is closed.
                    if outcome.content.len() + text.len() > MAX_ANSWER_BYTES {
                        sink.flush();
                        return Ending::Failed(Failure::Interrupted);
                    }
                    outcome.content.push_str(&text);
                    outcome.token_count += 1;
                    sink.queue(&json);
                    outcome.first_token.get_or_insert_with(Instant::now);
                    watch.text(&text, outcome.token_count);
                }
                Event::Other { json } => sink.queue(&json),
                Event::Done => {
                    sink.flush();
                    release(response);
                    return Ending::Done;
                }
            }
        }
        sink.flush();
        if finished {
            return Ending::Failed(Failure::Interrupted);
        }
    }
}

/// How long, and how much, the upstream may still send after its `done`.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
const RELEASE_BYTES: usize = 64 * 1024;

/// Reads what the upstream sends after its `done` (normally only the end of the
/// body) in the background, so its connection stays the client's spare one and
/// the instance's next send skips the connect and TLS handshake. A response
/// dropped before its end closes the connection instead.
fn release(mut response: Upstream) {
    tokio::spawn(async move {
        let drain = async {
            let mut left = RELEASE_BYTES;
            while let Ok(Some(chunk)) = response.chunk().await {
                match left.checked_sub(chunk.len()) {
                    Some(rest) => left = rest,
                    None => return,
                }
            }
        };
        let _ = tokio::time::timeout(RELEASE_WAIT, drain).await;
    });
}

/// Awaits `fut`, sending a ping whenever the browser has heard nothing for
/// `timing.ping`, until the deadline or an interrupt from `watch`.
async fn with_pings<F: Future>(
    fut: F,
    sink: &mut Sink,
    timing: Timing,
    watch: &mut impl Watch,
) -> Result<F::Output, Cut> {
    tokio::pin!(fut);
    loop {
        let wake = (sink.last_sent + timing.ping).min(timing.deadline);
        tokio::select! {
            biased;
            out = &mut fut => return Ok(out),
            interrupt = watch.interrupted() => return Err(Cut::Interrupt(interrupt)),
            () = tokio::time::sleep_until(wake) => {
                if Instant::now() >= timing.deadline {
                    return Err(Cut::Deadline);
                }
                sink.send(Bytes::from_static(PING));
            }
        }
    }
}
