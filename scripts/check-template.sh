#!/usr/bin/env bash
# Checks template.yaml offline, without AWS credentials: cfn-lint (which runs the
# SAM transform itself) and `sam validate --lint`. Both come from PyPI into
# .tools/venv (scripts/bootstrap.sh). The Rust test shared/tests/template.rs
# holds the table to the code's key schema; `cargo test` runs it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="$root/.tools/venv"
[ -x "$venv/bin/sam" ] && [ -x "$venv/bin/cfn-lint" ] || "$root/scripts/bootstrap.sh"

# Never a developer's real profile, never telemetry: dummy credentials and one
# fixed region (neither check calls AWS).
export SAM_CLI_TELEMETRY=0
export AWS_ACCESS_KEY_ID=checktemplate AWS_SECRET_ACCESS_KEY=checktemplate
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

echo "check-template: cfn-lint $("$venv/bin/cfn-lint" --version | awk '{print $2}')"
"$venv/bin/cfn-lint" --non-zero-exit-code warning -- template.yaml
echo "check-template: cfn-lint: no errors, no warnings"

echo "check-template: $("$venv/bin/sam" --version)"
"$venv/bin/sam" validate --lint --region us-east-1 --template-file template.yaml
