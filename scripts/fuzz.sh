#!/usr/bin/env bash
# Fuzzes the two parsers that read hostile bytes (not part of scripts/test.sh):
#
#   sse_reader       arbitrary upstream bytes, in arbitrary chunks, through
#                    samosachaat::adapters::upstream::sse::SseReader (chunking never changes the
#                    events; every token is a JSON string of the input)
#   request_decoder  arbitrary request bodies through api::decode_send and
#                    api::decode_regenerate (422 naming a field, or exactly the
#                    values the body carries, within the SPEC's bounds)
#
#   scripts/fuzz.sh [seconds per target, default 60] [target...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`, crates.io). cargo-fuzz builds
# with `-Zsanitizer=address`, a nightly flag; this machine has only a stable
# toolchain, so the script sets RUSTC_BOOTSTRAP=1, which makes stable rustc
# accept it (the ASan runtime ships with stable's rust-std). The first build
# takes several minutes (the whole library, optimized, instrumented).
#
# fuzz/ is its own cargo workspace (excluded from the main one). The corpus
# grows in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>), findings land
# in fuzz/artifacts/<target>/, the full libFuzzer output in
# fuzz/target/fuzz-<target>.log. Reproduce a finding from fuzz/ with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> artifacts/<target>/<file>
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

secs="${1:-60}"
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sse_reader request_decoder)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
  exit 2
fi
export RUSTC_BOOTSTRAP=1

failed=0
mkdir -p target
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cp -n "seeds/$t"/* "corpus/$t/" 2>/dev/null || true
  log="target/fuzz-$t.log"
  echo "fuzz: $t for ${secs}s (log: fuzz/$log)"
  if cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" >"$log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs' "$log" | sed "s/^/fuzz: $t: /"
  else
    failed=1
    echo "fuzz: $t FAILED:" >&2
    grep -E -A8 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$log" | head -n 40 >&2 || tail -n 40 "$log" >&2
    grep -E 'Test unit written to' "$log" >&2 || true
  fi
done
exit "$failed"
