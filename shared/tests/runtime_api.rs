//! The Runtime API client against a Runtime API of the test's own: what goes on
//! the wire for streamed and buffered responses, errors, panics, undecodable events,
//! closed connections and endpoint prefixes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn as hyper_service_fn;
use hyper_util::rt::TokioIo;
use lambda_http::request::LambdaRequest;
use lambda_http::{service_fn, Error, LambdaEvent};
use lambda_runtime::{Config, MetadataPrelude, StreamResponse};
use samosachaat::adapters::lambda::runtime_api::{self, Buffered, Endpoint};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};

/// An HTTP event as a Function URL sends it; `marker` is its body.
fn http_event(marker: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/api/conversations/c/messages",
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {
            "http": {"method": "POST", "path": "/api/conversations/c/messages",
                     "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "test"},
            "requestId": "r", "routeKey": "$default", "stage": "$default",
            "accountId": "1", "apiId": "a", "domainName": "d", "domainPrefix": "d",
            "time": "t", "timeEpoch": 0
        },
        "body": marker,
        "isBase64Encoded": false
    }))
    .unwrap()
}

fn body_of(event: &LambdaEvent<LambdaRequest>) -> String {
    match &event.payload {
        LambdaRequest::ApiGatewayV2(r) => r.body.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

/// A request the client made, with its body chunk by chunk.
#[derive(Debug)]
struct Received {
    method: Method,
    path: String,
    headers: HeaderMap,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Received {
    fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

/// The test's Runtime API: hands out queued events on `/next` and records every
/// other request. With `close`, every answer closes its connection.
struct FakeApi {
    addr: String,
    events: mpsc::UnboundedSender<(String, Vec<u8>)>,
    received: mpsc::UnboundedReceiver<Received>,
}

impl FakeApi {
    async fn start(close: bool) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (events, queue) = mpsc::unbounded_channel::<(String, Vec<u8>)>();
        let queue = Arc::new(Mutex::new(queue));
        let (record, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let queue = queue.clone();
                let record = record.clone();
                let service = hyper_service_fn(move |req: http::Request<Incoming>| {
                    let queue = queue.clone();
                    let record = record.clone();
                    async move {
                        let (parts, mut body) = req.into_parts();
                        let path = parts.uri.path().to_owned();
                        let mut answer = Response::builder();
                        if close {
                            answer = answer.header("connection", "close");
                        }
                        if path.ends_with("/invocation/next") {
                            let _ = record.send(Received {
                                method: parts.method,
                                path,
                                headers: parts.headers,
                                chunks: Vec::new(),
                                trailers: None,
                            });
                            let Some((id, event)) = queue.lock().await.recv().await else {
                                std::future::pending::<()>().await;
                                unreachable!()
                            };
                            return Ok::<_, Infallible>(
                                answer
                                    .header("lambda-runtime-aws-request-id", id)
                                    .header("lambda-runtime-deadline-ms", "4102444800000")
                                    .header("lambda-runtime-invoked-function-arn", "arn:test")
                                    .header("lambda-runtime-trace-id", "Root=1-test")
                                    .body(Full::new(Bytes::from(event)))
                                    .unwrap(),
                            );
                        }
                        let mut chunks = Vec::new();
                        let mut trailers = None;
                        while let Some(frame) = body.frame().await {
                            match frame.unwrap().into_data() {
                                Ok(data) => chunks.push(data),
                                Err(frame) => trailers = frame.into_trailers().ok(),
                            }
                        }
                        let _ = record.send(Received {
                            method: parts.method,
                            path,
                            headers: parts.headers,
                            chunks,
                            trailers,
                        });
                        Ok(answer
                            .status(StatusCode::ACCEPTED)
                            .body(Full::new(Bytes::new()))
                            .unwrap())
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service),
                );
            }
        });
        FakeApi {
            addr,
            events,
            received,
        }
    }

    fn invoke(&self, id: &str, event: Vec<u8>) {
        self.events.send((id.to_owned(), event)).unwrap();
    }

    /// The next request that is not a `/next` poll.
    async fn answer(&mut self) -> Received {
        loop {
            let received = tokio::time::timeout(Duration::from_secs(20), self.received.recv())
                .await
                .expect("the client answers")
                .expect("the fake API runs");
            if !received.path.ends_with("/invocation/next") {
                return received;
            }
        }
    }
}

fn serve<S, R>(endpoint: &str, service: S) -> tokio::task::JoinHandle<Result<(), Error>>
where
    S: lambda_http::Service<LambdaEvent<LambdaRequest>, Response = R> + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + std::fmt::Display,
    R: runtime_api::IntoInvocationResponse + Send + 'static,
{
    let endpoint = Endpoint::parse(endpoint).unwrap();
    tokio::spawn(runtime_api::serve(
        endpoint,
        Arc::new(Config::default()),
        service,
    ))
}

fn prelude(status: u16) -> MetadataPrelude {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "text/event-stream".parse().unwrap());
    MetadataPrelude {
        status_code: StatusCode::from_u16(status).unwrap(),
        headers,
        cookies: Vec::new(),
    }
}

type Chunks<E> = stream::Iter<std::vec::IntoIter<Result<Bytes, E>>>;

/// A 200 streamed response of `chunks`.
fn streamed<E>(chunks: Vec<Result<Bytes, E>>) -> Result<StreamResponse<Chunks<E>>, Error> {
    Ok(StreamResponse {
        metadata_prelude: prelude(200),
        stream: stream::iter(chunks),
    })
}

/// A handler answering every event with a buffered 200.
async fn ok(_: LambdaEvent<LambdaRequest>) -> Result<Buffered<serde_json::Value>, Error> {
    Ok(Buffered(serde_json::json!({"statusCode": 200})))
}

#[tokio::test]
async fn a_streamed_response_is_the_prelude_the_delimiter_then_each_chunk() {
    let mut api = FakeApi::start(false).await;
    let task = serve(
        &api.addr,
        service_fn(|event: LambdaEvent<LambdaRequest>| async move {
            let words = body_of(&event);
            streamed::<Infallible>(
                words
                    .split(' ')
                    .map(|w| Ok(Bytes::from(format!("data: {w}\n\n"))))
                    .collect(),
            )
        }),
    );
    api.invoke("req-1", http_event("namaste from samosa"));
    let got = api.answer().await;

    assert_eq!(got.method, Method::POST);
    assert_eq!(got.path, "/2018-06-01/runtime/invocation/req-1/response");
    assert_eq!(
        got.headers["lambda-runtime-function-response-mode"],
        "streaming"
    );
    assert_eq!(
        got.headers["content-type"],
        "application/vnd.awslambda.http-integration-response"
    );
    let prelude: serde_json::Value = serde_json::from_slice(&got.chunks[0]).unwrap();
    assert_eq!(
        prelude,
        serde_json::json!({"statusCode": 200, "headers": {"content-type": "text/event-stream"}, "cookies": []})
    );
    assert_eq!(&got.chunks[1][..], &[0u8; 8]);
    assert_eq!(
        String::from_utf8(got.chunks[2..].concat()).unwrap(),
        "data: namaste\n\ndata: from\n\ndata: samosa\n\n"
    );
    assert!(got.trailers.is_none());
    task.abort();
}

#[tokio::test]
async fn a_body_failing_mid_stream_ends_with_the_error_trailers() {
    let mut api = FakeApi::start(false).await;
    let task = serve(
        &api.addr,
        service_fn(|_: LambdaEvent<LambdaRequest>| async move {
            streamed(vec![
                Ok(Bytes::from_static(b"data: part\n\n")),
                Err("upstream gone"),
            ])
        }),
    );
    api.invoke("req-1", http_event("x"));
    let got = api.answer().await;
    assert_eq!(got.chunks[2..].concat(), b"data: part\n\n");
    let trailers = got.trailers.expect("error trailers");
    assert_eq!(
        trailers["lambda-runtime-function-error-type"],
        "Runtime.StreamError"
    );
    assert!(trailers.contains_key("lambda-runtime-function-error-body"));
    task.abort();
}

#[tokio::test]
async fn a_buffered_response_is_one_json_document() {
    let mut api = FakeApi::start(false).await;
    let task = serve(
        &api.addr,
        service_fn(|event: LambdaEvent<LambdaRequest>| async move {
            Ok::<_, Error>(Buffered(serde_json::json!({
                "statusCode": 201,
                "body": body_of(&event),
                "requestId": event.context.request_id,
            })))
        }),
    );
    api.invoke("req-9", http_event("hello"));
    let got = api.answer().await;
    assert_eq!(got.path, "/2018-06-01/runtime/invocation/req-9/response");
    assert_eq!(got.headers["content-type"], "application/json");
    assert!(!got
        .headers
        .contains_key("lambda-runtime-function-response-mode"));
    let json: serde_json::Value = serde_json::from_slice(&got.body()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"statusCode": 201, "body": "hello", "requestId": "req-9"})
    );
    task.abort();
}

#[tokio::test]
async fn errors_and_panics_are_reported_and_serving_goes_on() {
    let mut api = FakeApi::start(false).await;
    let task = serve(
        &api.addr,
        service_fn(|event: LambdaEvent<LambdaRequest>| async move {
            match body_of(&event).as_str() {
                "fail" => Err(Error::from("the store is unavailable")),
                "panic" => panic!("a handler bug"),
                _ => Ok(Buffered(serde_json::json!({"statusCode": 200}))),
            }
        }),
    );
    for (id, body) in [("a", "fail"), ("b", "panic"), ("c", "fine")] {
        api.invoke(id, http_event(body));
    }

    let failed = api.answer().await;
    assert_eq!(failed.path, "/2018-06-01/runtime/invocation/a/error");
    assert_eq!(
        failed.headers["lambda-runtime-function-error-type"],
        "Runtime.HandlerError"
    );
    let report: serde_json::Value = serde_json::from_slice(&failed.body()).unwrap();
    assert_eq!(report["errorType"], "Runtime.HandlerError");
    assert_eq!(report["errorMessage"], "the store is unavailable");

    let panicked = api.answer().await;
    assert_eq!(panicked.path, "/2018-06-01/runtime/invocation/b/error");
    let report: serde_json::Value = serde_json::from_slice(&panicked.body()).unwrap();
    assert_eq!(report["errorType"], "Runtime.HandlerPanic");
    assert_eq!(report["errorMessage"], "a handler bug");

    let fine = api.answer().await;
    assert_eq!(fine.path, "/2018-06-01/runtime/invocation/c/response");
    assert!(!task.is_finished());
    task.abort();
}

#[tokio::test]
async fn an_event_that_is_not_http_is_refused_without_repeating_it() {
    let mut api = FakeApi::start(false).await;
    let task = serve(&api.addr, service_fn(ok));
    api.invoke("odd", br#"{"message": "my secret words"}"#.to_vec());
    api.invoke("next", http_event("hello"));

    let refused = api.answer().await;
    assert_eq!(refused.path, "/2018-06-01/runtime/invocation/odd/error");
    assert_eq!(
        refused.headers["lambda-runtime-function-error-type"],
        "Runtime.UnmarshalError"
    );
    let text = String::from_utf8(refused.body()).unwrap();
    assert!(!text.contains("secret"), "{text}");
    let fine = api.answer().await;
    assert_eq!(fine.path, "/2018-06-01/runtime/invocation/next/response");
    task.abort();
}

#[tokio::test]
async fn a_closed_connection_is_opened_again() {
    let mut api = FakeApi::start(true).await;
    let task = serve(
        &api.addr,
        service_fn(|event: LambdaEvent<LambdaRequest>| async move {
            streamed(vec![Ok::<_, Infallible>(Bytes::from(body_of(&event)))])
        }),
    );
    for i in 0..5 {
        api.invoke(&format!("r{i}"), http_event(&format!("turn {i}")));
    }
    for i in 0..5 {
        let got = api.answer().await;
        assert_eq!(
            got.path,
            format!("/2018-06-01/runtime/invocation/r{i}/response")
        );
        assert_eq!(got.chunks[2..].concat(), format!("turn {i}").as_bytes());
    }
    task.abort();
}

#[tokio::test]
async fn an_endpoint_path_prefix_is_kept() {
    let mut api = FakeApi::start(false).await;
    let task = serve(&format!("http://{}/.rt/send/", api.addr), service_fn(ok));
    api.invoke("p", http_event("x"));
    let polled = tokio::time::timeout(Duration::from_secs(20), api.received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(polled.method, Method::GET);
    assert_eq!(polled.path, "/.rt/send/2018-06-01/runtime/invocation/next");
    let got = api.answer().await;
    assert_eq!(
        got.path,
        "/.rt/send/2018-06-01/runtime/invocation/p/response"
    );
    task.abort();
}

#[tokio::test]
async fn serving_ends_with_an_error_when_the_runtime_api_is_gone() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let task = serve(&addr, service_fn(ok));
    let outcome = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.is_err());
}

#[test]
fn endpoints_are_host_port_with_an_optional_scheme_and_prefix() {
    for good in [
        "127.0.0.1:9001",
        "http://127.0.0.1:9000/.rt/send",
        "localhost:9001/",
    ] {
        assert!(Endpoint::parse(good).is_ok(), "{good}");
    }
    for bad in ["", "/2018-06-01", "http://", "user@host:1"] {
        assert!(Endpoint::parse(bad).is_err(), "{bad}");
    }
}
