#!/usr/bin/env bash
# The project's test command: installs the real-model test dependencies (idempotent, see
# scripts/setup-llm.sh), then runs every test. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-llm.sh
cargo test "$@"
