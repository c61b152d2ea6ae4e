//! `fault-proxy --listen 127.0.0.1:PORT --upstream http://127.0.0.1:PORT2`
//!
//! Prints `fault-proxy listening on http://ADDR` once it accepts connections.

use std::io::Write;

use tokio::net::TcpListener;

const USAGE: &str = "usage: fault-proxy --listen 127.0.0.1:PORT --upstream http://HOST:PORT";

fn main() {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut upstream = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| fail(USAGE)),
            "--upstream" => upstream = Some(args.next().unwrap_or_else(|| fail(USAGE))),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(&format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let upstream = upstream.unwrap_or_else(|| fail(USAGE));
    let upstream = fault_proxy::parse_upstream(&upstream).unwrap_or_else(|e| fail(&e));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("runtime: {e}")));
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen)
            .await
            .unwrap_or_else(|e| fail(&format!("cannot listen on {listen}: {e}")));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| fail(&format!("local address: {e}")));
        let mut out = std::io::stdout();
        let _ = writeln!(out, "fault-proxy listening on http://{addr}");
        let _ = out.flush();
        if let Err(e) = fault_proxy::serve(listener, upstream).await {
            fail(&format!("serve: {e}"));
        }
    });
}

fn fail(msg: &str) -> ! {
    eprintln!("fault-proxy: {msg}");
    std::process::exit(2)
}
