#!/usr/bin/env bash
# Installs what the generated-client test (tests/http/clients.rs) needs, idempotently:
#   target/openapi/venv   a Python venv with openapi-python-client and openapi-spec-validator
# Re-running it is cheap: the install is skipped when both are already there.
# Override the location with FLEXRUN_OPENAPI_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${FLEXRUN_OPENAPI_DIR:-$ROOT/target/openapi}"
GENERATOR_VERSION="${OPENAPI_PYTHON_CLIENT_VERSION:-0.29.1}"
VALIDATOR_VERSION="${OPENAPI_SPEC_VALIDATOR_VERSION:-0.9.0}"
PYTHON="${PYTHON:-python3}"

mkdir -p "$DIR"
if ! "$DIR/venv/bin/python" -c "import openapi_python_client, openapi_spec_validator" 2>/dev/null; then
    echo "setup-openapi-client: installing openapi-python-client==$GENERATOR_VERSION, openapi-spec-validator==$VALIDATOR_VERSION"
    "$PYTHON" -m venv "$DIR/venv"
    "$DIR/venv/bin/pip" install --quiet \
        "openapi-python-client==$GENERATOR_VERSION" \
        "openapi-spec-validator==$VALIDATOR_VERSION"
fi
echo "setup-openapi-client: python $DIR/venv/bin/python"
