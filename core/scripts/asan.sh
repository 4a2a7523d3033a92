#!/usr/bin/env bash
# Runs tokio-rdma-core's unit and integration tests under AddressSanitizer (miri is not
# available on these machines). Needs the nightly toolchain; no rust-src/build-std required.
# `--target` keeps the sanitizer flags away from build scripts and proc macros.
# Usage: core/scripts/asan.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUSTFLAGS="-Zsanitizer=address ${RUSTFLAGS:-}"
export RUSTDOCFLAGS="-Zsanitizer=address"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1:abort_on_error=1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/asan}"
exec cargo +nightly test -p tokio-rdma-core --target x86_64-unknown-linux-gnu --lib --tests "$@"
