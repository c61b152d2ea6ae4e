//! Arbitrary request bodies through the decoder of SPEC section 2.
//!
//! Checked: no panic; a rejection is a 422 naming a field (or the body); an
//! accepted body carries exactly what the bytes say, within the SPEC's bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use samosachaat::adapters::api::{decode_regenerate, decode_send, json_object, MAX_CONTENT_CHARS};
use samosachaat::adapters::upstream::ChatParams;
use serde_json::Value;

const FIELDS: [&str; 7] = [
    "body",
    "content",
    "temperature",
    "max_tokens",
    "top_k",
    "thinking_mode",
    "force_web_search",
];

fn check_params(p: &ChatParams, map: Option<&serde_json::Map<String, Value>>) {
    if let Some(t) = p.temperature {
        assert!((0.0..=2.0).contains(&t));
    }
    assert!(p.max_tokens.is_none_or(|m| (1..=4096).contains(&m)));
    assert!(p.top_k.is_none_or(|k| k <= 200));
    let get = |k: &str| map.and_then(|m| m.get(k)).cloned().unwrap_or(Value::Null);
    assert_eq!(
        p.max_tokens.map(Value::from).unwrap_or(Value::Null),
        get("max_tokens")
    );
    assert_eq!(
        p.top_k.map(Value::from).unwrap_or(Value::Null),
        get("top_k")
    );
    assert_eq!(p.thinking_mode, get("thinking_mode") == Value::Bool(true));
    assert_eq!(
        p.force_web_search,
        get("force_web_search") == Value::Bool(true)
    );
    assert_eq!(p.temperature.is_some(), !get("temperature").is_null());
}

fn check_rejection(err: samosachaat::foundation::error::ApiError) {
    assert_eq!(err.status().as_u16(), 422, "{}", err.detail());
    let field = err
        .detail()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(FIELDS.contains(&field.as_str()), "{}", err.detail());
}

fuzz_target!(|data: &[u8]| {
    let object = json_object(data);
    match decode_send(data) {
        Ok(body) => {
            let map = object
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .expect("accepted a non-object");
            assert_eq!(
                map.get("content"),
                Some(&Value::String(body.content.clone()))
            );
            let n = body.content.chars().count();
            assert!((1..=MAX_CONTENT_CHARS).contains(&n));
            check_params(&body.params, Some(map));
        }
        Err(err) => check_rejection(err),
    }
    match decode_regenerate(data) {
        Ok(params) => {
            let map = object.as_ref().ok().expect("accepted a non-object");
            check_params(&params, map.as_ref());
        }
        Err(err) => check_rejection(err),
    }
});
