#!/usr/bin/env python3
"""Runs the WORKLOAD.md matrix with `flexrun bench` (release build) and prints a Markdown
table of medians over fresh processes, repetitions interleaved across configurations.

usage: scripts/bench_matrix.py [--reps 3] [--nodes 10,100,1000] [--quick]
"""
import argparse
import json
import statistics
import subprocess
import sys

FIELDS = ["mean_step_overhead_us", "steps_per_s", "step_gap_us_p50", "step_gap_us_p99",
          "commits_per_step", "bytes_per_step", "events", "interrupt_resume_us_mean",
          "peak_rss_kib", "fsync_probe_us_p50", "cpu_util"]


def configs(nodes):
    for n in nodes:
        for level in ["memory", "d1", "d2"]:
            yield ("linear", n, 1, level, "interrupt")
            yield ("replan", n, 1, level, "interrupt")
            yield ("replan", n, 1, level, "route")
            yield ("fanout", n, 1, level, "interrupt")
            if n <= 100:
                yield ("fanout", n, 100, level, "interrupt")


def run(binary, cfg):
    scenario, n, r, level, variant = cfg
    out = subprocess.run([binary, "bench", "--scenario", scenario, "--nodes", str(n), "--runs", str(r),
                          "--durability", level, "--variant", variant],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nodes", default="10,100,1000")
    ap.add_argument("--binary", default="target/release/flexrun")
    args = ap.parse_args()
    cfgs = list(configs([int(n) for n in args.nodes.split(",")]))
    results = {c: [] for c in cfgs}
    for rep in range(args.reps):
        for c in cfgs:
            results[c].append(run(args.binary, c))
            print(f"rep {rep + 1}/{args.reps} {c}", file=sys.stderr)
    print("| scenario | N | R | level | µs/step | steps/s | gap p50 µs | gap p99 µs | commits/step | bytes/step | events | resume µs | fsync probe µs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cfgs:
        rows = results[c]
        med = {f: statistics.median([r[f] for r in rows if r.get(f) is not None] or [0]) for f in FIELDS}
        scenario, n, r, level, variant = c
        name = f"{scenario}/{variant}" if scenario == "replan" else scenario
        print(f"| {name} | {n} | {r} | {level} | {med['mean_step_overhead_us']:.1f} | {med['steps_per_s']:.0f} "
              f"| {med['step_gap_us_p50']:.1f} | {med['step_gap_us_p99']:.1f} | {med['commits_per_step']:.3f} "
              f"| {med['bytes_per_step']:.0f} | {med['events']:.0f} | {med['interrupt_resume_us_mean']:.0f} "
              f"| {med['fsync_probe_us_p50']:.0f} |")


if __name__ == "__main__":
    main()
