#!/usr/bin/env bash
# The whole test suite, end-to-end tests included: `tests/run.sh` (extra arguments go to cargo test).
# Installs the pinned test tools (tests/tools/requirements.txt) into a venv first; the tests start
# the servers they need (moto, the Lambda runtime emulator) themselves, on free loopback ports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null || { echo "tests/run.sh: cargo is required" >&2; exit 1; }
venv="$(tests/tools/ensure-venv.sh)"
export TOKENFENCE_VENV="$venv"
cargo test --workspace --locked "$@"
