//! Arbitrary upstream bytes, cut into arbitrary chunks, through the SSE reader.
//!
//! Input layout: the first byte `n` gives how many cut points follow (each a
//! little-endian u16, taken modulo the stream length); the rest is the stream.
//! Checked: no panic; the chunking never changes the events (the same bytes in
//! one chunk give the same events); every token was spelled, as a JSON string
//! literal, in the stream; a forwarded event is one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use samosachaat::adapters::upstream::sse::{Event, SseReader};

fn read(chunks: &[&[u8]]) -> Vec<Event> {
    let mut reader = SseReader::new();
    let mut out = Vec::new();
    for c in chunks {
        reader.feed(c, &mut out);
    }
    reader.finish(&mut out);
    out
}

/// Whether some JSON string literal in `text` decodes to `token` (the input may
/// spell it with any escapes: `\/`, `\u0041`...).
fn spelled(text: &str, token: &str) -> bool {
    text.match_indices('"').any(|(i, _)| {
        serde_json::Deserializer::from_str(&text[i..])
            .into_iter::<String>()
            .next()
            .is_some_and(|s| s.is_ok_and(|s| s == token))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize % 16).min(rest.len() / 2);
    let (cut_bytes, stream) = rest.split_at(n * 2);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for c in cuts {
        chunks.push(&stream[last..c]);
        last = c;
    }
    chunks.push(&stream[last..]);

    let chunked = read(&chunks);
    let whole = read(&[stream]);
    assert_eq!(chunked, whole, "the chunking changed the events");

    let text = String::from_utf8_lossy(stream);
    for event in &chunked {
        let json = match event {
            Event::Token { text: t, json } => {
                assert!(spelled(&text, t), "token {t:?} not in the stream");
                json
            }
            Event::Other { json } => json,
            Event::Done => continue,
        };
        assert!(!json.contains(['\n', '\r']), "forwarded event spans lines");
        assert!(serde_json::from_str::<serde_json::Value>(json).is_ok_and(|v| v.is_object()));
    }
});
