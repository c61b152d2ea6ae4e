#!/usr/bin/env bash
# Builds the deployable bundle: `sam build` (settings in samconfig.toml) runs
# `cargo lambda build --release --arm64 --bin <function>` for send, regenerate and
# conversations, and writes target/sam-bundle/ (samconfig.toml's build_dir: the
# template and one `bootstrap` per function), which `sam deploy` reads. Needs
# no AWS credentials and no Docker; a first release build takes many minutes.
#
#   scripts/sam-build.sh [extra `sam build` options]
#
# cargo-lambda and zig (its arm64 linker) come from PyPI into .tools/venv
# (scripts/bootstrap.sh); rustup adds the aarch64-unknown-linux-gnu target. The
# release build has its own target directory (target/sam) so it neither waits on
# nor blocks the debug builds and tests that share target/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="$root/.tools/venv"

"$root/scripts/bootstrap.sh"
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  rustup target add aarch64-unknown-linux-gnu
fi

# The venv first: its cargo-lambda, and its python3 which carries zig (ziglang).
export PATH="$venv/bin:$PATH"
export SAM_CLI_TELEMETRY=0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/sam}"

"$venv/bin/sam" build "$@"

# Every function must be an arm64 (aarch64, ELF machine 183) executable.
for fn in SendFunction RegenerateFunction ConversationsFunction; do
  bin="target/sam-bundle/$fn/bootstrap"
  [ -x "$bin" ] || { echo "sam-build: $bin missing" >&2; exit 1; }
  machine="$(od -An -t u2 -j 18 -N 2 "$bin" | tr -d ' ')"
  [ "$machine" = 183 ] || { echo "sam-build: $bin is not aarch64 (e_machine $machine)" >&2; exit 1; }
  echo "sam-build: $bin aarch64 $(du -h "$bin" | cut -f1)"
done
