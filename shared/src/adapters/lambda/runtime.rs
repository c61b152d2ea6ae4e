//! How the functions meet the Lambda runtime: `lambda_http`'s adapters turn events
//! into requests and responses into Lambda's shapes, and [`super::runtime_api`]
//! carries them to and from the Runtime API.
//!
//! `lambda_http` decodes a base64 body with `expect`, so an event whose
//! `isBase64Encoded` body is not base64 would panic before any handler runs (a 502
//! to the user). Every event passes [`sanitize`] first: such a body is removed and
//! the request marked, and the handler answers a clear 400 instead.
//!
//! REST API and ALB events carry repeated headers in `multiValueHeaders`, but
//! `lambda_http` lets the single-valued `headers` overwrite them, which would turn
//! two `Authorization` headers into one. [`sanitize`] drops both copies instead,
//! so such a request is refused (401) like any other ambiguous credential.

use std::future::Future;
use std::sync::Arc;

use base64::Engine;
use http::{HeaderMap, HeaderValue};
use lambda_http::request::LambdaRequest;
use lambda_http::tower::ServiceBuilder;
use lambda_http::{
    service_fn, Adapter, Body, Error, LambdaEvent, Request, RequestExt, Response, StreamAdapter,
};

use crate::adapters::api::{ResponseBody, BODY_ERROR_HEADER};
use crate::adapters::lambda::runtime_api;
use crate::adapters::metrics::Invocation;
use crate::adapters::state::AppState;

/// A function's `main`: logging, a current-thread Tokio runtime, the
/// [`AppState`] once per cold start, then `serve` with it.
///
/// One thread: Lambda runs one invocation at a time per instance, on a fraction
/// of a vCPU, so a multi-thread scheduler only adds cross-thread wake-ups on every
/// hand-off (see `docs/benchmark.md`).
pub fn main<F, Fut>(serve: F) -> Result<(), Error>
where
    F: FnOnce(Arc<AppState>) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    lambda_http::tracing::init_default_subscriber();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let state = AppState::from_env().await?;
        serve(state).await
    })
}

/// Runs a handler whose responses stream (Lambda response streaming).
pub async fn run_streaming<F, Fut>(state: Arc<AppState>, handler: F) -> Result<(), Error>
where
    F: Fn(Arc<AppState>, Request) -> Fut + Send,
    Fut: Future<Output = Result<Response<ResponseBody>, Error>> + Send + 'static,
{
    let function = function_name();
    let service = ServiceBuilder::new()
        .map_request(sanitize)
        .service(StreamAdapter::from(service_fn(move |req| {
            measured(&state, &function, &handler, req)
        })));
    runtime_api::run(service).await
}

/// Runs a handler with whole (buffered) responses.
pub async fn run_buffered<F, Fut>(state: Arc<AppState>, handler: F) -> Result<(), Error>
where
    F: Fn(Arc<AppState>, Request) -> Fut + Send,
    Fut: Future<Output = Result<Response<Body>, Error>> + Send + 'static,
{
    let function = function_name();
    let service = ServiceBuilder::new()
        .map_request(sanitize)
        .map_response(runtime_api::Buffered)
        .service(Adapter::from(service_fn(move |req| {
            measured(&state, &function, &handler, req)
        })));
    runtime_api::run(service).await
}

/// The metric dimension naming the function: its name in Lambda.
fn function_name() -> Arc<str> {
    std::env::var("AWS_LAMBDA_FUNCTION_NAME")
        .unwrap_or_default()
        .into()
}

/// The response header carrying the Lambda request id: what a user quotes to
/// support, and what finds the invocation's log lines and metrics record.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// One invocation of `handler`, with its metrics record ([`begin`], [`end`]).
fn measured<F, Fut, B>(
    state: &Arc<AppState>,
    function: &Arc<str>,
    handler: &F,
    mut req: Request,
) -> impl Future<Output = Result<Response<B>, Error>>
where
    F: Fn(Arc<AppState>, Request) -> Fut,
    Fut: Future<Output = Result<Response<B>, Error>>,
{
    let (invocation, request_id) = begin(state, function, &mut req);
    let reply = handler(state.clone(), req);
    async move { end(invocation, request_id, reply.await) }
}

/// Starts the invocation's metrics record and hands it to the handler in the
/// request's extensions (see [`crate::adapters::metrics`]).
fn begin(
    state: &AppState,
    function: &Arc<str>,
    req: &mut Request,
) -> (Invocation, Option<HeaderValue>) {
    let (request_id, trace_id) = req
        .lambda_context_ref()
        .map(|c| (c.request_id.clone(), c.xray_trace_id.clone()))
        .unwrap_or_default();
    let header = Some(request_id.as_str())
        .filter(|id| !id.is_empty())
        .and_then(|id| HeaderValue::from_str(id).ok());
    let invocation = Invocation::start(
        function.clone(),
        request_id,
        trace_id,
        state.dynamodb_counters.clone(),
    );
    req.extensions_mut().insert(invocation.clone());
    (invocation, header)
}

/// Records the status the client gets and names the request in the response.
/// The record is written once the last part of the invocation holding it (the
/// handler, or a stream's task) is done.
fn end<B>(
    invocation: Invocation,
    request_id: Option<HeaderValue>,
    mut reply: Result<Response<B>, Error>,
) -> Result<Response<B>, Error> {
    match &mut reply {
        Ok(resp) => {
            invocation.status(resp.status().as_u16());
            if let Some(id) = request_id {
                resp.headers_mut().insert(REQUEST_ID_HEADER, id);
            }
        }
        // An invocation error reaches the client as a 502.
        Err(_) => invocation.status(502),
    }
    reply
}

/// Removes an undecodable base64 body and marks the request (see module docs).
/// A client-sent marker header is always dropped so it cannot be forged.
pub fn sanitize(mut event: LambdaEvent<LambdaRequest>) -> LambdaEvent<LambdaRequest> {
    match &mut event.payload {
        LambdaRequest::ApiGatewayV1(r) => fix_multi_valued(
            &mut r.headers,
            &mut r.multi_value_headers,
            &mut r.body,
            &mut r.is_base64_encoded,
        ),
        LambdaRequest::ApiGatewayV2(r) => {
            fix(&mut r.headers, &mut r.body, &mut r.is_base64_encoded)
        }
        LambdaRequest::Alb(r) => fix_multi_valued(
            &mut r.headers,
            &mut r.multi_value_headers,
            &mut r.body,
            &mut r.is_base64_encoded,
        ),
        #[allow(unreachable_patterns)]
        _ => {}
    }
    event
}

/// [`fix`] for the event shapes that also carry `multiValueHeaders` (REST API,
/// ALB), which `lambda_http` reads in preference to `headers`.
fn fix_multi_valued(
    headers: &mut HeaderMap,
    multi: &mut HeaderMap,
    body: &mut Option<String>,
    is_base64: &mut bool,
) {
    refuse_repeated_authorization(headers, multi);
    multi.remove(BODY_ERROR_HEADER);
    fix(headers, body, is_base64);
    if headers.contains_key(BODY_ERROR_HEADER) {
        multi.insert(BODY_ERROR_HEADER, HeaderValue::from_static("base64"));
    }
}

fn refuse_repeated_authorization(headers: &mut HeaderMap, multi: &mut HeaderMap) {
    if multi.get_all(http::header::AUTHORIZATION).iter().count() > 1 {
        multi.remove(http::header::AUTHORIZATION);
        headers.remove(http::header::AUTHORIZATION);
    }
}

fn fix(headers: &mut HeaderMap, body: &mut Option<String>, is_base64: &mut bool) {
    headers.remove(BODY_ERROR_HEADER);
    if !*is_base64 {
        return;
    }
    let valid = body
        .as_deref()
        .is_none_or(|b| base64::engine::general_purpose::STANDARD.decode(b).is_ok());
    if !valid {
        *body = None;
        *is_base64 = false;
        headers.insert(BODY_ERROR_HEADER, HeaderValue::from_static("base64"));
    }
}
