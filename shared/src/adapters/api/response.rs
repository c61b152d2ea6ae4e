//! Responses: a whole JSON body or a stream of server-sent events, and an
//! error's status, `{"detail": ...}` body and headers.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::Frame;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::foundation::error::ApiError;

/// A response body that is either whole or a stream of server-sent events.
#[derive(Debug)]
pub enum ResponseBody {
    Full(Option<Bytes>),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

impl From<String> for ResponseBody {
    fn from(s: String) -> Self {
        ResponseBody::Full(Some(Bytes::from(s)))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Stream(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(first)) => Poll::Ready(Some(Ok(Frame::data(coalesce(first, rx))))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The most bytes one frame gathers from messages already waiting.
const FRAME_BYTES: usize = 64 * 1024;

/// `first` and whatever else is already waiting on the channel, as one frame:
/// when the writer falls behind (a small CPU share, a burst of tokens), it
/// catches up with one write instead of one per event. Nothing waits for more.
fn coalesce(first: Bytes, rx: &mut mpsc::UnboundedReceiver<Bytes>) -> Bytes {
    let Ok(second) = rx.try_recv() else {
        return first;
    };
    let mut frame = BytesMut::with_capacity(first.len() + second.len());
    frame.extend_from_slice(&first);
    frame.extend_from_slice(&second);
    while frame.len() < FRAME_BYTES {
        match rx.try_recv() {
            Ok(more) => frame.extend_from_slice(&more),
            Err(_) => break,
        }
    }
    frame.freeze()
}

pub fn json_response<B: From<String>>(status: StatusCode, value: &impl Serialize) -> Response<B> {
    let body = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned());
    let mut resp = Response::new(B::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub fn error_response<B: From<String>>(err: &ApiError) -> Response<B> {
    let mut resp = json_response(err.status(), &serde_json::json!({ "detail": err.detail() }));
    if matches!(err, ApiError::MethodNotAllowed) {
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    }
    if let Some(secs) = err.retry_after() {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The head of an event stream; the body is whatever arrives on `rx`.
pub fn stream_response(rx: mpsc::UnboundedReceiver<Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::Stream(rx));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

pub fn empty_response<B: From<String>>(status: StatusCode) -> Response<B> {
    let mut resp = Response::new(B::from(String::new()));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_messages_go_out_as_one_frame_up_to_a_bound() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let first = Bytes::from_static(b"data: 1\n\n");
        assert_eq!(coalesce(first.clone(), &mut rx), first, "nothing waiting");

        for i in 2..5 {
            tx.send(Bytes::from(format!("data: {i}\n\n"))).unwrap();
        }
        assert_eq!(
            coalesce(first.clone(), &mut rx),
            "data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n"
        );

        let big = Bytes::from(vec![b'x'; FRAME_BYTES / 2]);
        for _ in 0..4 {
            tx.send(big.clone()).unwrap();
        }
        let frame = coalesce(first, &mut rx);
        assert!(frame.len() >= FRAME_BYTES && frame.len() < FRAME_BYTES + big.len() + 16);
        assert_eq!(
            rx.try_recv().ok(),
            Some(big),
            "the rest waits for the next frame"
        );
    }
}
