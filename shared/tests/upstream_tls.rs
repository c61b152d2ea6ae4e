//! The upstream client over TLS: a real handshake with a local server whose
//! certificate a test CA signed. The client trusts that CA only when
//! `SSL_CERT_FILE` names it; its built-in roots (Mozilla's) refuse it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use samosachaat::adapters::upstream::{ChatParams, InferenceClient, InferenceRequest, StartError};
use samosachaat::foundation::config::Config;

const SSE: &str = "data: {\"token\": \"Hi\"}\n\ndata: [DONE]\n\n";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A TLS server for one connection on 127.0.0.1. It answers one request with
/// an event stream, and reports whether the handshake completed.
fn serve_once() -> (u16, JoinHandle<bool>) {
    let certs = CertificateDer::pem_file_iter(fixture("upstream-cert.pem"))
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(fixture("upstream-key.pem")).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        let conn = rustls::ServerConnection::new(Arc::new(config)).expect("connection");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut reader = BufReader::new(&mut tls);
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() || line.is_empty() {
                return false;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{SSE}",
            SSE.len()
        );
        tls.write_all(reply.as_bytes()).expect("reply");
        tls.conn.send_close_notify();
        let _ = tls.flush();
        true
    });
    (port, server)
}

fn client(port: u16, ca_file: Option<&Path>) -> Result<InferenceClient, String> {
    let public_key = std::fs::read_to_string(fixture("jwt-public.pem")).expect("key");
    let url = format!("https://localhost:{port}/generate");
    let ca = ca_file.map(|p| p.to_string_lossy().into_owned());
    let config = Config::from_lookup(|name| match name {
        "TABLE_NAME" => Some("chat".into()),
        "INFERENCE_URL" => Some(url.clone()),
        "INTERNAL_API_KEY" => Some("internal".into()),
        "JWT_PUBLIC_KEY" => Some(public_key.clone()),
        "SSL_CERT_FILE" => ca.clone(),
        _ => None,
    })
    .expect("config");
    InferenceClient::new(&config)
}

fn request() -> InferenceRequest {
    let params = ChatParams {
        temperature: None,
        max_tokens: None,
        top_k: None,
        thinking_mode: false,
        force_web_search: false,
    };
    let config_defaults = samosachaat::foundation::config::InferenceDefaults {
        temperature: 0.7,
        max_tokens: 64,
        top_k: 40,
    };
    InferenceRequest::new(Vec::new(), &params, &config_defaults)
}

#[tokio::test]
async fn an_upstream_whose_ca_ssl_cert_file_names_streams_over_tls() {
    let (port, server) = serve_once();
    let client = client(port, Some(&fixture("upstream-ca.pem"))).expect("client");
    let mut resp = client.start(&request(), None).await.expect("stream");
    assert_eq!(resp.status(), 200);
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("body") {
        body.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8(body).expect("utf-8"), SSE);
    assert!(server.join().expect("server"), "handshake completed");
}

#[tokio::test]
async fn the_built_in_roots_refuse_a_certificate_of_another_ca() {
    let (port, server) = serve_once();
    let client = client(port, None).expect("client");
    let err = client.start(&request(), None).await.expect_err("refused");
    assert_eq!(err, StartError::Unavailable);
    assert!(!server.join().expect("server"), "no request got through");
}

#[test]
fn a_file_without_a_usable_root_fails_the_cold_start_naming_the_variable() {
    let not_pem = fixture("README.md");
    let missing = fixture("no-such-bundle.pem");
    for path in [not_pem, missing] {
        let err = client(443, Some(&path)).expect_err("refused");
        assert!(err.contains("SSL_CERT_FILE"), "{err}");
    }
}
