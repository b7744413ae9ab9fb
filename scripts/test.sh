#!/usr/bin/env bash
# The project's test command: installs the real-model test dependencies (idempotent, see
# scripts/setup-llm.sh), then runs every test. Extra arguments go to `cargo test`.
# `--features testing` adds the targets that need `flexrun::testing` (the qa_steering
# example); the default features already include everything else (see docs/TESTING.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-llm.sh
cargo test --features testing "$@"
