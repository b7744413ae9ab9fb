#!/usr/bin/env bash
# Instructions per step of `flexrun bench`, counted by callgrind (valgrind): repeatable for the
# same binary and inputs whatever else the machine runs, unlike times. Prints the marginal count
# per step between N and 2N (planning of the extra nodes included, process start excluded) and
# the top functions by inclusive count at 2N.
#   scripts/instructions_per_step.sh [BINARY] [LEVEL=memory] [SCENARIO=linear] [N=1000]
set -euo pipefail
bin=${1:-target/release/flexrun}
level=${2:-memory}
scenario=${3:-linear}
n=${4:-1000}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() {
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1" "$bin" bench --scenario "$scenario" \
        --nodes "$1" --durability "$level" --warmup 0 2>&1 >/dev/null |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
a=$(count "$n")
b=$(count $((2 * n)))
echo "{\"scenario\":\"$scenario\",\"level\":\"$level\",\"n\":$n,\"instructions_n\":$a,\"instructions_2n\":$b,\"instructions_per_step\":$(((b - a) / n))}"
callgrind_annotate --inclusive=yes "$out/cg.$((2 * n))" 2>/dev/null | grep 'flexrun::' | grep -v "'2" | head -25 | cut -c1-160 >&2
