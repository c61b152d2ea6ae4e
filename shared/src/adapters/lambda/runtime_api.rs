//! The functions' client of the Lambda Runtime API: the loop that receives
//! invocations and sends their responses.
//!
//! Why not `lambda_runtime`'s loop: it talks to the Runtime API over a connection
//! without `TCP_NODELAY` and gives no way to change that. A streamed answer is many
//! small writes on that connection, so Nagle's algorithm held every write back until
//! the previous one was acknowledged, and the Runtime API acknowledges late (delayed
//! ACK): the benchmark measured about 40 ms added before the first token reached the
//! browser. The protocol is small and documented; this module speaks it over one
//! keep-alive connection with `TCP_NODELAY`, and leaves the decoding of events and
//! the encoding of responses to `lambda_http`'s adapters and `lambda_runtime`'s types.
//!
//! Per invocation: `GET /2018-06-01/runtime/invocation/next`, run the service, then
//! `POST .../{id}/response` (buffered JSON, or streamed: `Lambda-Runtime-Function-
//! Response-Mode: streaming`, a chunked body of the metadata prelude, eight NUL bytes
//! and the response body) or `POST .../{id}/error`. An event that cannot be decoded,
//! a handler error and a handler panic are reported as that invocation's error and
//! the process goes on serving. A body that fails mid-stream ends with the error
//! trailers.
//!
//! Not supported, because these functions use none of it: several invocations at
//! once in one process (Lambda managed instances), SnapStart, extensions. The X-Ray
//! trace id is recorded on the invocation's span and forwarded in the request's
//! `x-amzn-trace-id` header; `_X_AMZN_TRACE_ID` is not set, because changing the
//! environment of a multi-threaded process is unsound.

use std::fmt::{Debug, Display};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use futures_util::{future, stream, FutureExt, Stream, StreamExt};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use lambda_http::request::LambdaRequest;
use lambda_http::tower::{Service, ServiceExt};
use lambda_http::Error;
use lambda_runtime::{Config, Context, LambdaEvent, StreamResponse};
use serde::Serialize;
use tokio::net::TcpStream;
use tracing::Instrument;

const API_VERSION: &str = "/2018-06-01/runtime";
const REQUEST_ID: &str = "lambda-runtime-aws-request-id";
const TRACE_ID: &str = "lambda-runtime-trace-id";
const ERROR_TYPE: HeaderName = HeaderName::from_static("lambda-runtime-function-error-type");
const ERROR_BODY: HeaderName = HeaderName::from_static("lambda-runtime-function-error-body");
const RESPONSE_MODE: HeaderName = HeaderName::from_static("lambda-runtime-function-response-mode");
const STREAMING_CONTENT_TYPE: &str = "application/vnd.awslambda.http-integration-response";
const USER_AGENT: &str = concat!("samosachaat/", env!("CARGO_PKG_VERSION"));
/// Separates the streamed response's metadata prelude from its body.
const PRELUDE_DELIMITER: [u8; 8] = [0; 8];

/// The body of a request to the Runtime API.
pub type ApiBody = UnsyncBoxBody<Bytes, Error>;

/// What a service's response becomes on the Runtime API.
pub trait IntoInvocationResponse {
    /// The `POST .../{request_id}/response` request for this response.
    fn into_request(self, api: &Endpoint, request_id: &str) -> Result<Request<ApiBody>, Error>;
}

/// A buffered response: one JSON document (for HTTP events, the response in the
/// shape of the event's origin, as `lambda_http::Adapter` makes it).
pub struct Buffered<T>(pub T);

impl<T: Serialize> IntoInvocationResponse for Buffered<T> {
    fn into_request(self, api: &Endpoint, request_id: &str) -> Result<Request<ApiBody>, Error> {
        let json = serde_json::to_vec(&self.0)?;
        api.request(Method::POST, &format!("/invocation/{request_id}/response"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(json))
            .map_err(Error::from)
    }
}

/// A streamed response: the metadata prelude, the delimiter, then the body as it
/// comes. A body error ends the stream with the Runtime API's error trailers.
impl<S, D, E> IntoInvocationResponse for StreamResponse<S>
where
    S: Stream<Item = Result<D, E>> + Send + 'static,
    D: Into<Bytes>,
    E: Debug,
{
    fn into_request(self, api: &Endpoint, request_id: &str) -> Result<Request<ApiBody>, Error> {
        let prelude = Bytes::from(serde_json::to_vec(&self.metadata_prelude)?);
        let body = self.stream.scan(false, |failed, item| {
            future::ready(match item {
                _ if *failed => None,
                Ok(data) => Some(Ok::<_, Error>(Frame::data(data.into()))),
                Err(err) => {
                    *failed = true;
                    tracing::error!(error = ?err, "response body failed mid-stream");
                    Some(Ok(Frame::trailers(error_trailers(
                        "Runtime.StreamError",
                        &err,
                    ))))
                }
            })
        });
        // The prelude and the delimiter go as chunks of their own: local emulators
        // (cargo lambda) read the prelude from the first chunk.
        let head = [prelude, Bytes::from_static(&PRELUDE_DELIMITER)];
        let frames = stream::iter(head.map(|bytes| Ok(Frame::data(bytes)))).chain(body);
        api.request(Method::POST, &format!("/invocation/{request_id}/response"))
            .header(header::CONTENT_TYPE, STREAMING_CONTENT_TYPE)
            .header(RESPONSE_MODE, "streaming")
            .header(header::TRANSFER_ENCODING, "chunked")
            .header(header::TRAILER, "Lambda-Runtime-Function-Error-Type")
            .header(header::TRAILER, "Lambda-Runtime-Function-Error-Body")
            .body(UnsyncBoxBody::new(StreamBody::new(frames)))
            .map_err(Error::from)
    }
}

/// Serves invocations with `service` until the Runtime API goes away (the process
/// then ends with that error, and Lambda starts a new one).
pub async fn run<S, R>(service: S) -> Result<(), Error>
where
    S: Service<LambdaEvent<LambdaRequest>, Response = R>,
    S::Error: Debug + Display,
    R: IntoInvocationResponse,
{
    let endpoint = Endpoint::from_env()?;
    serve(endpoint, Arc::new(config_from_env()), service).await
}

/// The function's description Lambda sets in the environment, for the handlers'
/// `Context`. Unlike `Config::from_env`, a missing variable is left empty rather
/// than a panic: the handlers do not need these.
fn config_from_env() -> Config {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    Config {
        function_name: var("AWS_LAMBDA_FUNCTION_NAME"),
        memory: var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").parse().unwrap_or(0),
        version: var("AWS_LAMBDA_FUNCTION_VERSION"),
        log_stream: var("AWS_LAMBDA_LOG_STREAM_NAME"),
        log_group: var("AWS_LAMBDA_LOG_GROUP_NAME"),
    }
}

/// [`run`] against a given endpoint and configuration.
pub async fn serve<S, R>(api: Endpoint, config: Arc<Config>, mut service: S) -> Result<(), Error>
where
    S: Service<LambdaEvent<LambdaRequest>, Response = R>,
    S::Error: Debug + Display,
    R: IntoInvocationResponse,
{
    let mut connection = Connection::new(api.clone());
    loop {
        let next = || api.request(Method::GET, "/invocation/next").body(empty());
        let response = connection.send(next()?, Some(next)).await?;
        let (parts, body) = response.into_parts();
        let event = body.collect().await?.to_bytes();
        let Some(request_id) = header_str(&parts.headers, REQUEST_ID).map(str::to_owned) else {
            return Err("the Runtime API sent an invocation without a request id".into());
        };
        let span = tracing::info_span!(
            "invocation",
            requestId = %request_id,
            xrayTraceId = header_str(&parts.headers, TRACE_ID).unwrap_or_default(),
        );
        let outcome = invoke(&mut service, &config, &request_id, &parts.headers, &event)
            .instrument(span.clone())
            .await;
        let request = match outcome.map(|reply| reply.into_request(&api, &request_id)) {
            Ok(Ok(request)) => request,
            Ok(Err(err)) => {
                Failure::new("Runtime.ResponseError", err).into_request(&api, &request_id)?
            }
            Err(failure) => failure.into_request(&api, &request_id)?,
        };
        match connection
            .send(request, None::<fn() -> _>)
            .instrument(span.clone())
            .await
        {
            Ok(reply) => {
                let status = reply.status();
                // Read the reply to the end so the connection can carry the next request.
                let _ = reply.into_body().collect().await;
                if !status.is_success() {
                    let _span = span.enter();
                    tracing::warn!(%status, "the Runtime API refused the invocation's response");
                }
            }
            Err(err) => {
                let _span = span.enter();
                tracing::error!(error = %err, "could not send the invocation's response");
            }
        }
    }
}

/// Why an invocation has no response: reported with `POST .../{id}/error`.
struct Failure {
    error_type: &'static str,
    message: String,
}

impl Failure {
    fn new(error_type: &'static str, message: impl Display) -> Self {
        tracing::error!(error_type, error = %message, "invocation failed");
        Failure {
            error_type,
            message: message.to_string(),
        }
    }

    fn into_request(self, api: &Endpoint, request_id: &str) -> Result<Request<ApiBody>, Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Report<'a> {
            error_type: &'a str,
            error_message: &'a str,
        }
        let json = serde_json::to_vec(&Report {
            error_type: self.error_type,
            error_message: &self.message,
        })?;
        api.request(Method::POST, &format!("/invocation/{request_id}/error"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(ERROR_TYPE, self.error_type)
            .body(full(json))
            .map_err(Error::from)
    }
}

async fn invoke<S, R>(
    service: &mut S,
    config: &Arc<Config>,
    request_id: &str,
    headers: &HeaderMap,
    event: &[u8],
) -> Result<R, Failure>
where
    S: Service<LambdaEvent<LambdaRequest>, Response = R>,
    S::Error: Debug + Display,
{
    let context = Context::new(request_id, config.clone(), headers)
        .map_err(|err| Failure::new("Runtime.InvalidContext", err))?;
    // The event is not echoed in the error: it holds the user's request.
    let payload = decode_event(event).map_err(|err| {
        Failure::new(
            "Runtime.UnmarshalError",
            format_args!(
                "the event is not an HTTP event (line {}, column {})",
                err.line(),
                err.column()
            ),
        )
    })?;
    let call = async {
        let ready = service.ready().await?;
        ready.call(LambdaEvent::new(payload, context)).await
    };
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(err)) => Err(Failure::new("Runtime.HandlerError", err)),
        Err(panic) => Err(Failure::new("Runtime.HandlerPanic", panic_message(&*panic))),
    }
}

/// Decodes an event as `lambda_http` does, without its detour for the most
/// common shape.
///
/// `LambdaRequest`'s decoder tries each shape in turn, REST API first: an HTTP
/// API or Function URL event (payload 2.0) is parsed whole as a REST API event
/// before that fails at its end for want of `httpMethod`, then parsed again.
/// A first pass that only looks at the two top-level fields telling the
/// shapes apart (no allocation) sends such an event straight to its own type.
/// The result is the same in every case: without `httpMethod` the REST API
/// shape cannot match, and anything else (or a 2.0 event that does not
/// decode) goes through `LambdaRequest`'s decoder as before.
fn decode_event(event: &[u8]) -> serde_json::Result<LambdaRequest> {
    #[derive(serde::Deserialize)]
    struct Shape<'a> {
        #[serde(borrow)]
        version: Option<std::borrow::Cow<'a, str>>,
        #[serde(rename = "httpMethod")]
        http_method: Option<serde::de::IgnoredAny>,
    }
    if let Ok(Shape {
        version: Some(version),
        http_method: None,
    }) = serde_json::from_slice::<Shape>(event)
    {
        if version == "2.0" {
            if let Ok(v2) = serde_json::from_slice::<ApiGatewayV2httpRequest>(event) {
                return Ok(LambdaRequest::ApiGatewayV2(v2));
            }
        }
    }
    serde_json::from_slice::<LambdaRequest>(event)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("the handler panicked")
}

fn error_trailers(error_type: &str, err: &impl Debug) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(error_type) {
        trailers.insert(ERROR_TYPE, value);
    }
    let body = base64::engine::general_purpose::STANDARD.encode(format!("{err:?}"));
    if let Ok(value) = HeaderValue::from_str(&body) {
        trailers.insert(ERROR_BODY, value);
    }
    trailers
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn full(bytes: impl Into<Bytes>) -> ApiBody {
    UnsyncBoxBody::new(Full::new(bytes.into()).map_err(|never| match never {}))
}

fn empty() -> ApiBody {
    full(Bytes::new())
}

/// Where the Runtime API is: `AWS_LAMBDA_RUNTIME_API`, a `host:port` optionally
/// followed by a path prefix (local emulators use one) and preceded by `http://`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    authority: String,
    prefix: String,
}

impl Endpoint {
    pub fn from_env() -> Result<Self, Error> {
        let value = std::env::var("AWS_LAMBDA_RUNTIME_API")
            .map_err(|_| "AWS_LAMBDA_RUNTIME_API is not set: run the function under Lambda")?;
        Self::parse(&value)
    }

    pub fn parse(value: &str) -> Result<Self, Error> {
        let rest = value.strip_prefix("http://").unwrap_or(value);
        let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains(['@', '?', '#']) {
            return Err(format!("AWS_LAMBDA_RUNTIME_API is not host:port[/path]: {value}").into());
        }
        Ok(Endpoint {
            authority: authority.to_owned(),
            prefix: prefix.trim_end_matches('/').to_owned(),
        })
    }

    fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{API_VERSION}{path}", self.prefix))
            .header(header::HOST, &self.authority)
            .header(header::USER_AGENT, USER_AGENT)
    }
}

/// One keep-alive HTTP/1.1 connection to the Runtime API, opened again when it
/// closes.
struct Connection {
    api: Endpoint,
    sender: Option<SendRequest<ApiBody>>,
}

impl Connection {
    fn new(api: Endpoint) -> Self {
        Connection { api, sender: None }
    }

    async fn connect(&self) -> Result<SendRequest<ApiBody>, Error> {
        let stream = TcpStream::connect(&self.api.authority).await?;
        // Every write of a streamed response leaves at once (see the module docs).
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "Runtime API connection closed");
            }
        });
        Ok(sender)
    }

    /// Sends `request`. If it could not go out because the kept-alive connection
    /// had closed, it is sent once more on a new connection (`again` rebuilds a
    /// request whose body was already taken; without it the request is not retried
    /// once its body has started).
    async fn send<F>(
        &mut self,
        request: Request<ApiBody>,
        again: Option<F>,
    ) -> Result<Response<Incoming>, Error>
    where
        F: FnOnce() -> Result<Request<ApiBody>, http::Error>,
    {
        let mut request = request;
        let mut again = again;
        for attempt in 0..2 {
            let mut sender = match self.sender.take() {
                Some(sender) if !sender.is_closed() => sender,
                _ => self.connect().await?,
            };
            if sender.ready().await.is_err() {
                if attempt == 0 {
                    continue;
                }
                return Err("the Runtime API connection closed".into());
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.sender = Some(sender);
                    return Ok(response);
                }
                Err(mut err) => {
                    let unsent = err.take_message();
                    let retry = match (unsent, again.take()) {
                        (Some(unsent), _) => Some(unsent),
                        (None, Some(rebuild)) => Some(rebuild()?),
                        (None, None) => None,
                    };
                    match retry {
                        Some(next) if attempt == 0 => request = next,
                        _ => return Err(err.into_error().into()),
                    }
                }
            }
        }
        Err("the Runtime API connection closed".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `decode_event` and `LambdaRequest`'s own decoder agree: the same shape
    /// and the same fields, or both refuse.
    fn assert_same_as_lambda_http(event: &[u8]) {
        let ours = decode_event(event).map(|r| format!("{r:?}"));
        let theirs = serde_json::from_slice::<LambdaRequest>(event).map(|r| format!("{r:?}"));
        match (ours, theirs) {
            (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs),
            (Err(_), Err(_)) => {}
            (ours, theirs) => panic!(
                "{}: ours {ours:?}, lambda_http's {theirs:?}",
                String::from_utf8_lossy(event)
            ),
        }
    }

    /// The repository's sample events (`events/`), as `sam local invoke -e` uses them.
    fn sample_events() -> Vec<Vec<u8>> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../events");
        std::fs::read_dir(dir)
            .expect("events dir")
            .map(|e| std::fs::read(e.expect("entry").path()).expect("event"))
            .collect()
    }

    /// A Function URL event with a query string and cookies.
    fn http_api() -> serde_json::Value {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../events/send-message.json");
        let mut event: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file).expect("event")).expect("json");
        event["rawQueryString"] = json!("a=1&b=2");
        event["cookies"] = json!(["x=1"]);
        event
    }

    fn rest_api() -> serde_json::Value {
        json!({
            "resource": "/api/{proxy+}", "path": "/api/conversations",
            "httpMethod": "GET",
            "headers": {"authorization": "Bearer t"},
            "multiValueHeaders": {"authorization": ["Bearer t"]},
            "queryStringParameters": null, "pathParameters": {"proxy": "conversations"},
            "requestContext": {"accountId": "1", "resourceId": "r", "stage": "prod",
                               "requestId": "q", "httpMethod": "GET", "path": "/prod/api/conversations",
                               "apiId": "a"},
            "body": null, "isBase64Encoded": false
        })
    }

    fn alb() -> serde_json::Value {
        json!({
            "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:x"}},
            "httpMethod": "GET", "path": "/api/conversations",
            "queryStringParameters": {}, "headers": {"host": "h"},
            "body": "", "isBase64Encoded": false
        })
    }

    #[test]
    fn events_decode_as_lambda_http_decodes_them() {
        // Every sample event takes the direct path.
        let mut samples = sample_events();
        for sample in &samples {
            assert!(matches!(
                decode_event(sample),
                Ok(LambdaRequest::ApiGatewayV2(_))
            ));
        }
        let mut payload_1_0 = rest_api();
        payload_1_0["version"] = json!("1.0");
        let mut v2_with_http_method = http_api();
        v2_with_http_method["httpMethod"] = json!("DELETE");
        let mut v2_without_context = http_api();
        v2_without_context
            .as_object_mut()
            .expect("object")
            .remove("requestContext");
        let mut v2_numeric_version = http_api();
        v2_numeric_version["version"] = json!(2.0);
        let mut v3 = http_api();
        v3["version"] = json!("3.0");
        // A REST API event that claims 2.0: still a REST API event.
        let mut rest_claiming_2_0 = rest_api();
        rest_claiming_2_0["version"] = json!("2.0");
        rest_claiming_2_0["requestContext"]["http"] = json!({"method": "GET"});
        for value in [
            http_api(),
            rest_api(),
            alb(),
            payload_1_0,
            v2_with_http_method,
            v2_without_context,
            v2_numeric_version,
            v3,
            rest_claiming_2_0,
        ] {
            samples.push(serde_json::to_vec(&value).expect("json"));
        }
        samples.extend(
            [
                &b""[..],
                b"null",
                b"[]",
                b"{}",
                b"{\"version\":\"2.0\"}",
                b"{\"version\":\"2.0\",\"httpMethod\":null}",
                b"{\"version\":\"2.0\"} trailing",
                b"{\"version\":\"2.0\",\"version\":\"2.0\"}",
            ]
            .map(<[u8]>::to_vec),
        );
        for sample in &samples {
            assert_same_as_lambda_http(sample);
        }
        // The other shapes decode, so the comparison above is not of two refusals.
        let decoded = |v: serde_json::Value| decode_event(&serde_json::to_vec(&v).expect("json"));
        assert!(matches!(
            decoded(rest_api()),
            Ok(LambdaRequest::ApiGatewayV1(_))
        ));
        assert!(decoded(alb()).is_ok());
    }
}
