#!/usr/bin/env bash
# The project's test command: installs the real-model test dependencies, the OpenAPI client
# generator and the console's browser (idempotent, see scripts/setup-llm.sh,
# scripts/setup-openapi-client.sh and scripts/setup-browser.sh), starts a PostgreSQL server
# (scripts/postgres.sh), then runs every test. Extra
# arguments go to `cargo test`.
# `--features testing` adds the targets that need `flexrun::testing` (the qa_steering
# example); the default features already include everything else (see docs/TESTING.md).
#
# Every run the tests drive records which rows of the state table it took (see
# `flexrun::engine::coverage`); afterwards the rows are added up into
# target/transition-coverage.md, and a full run (no arguments) fails if a row was never taken.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-llm.sh
bash scripts/setup-openapi-client.sh
bash scripts/setup-browser.sh
# The PostgreSQL store's tests run against a real server (scripts/postgres.sh), stopped on exit.
FLEXRUN_TEST_POSTGRES="$(bash scripts/postgres.sh start)"
export FLEXRUN_TEST_POSTGRES
trap 'bash scripts/postgres.sh stop' EXIT
coverage="$PWD/target/transition-coverage"
rm -rf "$coverage"
mkdir -p "$coverage"
FLEXRUN_TRANSITION_COVERAGE="$coverage" cargo test --features testing "$@"
require=()
if [ "$#" -eq 0 ]; then
    require=(--require-all)
fi
cargo run -q --features testing -- docs coverage --from "$coverage" "${require[@]}" | tee target/transition-coverage.md | head -1
