//! The HTTP surface shared by the functions: routes, request bodies and their
//! validation (SPEC section 2), JSON responses and error mapping, CORS.

mod body;
mod cors;
mod response;
mod route;

pub use body::{
    body_bytes, decode_regenerate, decode_send, idempotency_key, json_object, text_field, SendBody,
    BODY_ERROR_HEADER, IDEMPOTENCY_HEADER, MAX_BODY_BYTES, MAX_CONTENT_CHARS,
};
pub use cors::{apply_cors, preflight};
pub use response::{empty_response, error_response, json_response, stream_response, ResponseBody};
pub use route::{action_route, chat_route, conversation_id, conversation_route, route_action};
