//! An incremental reader of the upstream's server-sent events (SPEC section 4).
//!
//! The upstream may put several events in one chunk, or half an event, or half a
//! UTF-8 character; lines may end in LF, CRLF or CR; the stream may start with a
//! BOM. The reader splits on line ends first and decodes whole lines only, so a
//! character split across chunks is never mangled. Lines that are not valid UTF-8,
//! data that is not a JSON object, and oversized events are skipped, never guessed at.

use serde_json::{Map, Value};

/// An event too large to be a token event is dropped rather than buffered forever.
const MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A token event. `json` is the event re-encoded on one line, ready to forward.
    Token { text: String, json: String },
    /// Any other JSON object (forwarded as is; the browser skips what it does not know).
    Other { json: String },
    /// `{"done": true}`: the upstream finished the answer.
    Done,
}

#[derive(Debug, Default)]
pub struct SseReader {
    line: Vec<u8>,
    line_overflow: bool,
    data: String,
    has_data: bool,
    event_broken: bool,
    after_cr: bool,
    first_line_done: bool,
}

impl SseReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk of bytes, appending every event it completes to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Event>) {
        while !chunk.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[0] == b'\n' {
                    chunk = &chunk[1..];
                    continue;
                }
            }
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.push_partial(chunk);
                    break;
                }
                Some(i) => {
                    self.push_partial(&chunk[..i]);
                    self.after_cr = chunk[i] == b'\r';
                    chunk = &chunk[i + 1..];
                    self.finish_line(out);
                }
            }
        }
    }

    /// The stream ended: an event still pending (no blank line after it) is
    /// dispatched if it is whole, so a final `done` without its blank line counts.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        if !self.line.is_empty() || self.line_overflow {
            self.finish_line(out);
        }
        self.dispatch(out);
    }

    fn push_partial(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() > MAX_EVENT_BYTES {
            self.line_overflow = true;
            self.line.clear();
        } else if !self.line_overflow {
            self.line.extend_from_slice(bytes);
        }
    }

    /// Handles the line gathered in `self.line` and empties it, keeping its
    /// buffer for the next line.
    fn finish_line(&mut self, out: &mut Vec<Event>) {
        let dispatch = self.take_line();
        self.line.clear();
        if dispatch {
            self.dispatch(out);
        }
    }

    /// Applies the gathered line to the pending event; true when it is the blank
    /// line that ends the event.
    fn take_line(&mut self) -> bool {
        let mut bytes = self.line.as_slice();
        if !self.first_line_done {
            self.first_line_done = true;
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        if std::mem::take(&mut self.line_overflow) {
            self.event_broken = true;
            return false;
        }
        let Ok(line) = std::str::from_utf8(bytes) else {
            self.event_broken = true;
            return false;
        };
        if line.is_empty() {
            return true;
        }
        if line.starts_with(':') {
            return false;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            if self.data.len() + value.len() > MAX_EVENT_BYTES {
                self.event_broken = true;
            } else {
                self.data.push_str(value);
            }
            self.has_data = true;
        }
        // `event`, `id`, `retry` and unknown fields carry nothing for us.
        false
    }

    fn dispatch(&mut self, out: &mut Vec<Event>) {
        let data = std::mem::take(&mut self.data);
        let has_data = std::mem::take(&mut self.has_data);
        let broken = std::mem::take(&mut self.event_broken);
        if !has_data || broken {
            return;
        }
        if let Some(event) = interpret(data) {
            out.push(event);
        }
    }
}

fn interpret(data: String) -> Option<Event> {
    let fields = serde_json::from_str::<Fields>(&data).ok()?;
    if fields.done {
        return Some(Event::Done);
    }
    // A one-line event goes to the browser exactly as the upstream sent it; only
    // a multi-line one (data fields joined by `\n`) is re-encoded onto one line.
    let json = if data.contains('\n') {
        encode(&serde_json::from_str(&data).ok()?)
    } else {
        data
    };
    match fields.token {
        Some(text) => Some(Event::Token { text, json }),
        None => Some(Event::Other { json }),
    }
}

/// What the reader needs of an event: whether it is `{"done": true}`,
/// and its token if that is a string. The rest of the object is checked to be
/// JSON but not built (that was half of the reader's instructions). Like a
/// parsed map, a repeated key counts by its last value; anything but an
/// object is refused.
struct Fields {
    done: bool,
    token: Option<String>,
}

/// A key of an event object, matched without allocating.
enum Key {
    Done,
    Token,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "done" => Key::Done,
                    "token" => Key::Token,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> serde::de::Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields, A::Error> {
                let mut fields = Fields {
                    done: false,
                    token: None,
                };
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Done => fields.done = map.next_value::<Value>()? == Value::Bool(true),
                        Key::Token => {
                            fields.token = match map.next_value::<Value>()? {
                                Value::String(text) => Some(text),
                                _ => None,
                            }
                        }
                        Key::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(fields)
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

fn encode(map: &Map<String, Value>) -> String {
    // Serializing a map of JSON values cannot fail.
    serde_json::to_string(map).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_chunks(chunks: &[&[u8]]) -> Vec<Event> {
        let mut reader = SseReader::new();
        let mut out = Vec::new();
        for c in chunks {
            reader.feed(c, &mut out);
        }
        reader.finish(&mut out);
        out
    }

    fn tokens(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Token { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    fn tok(t: &str) -> String {
        format!("data: {}\n\n", serde_json::json!({"token": t, "gpu": 0}))
    }

    #[test]
    fn one_line_events_read_as_a_parsed_object_would() {
        // (data, what the whole parsed object says).
        let cases: &[(&str, Option<Event>)] = &[
            (
                r#"{"token":"a","gpu":0}"#,
                Some(Event::Token {
                    text: "a".into(),
                    json: r#"{"token":"a","gpu":0}"#.into(),
                }),
            ),
            (
                r#"{"gpu":[1,{"token":"x"}],"token":"b"}"#,
                Some(Event::Token {
                    text: "b".into(),
                    json: r#"{"gpu":[1,{"token":"x"}],"token":"b"}"#.into(),
                }),
            ),
            (
                r#"{"tok\u0065n":"esc"}"#,
                Some(Event::Token {
                    text: "esc".into(),
                    json: r#"{"tok\u0065n":"esc"}"#.into(),
                }),
            ),
            (
                r#"{"token":"first","token":"last"}"#,
                Some(Event::Token {
                    text: "last".into(),
                    json: r#"{"token":"first","token":"last"}"#.into(),
                }),
            ),
            (
                r#"{"token":"t","token":5}"#,
                Some(Event::Other {
                    json: r#"{"token":"t","token":5}"#.into(),
                }),
            ),
            (
                r#"{"token":null}"#,
                Some(Event::Other {
                    json: r#"{"token":null}"#.into(),
                }),
            ),
            (
                r#"{"done":"true"}"#,
                Some(Event::Other {
                    json: r#"{"done":"true"}"#.into(),
                }),
            ),
            (r#"{"done":true,"token":"late"}"#, Some(Event::Done)),
            (
                r#"{"done":true,"done":false}"#,
                Some(Event::Other {
                    json: r#"{"done":true,"done":false}"#.into(),
                }),
            ),
            (
                r#"{"status":"searching"}"#,
                Some(Event::Other {
                    json: r#"{"status":"searching"}"#.into(),
                }),
            ),
            (r#"["token","a"]"#, None),
            (r#""token""#, None),
            ("5", None),
            ("null", None),
            (r#"{"token":"a"} trailing"#, None),
            (r#"{"token":"a","x":}"#, None),
            (r#"{"token":"a""#, None),
        ];
        for (data, expected) in cases {
            assert_eq!(&interpret((*data).to_owned()), expected, "{data}");
        }
    }

    #[test]
    fn reading_table() {
        let two = format!("{}{}data: {{\"done\": true}}\n\n", tok("hel"), tok("lo"));
        let crlf = two.replace('\n', "\r\n");
        let cr = two.replace('\n', "\r");
        let bom = format!("\u{feff}{two}");
        let junk = format!(
            ": keepalive\nevent: message\nid: 3\nretry: 10\n\n{}data: not json\n\ndata:\n\ndata: [1,2]\n\n{}data: {{\"done\": true}}\n\n",
            tok("hel"),
            tok("lo")
        );
        let cases: Vec<(&str, String)> = vec![
            ("lf", two.clone()),
            ("crlf", crlf),
            ("cr", cr),
            ("bom", bom),
            ("junk lines and events", junk),
        ];
        for (name, stream) in cases {
            let whole = read_chunks(&[stream.as_bytes()]);
            assert_eq!(tokens(&whole), ["hel", "lo"], "{name}");
            assert_eq!(whole.last(), Some(&Event::Done), "{name}");
            // Every split point gives the same events.
            for cut in 0..stream.len() {
                let (a, b) = stream.as_bytes().split_at(cut);
                assert_eq!(read_chunks(&[a, b]), whole, "{name} cut at {cut}");
            }
        }
    }

    #[test]
    fn utf8_split_across_chunks_is_reassembled() {
        let stream = tok("नमस्ते 🙂");
        let bytes = stream.as_bytes();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(tokens(&read_chunks(&chunks)), ["नमस्ते 🙂"]);
    }

    #[test]
    fn invalid_utf8_line_drops_its_event_only() {
        let mut stream = b"data: {\"token\": \"bad\xff\"}\n\n".to_vec();
        stream.extend_from_slice(tok("ok").as_bytes());
        assert_eq!(tokens(&read_chunks(&[&stream])), ["ok"]);
    }

    #[test]
    fn other_json_objects_are_forwarded_on_one_line() {
        let events = read_chunks(&[b"data: {\"status\":\ndata: \"searching\"}\n\n"]);
        assert_eq!(
            events,
            [Event::Other {
                json: r#"{"status":"searching"}"#.into()
            }]
        );
    }

    #[test]
    fn final_done_without_blank_line_counts_but_half_an_event_does_not() {
        assert_eq!(read_chunks(&[b"data: {\"done\": true}"]), [Event::Done]);
        assert_eq!(read_chunks(&[b"data: {\"token\": \"he"]), []);
    }

    #[test]
    fn forwarded_token_json_is_single_line() {
        let events = read_chunks(&[tok("a\nb \"q\"").as_bytes()]);
        match &events[0] {
            Event::Token { text, json } => {
                assert_eq!(text, "a\nb \"q\"");
                assert!(!json.contains('\n'));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
            let _ = read_chunks(&refs);
        }

        #[test]
        fn any_chunking_yields_exactly_the_tokens_sent(
            sent in proptest::collection::vec(".{0,12}", 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
            crlf in any::<bool>(),
        ) {
            let mut stream: String = sent.iter().map(|t| tok(t)).collect();
            stream.push_str("data: {\"done\": true}\n\n");
            if crlf {
                stream = stream.replace('\n', "\r\n");
            }
            let events = read_chunks(&chunk_at(stream.as_bytes(), &cuts));
            prop_assert_eq!(tokens(&events), sent);
            prop_assert_eq!(events.last(), Some(&Event::Done));
        }
    }

    /// Splits `bytes` at the given cut points (taken modulo its length).
    fn chunk_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&bytes[last..p]);
            last = p;
        }
        chunks.push(&bytes[last..]);
        chunks
    }

    /// Junk an upstream (or a proxy in front of it) might emit between events.
    fn junk() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // Arbitrary bytes, invalid UTF-8 and stray CR/LF included.
            proptest::collection::vec(any::<u8>(), 0..48),
            // Lines that look like SSE but carry no token.
            proptest::sample::select(vec![
                ": keepalive",
                ": {\"token\": \"comment\"}",
                "event: token",
                "id: 7",
                "retry: 10",
                "data: not json",
                "data:",
                "data: [1,2]",
                "data: \"token\"",
                "data: {\"token\": \"half",
                "data: {\"token\": 5}",
                "token: {\"token\": \"x\"}",
                "data : {\"token\": \"spaced field name\"}",
                "\u{feff}data: {\"token\": \"bom mid-stream\"}",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            // A token event whose line is not valid UTF-8: dropped whole.
            ".{0,6}".prop_map(|t| {
                let mut b = format!("data: {{\"token\": \"{t}").into_bytes();
                b.extend_from_slice(b"\xff\xfe\"}");
                b
            }),
        ]
    }

    proptest! {
        /// Tokens of arbitrary Unicode (quotes, backslashes, CR, LF, U+2028, NUL,
        /// a BOM...) with junk blocks between the events, each junk block closed
        /// by a blank line, under any chunking and any line ending: exactly the
        /// tokens sent come out, in order, and nothing else is a token.
        #[test]
        fn junk_between_events_never_yields_a_token_that_was_not_sent(
            sent in proptest::collection::vec(any::<String>(), 0..8),
            junks in proptest::collection::vec(junk(), 9),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
            ending in proptest::sample::select(vec!["\n", "\r\n", "\r"]),
        ) {
            // The junk alone must carry no token (arbitrary bytes could, in
            // theory, spell a whole token event).
            for j in &junks {
                // Checked as it stands in the stream: after a line end, not first.
                let mut alone = b"\n".to_vec();
                alone.extend_from_slice(j);
                alone.extend_from_slice(b"\n\n");
                prop_assume!(tokens(&read_chunks(&[&alone])).is_empty());
            }
            let mut stream: Vec<u8> = format!(": upstream{ending}").into_bytes();
            for (i, t) in sent.iter().enumerate() {
                stream.extend_from_slice(&junks[i]);
                stream.extend_from_slice(ending.repeat(2).as_bytes());
                stream.extend_from_slice(tok(t).replace("\n\n", &ending.repeat(2)).as_bytes());
            }
            stream.extend_from_slice(&junks[8]);
            stream.extend_from_slice(ending.repeat(2).as_bytes());
            stream.extend_from_slice(format!("data: {{\"done\": true}}{ending}{ending}").as_bytes());
            let events = read_chunks(&chunk_at(&stream, &cuts));
            prop_assert_eq!(tokens(&events), sent);
            prop_assert_eq!(events.last(), Some(&Event::Done));
            for e in &events {
                if let Event::Token { json, .. } = e {
                    prop_assert!(!json.contains(['\n', '\r']), "forwarded JSON spans lines: {}", json);
                }
            }
        }

        /// Whatever the bytes, every token that comes out was spelled, whole, by a
        /// `data:` line of the input: the reader never assembles a token from
        /// pieces of different events.
        #[test]
        fn arbitrary_streams_only_yield_tokens_spelled_in_the_input(
            parts in proptest::collection::vec(prop_oneof![
                junk(),
                ".{0,6}".prop_map(|t| tok(&t).into_bytes()),
                Just(b"\n".to_vec()),
                Just(b"\r".to_vec()),
            ], 0..12),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let stream: Vec<u8> = parts.concat();
            let text = String::from_utf8_lossy(&stream);
            for t in tokens(&read_chunks(&chunk_at(&stream, &cuts))) {
                // Some JSON string literal of the input decodes to it (whatever
                // escapes spell it).
                let spelled = text.match_indices('"').any(|(i, _)| {
                    serde_json::Deserializer::from_str(&text[i..])
                        .into_iter::<String>()
                        .next()
                        .is_some_and(|s| s.is_ok_and(|s| s == t))
                });
                prop_assert!(spelled, "token {:?} not in the input {:?}", t, text);
            }
        }
    }
}
