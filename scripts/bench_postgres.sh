#!/usr/bin/env bash
# The benchmark workload on the PostgreSQL store with 1, 2 and 3 instances (engines sharing
# one database), each configuration on a fresh database of the server scripts/postgres.sh
# starts. Prints one JSON report per line, then a Markdown table (docs/BENCHMARKS.md,
# "PostgreSQL store"). Usage: scripts/bench_postgres.sh [BINARY] (target/release/flexrun).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-$ROOT/target/release/flexrun}"
URL="$(bash "$ROOT/scripts/postgres.sh" start)"
BASE="${URL%/*}"
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
for case in "linear 1000 1" "replan 1000 1" "fanout 100 100"; do
    read -r scenario nodes runs <<<"$case"
    for instances in 1 2 3; do
        db="flexrun_bench_$(date +%s%N)"
        psql -X -q -d "$URL" -c "CREATE DATABASE $db"
        "$BIN" bench --store "$BASE/$db" --instances "$instances" --scenario "$scenario" \
            --nodes "$nodes" --runs "$runs" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' | tee -a "$OUT"
        psql -X -q -d "$URL" -c "DROP DATABASE $db WITH (FORCE)"
    done
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| scenario | instances | steps/s | commits/step | bytes/step | step gap p50 µs | takeover ms | remote follow p50 / p99 µs |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    shape = f"{r['scenario']} {r['n']}×{r['runs']}"
    takeover = "" if r["takeover_ms"] is None else f"{r['takeover_ms']:.0f}"
    follow = "" if r["remote_follow_us_p50"] is None else f"{r['remote_follow_us_p50']:,.0f} / {r['remote_follow_us_p99']:,.0f}"
    print(f"| {shape} | {r['instances']} | {r['steps_per_s']:,.0f} | {r['commits_per_step']:.3f} | "
          f"{r['bytes_per_step']:.0f} | {r['step_gap_us_p50']:,.0f} | {takeover} | {follow} |")
PY
