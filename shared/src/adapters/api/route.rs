//! Routes: `/api/conversations[/{id}[/<action>]]`, the conversation id, methods.

use http::Method;
use lambda_http::Request;
use uuid::Uuid;

use crate::foundation::error::ApiError;

/// Path segments after `/api/conversations`, or `None` for any other path. A
/// stage prefix (API Gateway REST) before `/api` is tolerated.
pub fn conversation_route(path: &str) -> Option<Vec<&str>> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let at = segments
        .windows(2)
        .position(|w| w == ["api", "conversations"])?;
    Some(segments[at + 2..].to_vec())
}

/// A conversation id from the path; anything that is not a UUID is simply a
/// conversation that does not exist.
pub fn conversation_id(segment: &str) -> Result<Uuid, ApiError> {
    if segment.len() != 36 {
        return Err(ApiError::NotFound);
    }
    Uuid::try_parse(segment).map_err(|_| ApiError::NotFound)
}

/// The route a chat function serves: `POST /api/conversations/{id}/<action>`.
/// Returns the raw id segment; it is parsed after authentication.
pub fn chat_route<'r>(req: &'r Request, action: &str) -> Result<&'r str, ApiError> {
    action_route(req, action, &Method::POST)
}

/// `<method> /api/conversations/{id}/<action>`: the raw id segment.
pub fn action_route<'r>(
    req: &'r Request,
    action: &str,
    method: &Method,
) -> Result<&'r str, ApiError> {
    let [id, act] = route_action(req).ok_or(ApiError::RouteNotFound)?;
    if act != action {
        return Err(ApiError::RouteNotFound);
    }
    if req.method() != method {
        return Err(ApiError::MethodNotAllowed);
    }
    Ok(id)
}

/// The `[id, action]` segments of `/api/conversations/{id}/<action>`, if the
/// path has that shape.
pub fn route_action(req: &Request) -> Option<[&str; 2]> {
    match conversation_route(req.uri().path())?.as_slice() {
        [id, act] => Some([*id, *act]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let id = "0192f0c4-8a5e-7c3a-9b1e-0d2f4c6a8e10";
        assert_eq!(conversation_route("/api/conversations"), Some(vec![]));
        assert_eq!(
            conversation_route("/prod/api/conversations/x/"),
            Some(vec!["x"])
        );
        assert_eq!(conversation_route("/api/other"), None);
        assert!(conversation_id(id).is_ok());
        for bad in [
            "",
            "x",
            "0192f0c48a5e7c3a9b1e0d2f4c6a8e10",
            "{0192f0c4-8a5e-7c3a-9b1e-0d2f4c6a8e1}",
        ] {
            assert!(
                matches!(conversation_id(bad), Err(ApiError::NotFound)),
                "{bad}"
            );
        }
    }
}
