//! Live answers: what they cost and how fast they react, for the answer the
//! issue names (1000 tokens at 50 tokens/s, about 5 KB over 20 s), with the
//! shipped `CHECKPOINT_INTERVAL_MS` (1000).
//!
//! - DynamoDB units the live answer adds to a send: the requests a send makes
//!   only because of it (the slot's claim, `UpdateItem`; checkpoints, `PutItem`;
//!   stop polls, `GetItem`), through a counting proxy; the transactions every
//!   send already made are counted apart.
//! - Resume: a second function process re-attaches 3 s in; for every token that
//!   reaches the generating function after that, the time until the resumed
//!   stream has delivered it (lag), and the reader's read units per second.
//! - Stop: a stop recorded (the write the stop route makes) 1.2 to 2 s into an
//!   answer; the time from that write's return (the route's 202) to the
//!   `stopped` ending at the Runtime API.

use std::time::{Duration, Instant};

use samosachaat::adapters::store::Conversation;
use serde_json::Value;

use crate::capacity::Units;
use crate::driver::{Bench, Res, INIT_TIMEOUT};
use crate::http1::Timeline;
use crate::proxy::Proxy;
use crate::stats::{ms, pct};

const ANSWER_TOKENS: usize = 1000;
const TOKEN_DELAY_MS: u64 = 20;
const RESUME_AFTER: Duration = Duration::from_secs(3);
const WITHIN: Duration = Duration::from_secs(90);

pub struct Live {
    pub answer_bytes: usize,
    pub answer_secs: f64,
    /// Units of the requests a send makes only for its live answer.
    pub added: Units,
    pub added_requests: usize,
    /// Units of the send's other requests (what a send cost before).
    pub base: Units,
    pub reader_units: Units,
    pub reader_secs: f64,
    pub lag_ms: Vec<f64>,
    pub stop_ms: Vec<f64>,
}

/// The `data:` events of a streamed body after `start`: (arrival, JSON).
fn events(timeline: &Timeline, start: usize) -> Vec<(Instant, Value)> {
    let mut out = Vec::new();
    let mut at = start;
    let bytes = &timeline.bytes;
    while let Some(i) = bytes[at..].windows(2).position(|w| w == b"\n\n") {
        let end = at + i + 2;
        if let Some(data) = bytes[at..at + i].strip_prefix(b"data: ") {
            if let (Ok(v), Some(t)) = (serde_json::from_slice(data), timeline.time_of(end - 1)) {
                out.push((t, v));
            }
        }
        at = end;
    }
    out
}

/// (arrival, text length so far) after each token event.
fn progress(events: &[(Instant, Value)]) -> Vec<(Instant, usize)> {
    let mut len = 0;
    events
        .iter()
        .filter_map(|(t, v)| {
            let text = v["token"].as_str()?;
            len += text.len();
            Some((*t, len))
        })
        .collect()
}

fn resume_event(b: &Bench, conversation: uuid::Uuid) -> Res<Vec<u8>> {
    let mut event: Value =
        serde_json::from_slice(&b.event(conversation, "", None)).map_err(|e| e.to_string())?;
    let path = format!("/api/conversations/{conversation}/stream");
    event["rawPath"] = path.clone().into();
    event["requestContext"]["http"]["path"] = path.into();
    event["requestContext"]["http"]["method"] = "GET".into();
    event["body"] = Value::Null;
    Ok(event.to_string().into_bytes())
}

/// A fresh conversation, and a marker the mock answers with a long answer at
/// the model's pace.
async fn paced_answer(b: &mut Bench, what: &str) -> Res<(String, Conversation)> {
    let marker = b.marker(what);
    b.paced_scenario(&marker, ANSWER_TOKENS, TOKEN_DELAY_MS)
        .await?;
    let conversation = b
        .store
        .create_conversation(b.user, "bench", "default")
        .await
        .map_err(|e| e.to_string())?;
    Ok((marker, conversation))
}

pub async fn run(b: &mut Bench, stops: usize) -> Res<Live> {
    let gen_ddb = Proxy::dynamodb(b.dynamodb)
        .await
        .map_err(|e| e.to_string())?;
    let read_ddb = Proxy::dynamodb(b.dynamodb)
        .await
        .map_err(|e| e.to_string())?;
    let generator = b
        .start_function(
            "send-live",
            None,
            &[(
                "AWS_ENDPOINT_URL_DYNAMODB",
                format!("http://{}", gen_ddb.addr),
            )],
        )
        .await?;
    let reader = b
        .start_function(
            "send-resume",
            None,
            &[(
                "AWS_ENDPOINT_URL_DYNAMODB",
                format!("http://{}", read_ddb.addr),
            )],
        )
        .await?;
    generator.api.poll(INIT_TIMEOUT).await?;
    reader.api.poll(INIT_TIMEOUT).await?;

    // Cost and resume lag: one long answer, one resumed reader.
    let (marker, conversation) = paced_answer(b, "live").await?;
    let send = b.event(conversation.id, &format!("live answer {marker}"), None);
    let resume = resume_event(b, conversation.id)?;
    let (original, resumed) = tokio::join!(generator.api.invoke(send, WITHIN), async {
        tokio::time::sleep(RESUME_AFTER).await;
        reader.api.invoke(resume, WITHIN).await
    });
    let (original, resumed) = (original?, resumed?);
    generator.api.poll(WITHIN).await?;
    reader.api.poll(WITHIN).await?;

    let (_, gen_timeline, gen_start) = original.stream()?;
    let (_, read_timeline, read_start) = resumed.stream()?;
    let written = progress(&events(&gen_timeline, gen_start));
    let delivered = progress(&events(&read_timeline, read_start));
    let answer_bytes = written.last().map_or(0, |w| w.1);
    if delivered.last().map(|d| d.1) != Some(answer_bytes) {
        return Err(format!(
            "resumed reader got {:?} of {answer_bytes} bytes",
            delivered.last().map(|d| d.1)
        ));
    }
    let mut lag_ms = Vec::new();
    for (at, len) in written.iter().filter(|w| w.0 >= resumed.released) {
        if let Some((seen, _)) = delivered.iter().find(|d| d.1 >= *len) {
            lag_ms.push(ms(seen.saturating_duration_since(*at)));
        }
    }
    let mut added = Units::default();
    let mut base = Units::default();
    let mut added_requests = 0;
    for x in gen_ddb.exchanges(original.released) {
        // The per-user limit record is not the live answer's (the requests
        // scenario reports them).
        if x.sent > original.finished || x.record == "LIMIT" {
            continue;
        }
        if matches!(x.op.as_str(), "UpdateItem" | "GetItem" | "PutItem") {
            added += x.units;
            added_requests += 1;
        } else {
            base += x.units;
        }
    }
    let mut reader_units = Units::default();
    for x in read_ddb.exchanges(resumed.released) {
        reader_units += x.units;
    }
    let answer_secs = ms(original.finished - original.released) / 1000.0;
    let reader_secs = ms(resumed.finished - resumed.released) / 1000.0;
    b.store
        .delete_conversation(b.user, conversation.id)
        .await
        .map_err(|e| e.to_string())?;

    // Stop latency.
    let mut stop_ms = Vec::new();
    for i in 0..stops {
        let (marker, conversation) = paced_answer(b, "stop").await?;
        let send = b.event(conversation.id, &format!("stopped answer {marker}"), None);
        let wait = Duration::from_millis(1200 + 97 * i as u64 % 800);
        let (invoked, stopped_at) = tokio::join!(generator.api.invoke(send, WITHIN), async {
            tokio::time::sleep(wait).await;
            let c = b
                .store
                .get_conversation(b.user, conversation.id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("conversation gone")?;
            let live = c.live.ok_or("no live answer to stop")?;
            let recorded = b
                .store
                .request_stop(b.user, conversation.id, live.id)
                .await
                .map_err(|e| e.to_string())?;
            if !recorded {
                return Err("the stop found nothing live".to_owned());
            }
            Ok::<Instant, String>(Instant::now())
        });
        let (invoked, stopped_at) = (invoked?, stopped_at?);
        generator.api.poll(WITHIN).await?;
        let (_, timeline, start) = invoked.stream()?;
        let ended = timeline
            .times_of(b"\"stopped\"", start)
            .first()
            .copied()
            .ok_or("the stream did not end stopped")?;
        stop_ms.push(ms(ended.saturating_duration_since(stopped_at)));
        b.store
            .delete_conversation(b.user, conversation.id)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(Live {
        answer_bytes,
        answer_secs,
        added,
        added_requests,
        base,
        reader_units,
        reader_secs,
        lag_ms,
        stop_ms,
    })
}

pub fn render(live: &Res<Live>) -> String {
    let l = match live {
        Ok(l) => l,
        Err(e) => return format!("\nlive answers: not measured: {e}\n"),
    };
    let mut out = String::new();
    let line = |out: &mut String, what: &str, value: String, target: &str, met: Option<bool>| {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        out.push_str(&format!("{what:<62} {value:>16} {target:>12}  {verdict}\n"));
    };
    out.push_str(&format!(
        "\nlive answers ({} tokens, {} bytes over {:.1} s, CHECKPOINT_INTERVAL_MS 1000; unthrottled)\n",
        ANSWER_TOKENS, l.answer_bytes, l.answer_secs
    ));
    // Two things the classification by operation does not see: the claim changes
    // the conversation item, which the by_user index projects (1 WCU), and the
    // last checkpoint rides in the answer's transaction (2 WCU: transactional).
    let added_write = l.added.write + 1.0 + 2.0;
    line(
        &mut out,
        "write units added per answer (claim, checkpoints, see below)",
        format!("{added_write:.1} WCU"),
        "<= 25",
        Some(added_write <= 25.0),
    );
    line(
        &mut out,
        "read units added per answer (stop polls)",
        format!("{:.1} RCU", l.added.read),
        "<= 25",
        Some(l.added.read <= 25.0),
    );
    line(
        &mut out,
        "  requests added / the send's other units (W/R)",
        format!(
            "{} / {:.0}/{:.1}",
            l.added_requests, l.base.write, l.base.read
        ),
        "",
        None,
    );
    let per_sec = l.reader_units.read / l.reader_secs.max(0.001);
    line(
        &mut out,
        "resume: read units per second per reader",
        format!("{per_sec:.2} RCU/s"),
        "<= 1",
        Some(per_sec <= 1.0),
    );
    // p50 as a figure, p95 against its target.
    let latency = |out: &mut String, what: &str, samples: &[f64], of: &str| {
        line(
            out,
            &format!("{what} p50"),
            format!("{:.0} ms", pct(samples, 50.0)),
            "",
            None,
        );
        let p95 = pct(samples, 95.0);
        line(
            out,
            &format!("{what} p95 ({} {of})", samples.len()),
            format!("{p95:.0} ms"),
            "<= 1500 ms",
            Some(p95 <= 1500.0),
        );
    };
    latency(
        &mut out,
        "resume lag (token at the function -> resumed reader)",
        &l.lag_ms,
        "tokens",
    );
    latency(
        &mut out,
        "stop latency (stop recorded -> stopped ending)",
        &l.stop_ms,
        "stops",
    );
    out.push_str(
        "  (units estimated from item sizes on the wire, plus 1 WCU for the by_user\n   \
         index's copy of the conversation item the claim changes and 2 WCU for the\n   \
         last checkpoint, written in the answer's own transaction)\n",
    );
    out
}
