//! A bad setting fails the cold start, before any request, naming the variable.

use std::process::Command;

/// Runs the `send` binary with a complete configuration but for `name = value`.
fn cold_start(name: &str, value: &str) -> (bool, String) {
    let key = include_str!("../../../shared/tests/fixtures/jwt-public.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_send"))
        .env_clear()
        .env("TABLE_NAME", "chat")
        .env("INFERENCE_URL", "http://127.0.0.1:9/generate")
        .env("INTERNAL_API_KEY", "k")
        .env("JWT_PUBLIC_KEY", key)
        .env("AWS_REGION", "us-east-1")
        // Nothing listens here: a start that got past its configuration would
        // fail on the Runtime API instead, naming no setting.
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env(name, value)
        .output()
        .expect("run send");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr)
}

#[test]
fn bad_limits_fail_the_cold_start_naming_the_variable() {
    for name in [
        "RATE_LIMIT_PER_MINUTE",
        "DAILY_MESSAGE_QUOTA",
        "MAX_CONCURRENT_ANSWERS",
    ] {
        for value in ["0", "-3", "many", "2.5"] {
            let (ok, stderr) = cold_start(name, value);
            assert!(!ok, "{name}={value} started");
            assert!(
                stderr.contains(&format!("configuration: {name} is invalid")),
                "{name}={value}: {stderr}"
            );
        }
    }
}

#[test]
fn good_limits_get_past_the_configuration() {
    let (ok, stderr) = cold_start("MAX_CONCURRENT_ANSWERS", "3");
    assert!(!ok, "no Runtime API to serve");
    assert!(!stderr.contains("configuration:"), "{stderr}");
}
