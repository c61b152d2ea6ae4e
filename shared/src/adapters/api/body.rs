//! Request bodies and headers (SPEC section 2): size, JSON, the send and
//! regenerate bodies and their validation, `Idempotency-Key`.

use http::HeaderMap;
use lambda_http::Request;
use serde_json::{Map, Value};

use crate::adapters::upstream::ChatParams;
use crate::foundation::error::ApiError;

pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_CONTENT_CHARS: usize = 8000;

/// Set by the Lambda runtime adapter on a request whose base64 body did not
/// decode (any such header from the client is removed first), so the handler can answer 400
/// instead of the runtime panicking.
pub const BODY_ERROR_HEADER: &str = "x-samosachaat-body-error";

#[derive(Debug, Clone, PartialEq)]
pub struct SendBody {
    pub content: String,
    pub params: ChatParams,
}

/// The request body as bytes, refusing undecodable and oversized bodies.
pub fn body_bytes(req: &Request) -> Result<&[u8], ApiError> {
    if req.headers().contains_key(BODY_ERROR_HEADER) {
        return Err(ApiError::BadRequest(
            "body: isBase64Encoded is set but the body is not valid base64".into(),
        ));
    }
    let bytes: &[u8] = req.body().as_ref();
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(bytes)
}

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The optional `Idempotency-Key`: one header of 1 to 128 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "Idempotency-Key: must be one header of 1 to 128 visible ASCII characters",
        )
    };
    let mut values = headers.get_all(IDEMPOTENCY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid());
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 128 || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(invalid());
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Parses a body that must be a JSON object; an empty body is `None`.
pub fn json_object(bytes: &[u8]) -> Result<Option<Map<String, Value>>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let text =
        std::str::from_utf8(bytes).map_err(|_| ApiError::invalid("body: must be UTF-8 JSON"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(ApiError::invalid("body: must be a JSON object")),
        Err(_) => Err(ApiError::invalid("body: is not valid JSON")),
    }
}

pub fn decode_send(bytes: &[u8]) -> Result<SendBody, ApiError> {
    let map = json_object(bytes)?.ok_or_else(|| ApiError::invalid("content: field required"))?;
    let content = match map.get("content") {
        None | Some(Value::Null) => return Err(ApiError::invalid("content: field required")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ApiError::invalid("content: must be a string")),
    };
    let chars = content.chars().count();
    if chars == 0 || chars > MAX_CONTENT_CHARS {
        return Err(ApiError::invalid(format!(
            "content: must be 1 to {MAX_CONTENT_CHARS} characters (got {chars})"
        )));
    }
    Ok(SendBody {
        content: content.clone(),
        params: params_from(&map)?,
    })
}

/// Regenerate's body: the parameters only; an empty body means all defaults.
pub fn decode_regenerate(bytes: &[u8]) -> Result<ChatParams, ApiError> {
    match json_object(bytes)? {
        None => Ok(ChatParams::default()),
        Some(map) => params_from(&map),
    }
}

fn params_from(map: &Map<String, Value>) -> Result<ChatParams, ApiError> {
    let temperature = match map.get("temperature") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => Some(t),
            _ => {
                return Err(ApiError::invalid(
                    "temperature: must be a number from 0 to 2",
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "temperature: must be a number from 0 to 2",
            ))
        }
    };
    Ok(ChatParams {
        temperature,
        max_tokens: int_field(map, "max_tokens", 1, 4096)?,
        top_k: int_field(map, "top_k", 0, 200)?,
        thinking_mode: bool_field(map, "thinking_mode")?,
        force_web_search: bool_field(map, "force_web_search")?,
    })
}

fn int_field(
    map: &Map<String, Value>,
    name: &str,
    min: u32,
    max: u32,
) -> Result<Option<u32>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| (min..=max).contains(v))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(format!("{name}: must be an integer from {min} to {max}"))
            }),
        Some(_) => Err(ApiError::invalid(format!(
            "{name}: must be an integer from {min} to {max}"
        ))),
    }
}

fn bool_field(map: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(format!("{name}: must be true or false"))),
    }
}

/// An optional string field of at most `max` characters (at least one when present).
pub fn text_field(
    map: &Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let chars = s.chars().count();
            if chars == 0 || chars > max {
                Err(ApiError::invalid(format!(
                    "{name}: must be 1 to {max} characters"
                )))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(_) => Err(ApiError::invalid(format!("{name}: must be a string"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn send_body_table() {
        let long = "é".repeat(8000);
        let too_long = "é".repeat(8001);
        let ok: Vec<(String, SendBody)> = vec![
            (r#"{"content":"hi"}"#.into(), SendBody { content: "hi".into(), params: ChatParams::default() }),
            (
                format!(r#"{{"content":"{long}"}}"#),
                SendBody { content: long.clone(), params: ChatParams::default() },
            ),
            (
                r#"{"content":"x","temperature":2,"max_tokens":4096,"top_k":0,"thinking_mode":true,"force_web_search":true,"extra":1}"#.into(),
                SendBody {
                    content: "x".into(),
                    params: ChatParams {
                        temperature: Some(2.0),
                        max_tokens: Some(4096),
                        top_k: Some(0),
                        thinking_mode: true,
                        force_web_search: true,
                    },
                },
            ),
            (
                r#"{"content":"x","temperature":null,"max_tokens":null,"top_k":null,"thinking_mode":null}"#.into(),
                SendBody { content: "x".into(), params: ChatParams::default() },
            ),
        ];
        for (body, want) in ok {
            assert_eq!(decode_send(body.as_bytes()).expect(&body), want);
        }

        let bad: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "content"),
            (b"{}".to_vec(), "content"),
            (br#"{"content":""}"#.to_vec(), "content"),
            (
                format!(r#"{{"content":"{too_long}"}}"#).into_bytes(),
                "content",
            ),
            (br#"{"content":5}"#.to_vec(), "content"),
            (br#"{"content":null}"#.to_vec(), "content"),
            (br#"[{"content":"x"}]"#.to_vec(), "body"),
            (b"not json".to_vec(), "body"),
            (b"\xff\xfe{}".to_vec(), "body"),
            (
                br#"{"content":"x","temperature":2.01}"#.to_vec(),
                "temperature",
            ),
            (
                br#"{"content":"x","temperature":-0.1}"#.to_vec(),
                "temperature",
            ),
            (
                br#"{"content":"x","temperature":"0.5"}"#.to_vec(),
                "temperature",
            ),
            (br#"{"content":"x","max_tokens":0}"#.to_vec(), "max_tokens"),
            (
                br#"{"content":"x","max_tokens":4097}"#.to_vec(),
                "max_tokens",
            ),
            (
                br#"{"content":"x","max_tokens":1.5}"#.to_vec(),
                "max_tokens",
            ),
            (
                br#"{"content":"x","max_tokens":"10"}"#.to_vec(),
                "max_tokens",
            ),
            (br#"{"content":"x","top_k":201}"#.to_vec(), "top_k"),
            (br#"{"content":"x","top_k":-1}"#.to_vec(), "top_k"),
            (
                br#"{"content":"x","thinking_mode":"yes"}"#.to_vec(),
                "thinking_mode",
            ),
            (
                br#"{"content":"x","force_web_search":1}"#.to_vec(),
                "force_web_search",
            ),
        ];
        for (body, field) in bad {
            let err = decode_send(&body).expect_err(&String::from_utf8_lossy(&body));
            assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert!(err.detail().starts_with(field), "{field}: {}", err.detail());
        }
    }

    #[test]
    fn regenerate_body_defaults_when_empty() {
        assert_eq!(
            decode_regenerate(b"").expect("empty"),
            ChatParams::default()
        );
        assert_eq!(
            decode_regenerate(b"  \n").expect("blank"),
            ChatParams::default()
        );
        assert_eq!(
            decode_regenerate(b"{}").expect("object"),
            ChatParams::default()
        );
        assert!(decode_regenerate(b"null").is_err());
        assert!(decode_regenerate(br#"{"top_k":1000}"#).is_err());
    }
}

#[cfg(test)]
mod proptests {
    //! Hostile input for the request decoder: arbitrary bytes never panic, every
    //! accepted body yields exactly the values it carried, and the content bound
    //! is in Unicode scalar values.
    use super::*;
    use http::StatusCode;
    use proptest::prelude::*;
    use serde_json::json;

    /// Optional values are sent three ways: absent, `null`, or the value.
    fn put(map: &mut Map<String, Value>, name: &str, value: Option<Value>, null: bool) {
        match value {
            Some(v) => {
                map.insert(name.into(), v);
            }
            None if null => {
                map.insert(name.into(), Value::Null);
            }
            None => {}
        }
    }

    /// An arbitrary JSON value, of every kind, for fields that must reject most.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            (-10.0f64..10.0).prop_map(|f| json!(f)),
            (-5i64..5000).prop_map(|n| json!(n)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// What SPEC section 2 says a parameter value means: `Ok(None)` for the
    /// server default, `Err(())` for a 422.
    fn spec_temperature(v: Option<&Value>) -> Result<Option<f64>, ()> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|t| (0.0..=2.0).contains(t))
                .map(Some)
                .ok_or(()),
            Some(_) => Err(()),
        }
    }

    fn spec_int(v: Option<&Value>, min: u64, max: u64) -> Result<Option<u32>, ()> {
        match v {
            None | Some(Value::Null) => Ok(None),
            // Integers only: 1.0 and 1e2 are floats in JSON and refused.
            Some(Value::Number(n)) => match n.as_u64() {
                Some(i) if (min..=max).contains(&i) => Ok(Some(i as u32)),
                _ => Err(()),
            },
            Some(_) => Err(()),
        }
    }

    fn spec_bool(v: Option<&Value>) -> Result<bool, ()> {
        match v {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(()),
        }
    }

    fn spec_params(map: &Map<String, Value>) -> Result<ChatParams, ()> {
        Ok(ChatParams {
            temperature: spec_temperature(map.get("temperature"))?,
            max_tokens: spec_int(map.get("max_tokens"), 1, 4096)?,
            top_k: spec_int(map.get("top_k"), 0, 200)?,
            thinking_mode: spec_bool(map.get("thinking_mode"))?,
            force_web_search: spec_bool(map.get("force_web_search"))?,
        })
    }

    /// Without serde_json's `float_roundtrip` feature its fast float parser may
    /// land one ULP off (`1.5353532198899233` read as `...231`), and that value
    /// would go upstream; found by `valid_bodies_round_trip`.
    #[test]
    fn temperature_is_read_exactly() {
        for t in [1.5353532198899233f64, 0.1, 0.7, 1.9999999999999998, 5e-324] {
            let body = serde_json::to_vec(&json!({ "temperature": t })).expect("json");
            assert_eq!(
                decode_regenerate(&body).expect("valid").temperature,
                Some(t),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    /// `n` characters cycling through `alphabet`.
    fn text_of(alphabet: &[char], n: usize) -> String {
        alphabet.iter().cycle().take(n).collect()
    }

    fn assert_invalid(err: ApiError, field: &str) -> Result<(), TestCaseError> {
        prop_assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        prop_assert!(
            err.detail().starts_with(field),
            "{}: {}",
            field,
            err.detail()
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = json_object(&bytes);
            let _ = decode_send(&bytes);
            let _ = decode_regenerate(&bytes);
        }

        /// Bytes that are almost JSON (a valid body with bytes replaced, cut, or
        /// inserted) reach the parser's deeper paths that random bytes do not.
        #[test]
        fn mangled_bodies_never_panic_and_never_invent_values(
            content in ".{1,16}",
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
        ) {
            let mut bytes = serde_json::to_vec(&json!({
                "content": content, "temperature": 0.5, "max_tokens": 10, "top_k": 3,
                "thinking_mode": true, "force_web_search": false,
            })).expect("json");
            for (at, byte, kind) in edits {
                let at = at % (bytes.len() + 1);
                match kind {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => bytes.truncate(at),
                }
            }
            let _ = decode_regenerate(&bytes);
            if let Ok(body) = decode_send(&bytes) {
                // Whatever was accepted is exactly what the bytes say.
                let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) else {
                    return Err(TestCaseError::fail("accepted bytes that are not a JSON object"));
                };
                prop_assert_eq!(Some(&Value::String(body.content.clone())), map.get("content"));
                prop_assert_eq!(Ok(body.params), spec_params(&map));
            }
        }

        /// Any valid body round-trips to exactly the values sent; null and absent
        /// both mean the default; unknown fields are ignored.
        #[test]
        fn valid_bodies_round_trip(
            content in any::<String>().prop_filter("1..=8000 chars", |s| {
                let n = s.chars().count();
                (1..=MAX_CONTENT_CHARS).contains(&n)
            }),
            temperature in proptest::option::of(prop_oneof![0.0f64..=2.0, Just(0.0), Just(2.0), Just(1.0)]),
            max_tokens in proptest::option::of(1u32..=4096),
            top_k in proptest::option::of(0u32..=200),
            thinking_mode in proptest::option::of(any::<bool>()),
            force_web_search in proptest::option::of(any::<bool>()),
            nulls in any::<[bool; 5]>(),
            extra in proptest::collection::btree_map("[a-z_]{1,12}", any_json(), 0..4),
        ) {
            let mut map: Map<String, Value> = extra
                .into_iter()
                .filter(|(k, _)| !matches!(k.as_str(),
                    "content" | "temperature" | "max_tokens" | "top_k" | "thinking_mode" | "force_web_search"))
                .collect();
            map.insert("content".into(), json!(content));
            put(&mut map, "temperature", temperature.map(|t| json!(t)), nulls[0]);
            put(&mut map, "max_tokens", max_tokens.map(|t| json!(t)), nulls[1]);
            put(&mut map, "top_k", top_k.map(|t| json!(t)), nulls[2]);
            put(&mut map, "thinking_mode", thinking_mode.map(Value::Bool), nulls[3]);
            put(&mut map, "force_web_search", force_web_search.map(Value::Bool), nulls[4]);
            let params = ChatParams {
                temperature,
                max_tokens,
                top_k,
                thinking_mode: thinking_mode.unwrap_or(false),
                force_web_search: force_web_search.unwrap_or(false),
            };
            let bytes = serde_json::to_vec(&map).expect("json");
            let got = decode_send(&bytes);
            prop_assert_eq!(got.as_ref().ok(), Some(&SendBody { content: content.clone(), params: params.clone() }),
                "{:?}", got.as_ref().err().map(ApiError::detail));

            // Regenerate reads the same parameters and ignores `content`.
            let regen = |bytes: &[u8]| decode_regenerate(bytes).ok();
            prop_assert_eq!(regen(&bytes), Some(params.clone()));
            map.remove("content");
            let bytes = serde_json::to_vec(&map).expect("json");
            prop_assert_eq!(regen(&bytes), Some(params));
            assert_invalid(decode_send(&bytes).expect_err("no content"), "content")?;
        }

        /// Arbitrary values in every parameter: accepted exactly when SPEC section 2
        /// allows the value, and then with exactly that value; otherwise a 422
        /// naming a field that is wrong.
        #[test]
        fn arbitrary_parameter_values_follow_the_spec(
            values in proptest::collection::vec(proptest::option::of(any_json()), 5),
        ) {
            let names = ["temperature", "max_tokens", "top_k", "thinking_mode", "force_web_search"];
            let mut map = Map::new();
            map.insert("content".into(), json!("x"));
            for (name, value) in names.iter().zip(&values) {
                if let Some(v) = value {
                    map.insert((*name).into(), v.clone());
                }
            }
            let want = spec_params(&map);
            let bytes = serde_json::to_vec(&map).expect("json");
            match (decode_send(&bytes), want) {
                (Ok(body), Ok(want)) => prop_assert_eq!(body.params, want),
                (Err(err), Err(())) => {
                    prop_assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
                    let field = err.detail().split(':').next().unwrap_or_default().to_owned();
                    prop_assert!(names.contains(&field.as_str()), "{}", err.detail());
                    prop_assert!(spec_params(&Map::from_iter([(field.clone(), map[&field].clone())])).is_err(),
                        "{} blamed but its value {} is valid", field, map[&field]);
                }
                (got, want) => prop_assert!(false, "{:?} vs spec {:?} for {}", got.map(|b| b.params), want, Value::Object(map)),
            }
        }

        /// Content is 1 to 8000 Unicode scalar values, whatever their byte length.
        #[test]
        fn content_length_counts_characters_not_bytes(
            alphabet in proptest::collection::vec(any::<char>(), 1..32),
            n in prop_oneof![1usize..=8000, Just(8000usize), 7990usize..=8000],
            over in 8001usize..=8200,
        ) {
            let ok = text_of(&alphabet, n);
            let body = serde_json::to_vec(&json!({ "content": ok })).expect("json");
            prop_assert_eq!(decode_send(&body).map(|b| b.content).ok(), Some(ok));

            let long = text_of(&alphabet, over);
            let body = serde_json::to_vec(&json!({ "content": long })).expect("json");
            assert_invalid(decode_send(&body).expect_err("over 8000"), "content")?;
        }
    }
}
