//! CORS: an allowed `Origin` echoed, preflights answered by the functions.

use http::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, VARY};
use http::{HeaderMap, Response, StatusCode};
use lambda_http::Request;

use super::response::empty_response;
use crate::foundation::config::Config;

/// Echoes an allowed `Origin` (API Gateway does not add CORS headers to proxy
/// responses; Function URLs configured with CORS replace these with their own).
pub fn apply_cors<B>(config: &Config, request: &HeaderMap, resp: &mut Response<B>) {
    let Some(origin) = request.get(http::header::ORIGIN) else {
        return;
    };
    let allowed = origin.to_str().is_ok_and(|o| {
        config
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
    });
    if allowed {
        resp.headers_mut()
            .insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        resp.headers_mut()
            .append(VARY, HeaderValue::from_static("origin"));
        // A page can read how long a 429 asks it to wait, and the request id
        // to quote to support.
        resp.headers_mut().insert(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after, x-request-id"),
        );
    }
}

/// Answers a CORS preflight.
pub fn preflight<B: From<String>>(config: &Config, req: &Request) -> Response<B> {
    let mut resp = empty_response(StatusCode::NO_CONTENT);
    apply_cors(config, req.headers(), &mut resp);
    if resp.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
        let h = resp.headers_mut();
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
        );
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("authorization, content-type, idempotency-key"),
        );
        h.insert("access-control-max-age", HeaderValue::from_static("600"));
    }
    resp
}
