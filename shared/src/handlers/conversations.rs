//! The conversation routes the chat screen needs (SPEC section 2): create, list,
//! read with messages (a live answer shown as `streaming`), rename, delete, and
//! stop a live answer.

use std::sync::Arc;

use http::{Method, Response, StatusCode};
use lambda_http::{Body, Error, Request, RequestExt};
use serde_json::Value;
use tracing::{info, warn};
use uuid::Uuid;

use crate::adapters::api;
use crate::adapters::metrics::Invocation;
use crate::adapters::state::AppState;
use crate::adapters::store::{CursorOr, HeldAnswer, StoreError, DEFAULT_TITLE};
use crate::domain::live;
use crate::foundation::error::ApiError;
use crate::handlers::stop;

pub const MAX_TITLE_CHARS: usize = 500;
pub const MAX_MODEL_TAG_CHARS: usize = 100;
const DEFAULT_MODEL_TAG: &str = "default";
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

pub async fn handle(state: Arc<AppState>, req: Request) -> Result<Response<Body>, Error> {
    Invocation::of(&req).route(route_name(&req));
    let mut resp = if req.method() == Method::OPTIONS {
        api::preflight(&state.config, &req)
    } else {
        match route(&state, &req).await {
            Ok(resp) => resp,
            Err(err) => {
                if let ApiError::Store(e) = &err {
                    warn!(error = %e, "store failure");
                }
                let mut resp = api::error_response(&err);
                if matches!(err, ApiError::MethodNotAllowed) {
                    let allow = match api::conversation_route(req.uri().path()).as_deref() {
                        Some([]) => "GET, POST",
                        Some([_, _]) => "POST",
                        _ => "GET, PUT, DELETE",
                    };
                    resp.headers_mut()
                        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
                }
                resp
            }
        }
    };
    api::apply_cors(&state.config, req.headers(), &mut resp);
    Ok(resp)
}

/// The route's name in the metrics: a fixed set, never an id.
fn route_name(req: &Request) -> &'static str {
    let rest = api::conversation_route(req.uri().path());
    match (rest.as_deref(), req.method()) {
        (_, &Method::OPTIONS) => "preflight",
        (Some([]), &Method::POST) => "create",
        (Some([]), &Method::GET) => "list",
        (Some([_]), &Method::GET) => "get",
        (Some([_]), &Method::PUT) => "rename",
        (Some([_]), &Method::DELETE) => "delete",
        (Some([_, "stop"]), &Method::POST) => "stop",
        _ => "other",
    }
}

async fn route(state: &AppState, req: &Request) -> Result<Response<Body>, ApiError> {
    let rest = api::conversation_route(req.uri().path()).ok_or(ApiError::RouteNotFound)?;
    let method = req.method().clone();
    match (rest.as_slice(), method) {
        ([], Method::POST | Method::GET)
        | ([_], Method::GET | Method::PUT | Method::DELETE)
        | ([_, "stop"], Method::POST) => {}
        ([] | [_] | [_, "stop"], _) => return Err(ApiError::MethodNotAllowed),
        _ => return Err(ApiError::RouteNotFound),
    }
    let user = state.verifier.authenticate(req.headers())?.id;
    match (rest.as_slice(), req.method()) {
        ([], &Method::POST) => create(state, user, req).await,
        ([], _) => list(state, user, req).await,
        ([id], &Method::GET) => get(state, user, api::conversation_id(id)?).await,
        ([id], &Method::PUT) => rename(state, user, api::conversation_id(id)?, req).await,
        ([id], _) => delete(state, user, api::conversation_id(id)?).await,
        ([id, _], _) => stop::stop(state, user, api::conversation_id(id)?).await,
        _ => Err(ApiError::RouteNotFound),
    }
}

async fn create(state: &AppState, user: Uuid, req: &Request) -> Result<Response<Body>, ApiError> {
    let body = api::json_object(api::body_bytes(req)?)?.unwrap_or_default();
    let title = api::text_field(&body, "title", MAX_TITLE_CHARS)?;
    let model_tag = api::text_field(&body, "model_tag", MAX_MODEL_TAG_CHARS)?;
    let conversation = state
        .store
        .create_conversation(
            user,
            title.as_deref().unwrap_or(DEFAULT_TITLE),
            model_tag.as_deref().unwrap_or(DEFAULT_MODEL_TAG),
        )
        .await?;
    info!(conversation_id = %conversation.id, user_id = %user, "conversation created");
    Ok(api::json_response(StatusCode::CREATED, &conversation))
}

async fn list(state: &AppState, user: Uuid, req: &Request) -> Result<Response<Body>, ApiError> {
    let query = req.query_string_parameters();
    let limit = match query.first("limit") {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| {
                ApiError::invalid(format!("limit: must be an integer from 1 to {MAX_PAGE}"))
            })?,
    };
    let cursor = query.first("cursor").filter(|c| !c.is_empty());
    let page = state
        .store
        .list_conversations(user, limit, cursor)
        .await
        .map_err(|e| match e {
            CursorOr::BadCursor => ApiError::invalid("cursor: invalid"),
            CursorOr::Store(e) => ApiError::Store(e),
        })?;
    Ok(api::json_response(
        StatusCode::OK,
        &serde_json::json!({ "items": page.items, "next_cursor": page.next_cursor }),
    ))
}

async fn get(state: &AppState, user: Uuid, id: Uuid) -> Result<Response<Body>, ApiError> {
    let conversation = state
        .store
        .get_conversation(user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    // Settling a dead answer changes the messages, so it goes first.
    let streaming = live::with_live_answer(state, &conversation).await?;
    let mut messages = state.store.all_messages(id).await?;
    messages.extend(streaming);
    let mut value = serde_json::to_value(&conversation).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert(
            "messages".to_owned(),
            serde_json::to_value(&messages).unwrap_or(Value::Null),
        );
    }
    Ok(api::json_response(StatusCode::OK, &value))
}

async fn rename(
    state: &AppState,
    user: Uuid,
    id: Uuid,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body = api::json_object(api::body_bytes(req)?)?.unwrap_or_default();
    let title = api::text_field(&body, "title", MAX_TITLE_CHARS)?
        .ok_or_else(|| ApiError::invalid("title: field required"))?;
    let conversation = state
        .store
        .rename(user, id, &title)
        .await
        .map_err(not_found)?;
    Ok(api::json_response(StatusCode::OK, &conversation))
}

async fn delete(state: &AppState, user: Uuid, id: Uuid) -> Result<Response<Body>, ApiError> {
    let live = state
        .store
        .delete_conversation(user, id)
        .await
        .map_err(not_found)?;
    info!(conversation_id = %id, user_id = %user, "conversation deleted");
    // The answer generating there ends with its conversation. A live function
    // gives its place back when it notices (again, harmlessly); a dead one never
    // would, and no request can meet its answer any more.
    if let Some(answer) = live {
        let held = HeldAnswer {
            answer,
            conversation: id,
        };
        if let Err(e) = state.store.release_answers(user, &[held], &[], &[]).await {
            warn!(error = %e, "generating place of a deleted conversation not given back");
        }
    }
    Ok(api::empty_response(StatusCode::NO_CONTENT))
}

fn not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound,
        other => ApiError::Store(other),
    }
}
