#!/usr/bin/env python3
"""Scale curves: flexrun and the LangGraph peer over plan size N and concurrent runs R.

Runs both engines point by point, interleaved (flexrun, then the peer, at each point), each
point in a fresh process, and writes docs/bench/curves.json and four SVG plots:

  us_per_step_vs_n.svg   µs/step vs N (linear, in memory, R = 1), log x
  bytes_vs_n.svg         serialized bytes stored vs N (linear, durable, R = 1), log-log
  steps_per_s_vs_r.svg   steps/s vs R (fanout, in memory, fixed N)
  rss_vs_r.svg           peak RSS vs R (same runs)

Durable means flexrun d1 (redb, no fsync) and the peer's SQLite checkpointer with
synchronous=NORMAL. A peer point that runs longer than --peer-timeout seconds is dropped and
the plot says so. Python standard library only: the SVG is written by hand.

  scripts/bench_curves.py                          # release binary, default points
  scripts/bench_curves.py --nodes 10,100,1000 --runs 1,10,100 --peer-timeout 60
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLORS = {"flexrun": "#1f77b4", "langgraph": "#d62728"}


def run_json(cmd, timeout):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    except subprocess.CalledProcessError as e:
        return None, (e.stderr or "").strip().splitlines()[-1:] or ["failed"]
    return json.loads(out.stdout), None


def flexrun_point(args, scenario, level, n, r):
    cmd = [args.flexrun, "bench", "--scenario", scenario, "--durability", level,
           "--nodes", str(n), "--runs", str(r), "--count-allocs"]
    rep, err = run_json(cmd, args.flexrun_timeout)
    if rep is None:
        sys.exit(f"flexrun {scenario} N={n} R={r} {level}: {err}")
    return {
        "us_per_step": rep["mean_step_overhead_us"], "steps_per_s": rep["steps_per_s"],
        "steps": rep["steps"], "stored_bytes": rep["checkpoint_bytes"],
        "db_bytes": rep["db_bytes"], "peak_rss_kib": rep["peak_rss_kib"],
        "allocs_per_step": rep["allocs_per_step"],
        "alloc_bytes_per_step": rep["alloc_bytes_per_step"],
        "bytes_per_step": rep["bytes_per_step"], "commits_per_step": rep["commits_per_step"],
        "fsync_probe_us_p50": rep["fsync_probe_us_p50"],
    }


def peer_point(args, scenario, durable, n, r):
    cmd = [args.peer_python, args.peer_bench, "--scenario", scenario, "--nodes", str(n),
           "--runs", str(r)]
    cmd += ["--checkpointer", "sqlite", "--sqlite-synchronous", "NORMAL"] if durable \
        else ["--checkpointer", "memory"]
    rep, err = run_json(cmd, args.peer_timeout)
    if rep is None:
        return {"skipped": str(err)}
    res = rep["results"]
    steps = res["plan_steps_total"]
    return {
        "us_per_step": res["mean_step_overhead_us"], "steps_per_s": res["steps_per_s"],
        "steps": steps, "stored_bytes": res["checkpoint_bytes"], "db_bytes": res["db_bytes"],
        "peak_rss_kib": res["peak_rss_kib"],
        "bytes_per_step": (res["checkpoint_bytes"] or 0) / max(steps, 1),
        "commits_per_step": res["commits_per_step"],
        "fsync_probe_us_p50": res["fsync_probe_us_p50"],
    }


def sweep(args, name, scenario, durable, points, fixed):
    rows = []
    for p in points:
        n, r = (p, fixed) if name == "nodes" else (fixed, p)
        level = "d1" if durable else "memory"
        f = flexrun_point(args, scenario, level, n, r)
        g = peer_point(args, scenario, durable, n, r)
        print(f"{name}={p}: flexrun {f['us_per_step']:.1f} us/step, peer "
              f"{g.get('us_per_step', g.get('skipped'))}", file=sys.stderr)
        rows.append({"n": n, "runs": r, "flexrun": f, "langgraph": g})
    return rows


# ---- SVG -------------------------------------------------------------------------------

W, H, ML, MR, MT, MB = 640, 420, 80, 20, 50, 90


def ticks(lo, hi, log):
    if log:
        return [10 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    step = 10 ** math.floor(math.log10(max(hi - lo, 1e-9)))
    if (hi - lo) / step < 4:
        step /= 2
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2)]


def fmt(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def plot(path, title, xlabel, ylabel, series, logx, logy, notes):
    pts = [pt for _, s in series for pt in s]
    xs = [x for x, _ in pts]
    ys = [y for _, y in pts]
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = (min(ys), max(ys)) if logy else (0, max(ys) * 1.1)
    xt, yt = ticks(xlo, xhi, logx), ticks(ylo, yhi, logy)
    xlo, xhi = min(xt[0], xlo), max(xt[-1], xhi)
    ylo, yhi = min(yt[0], ylo), max(yt[-1], yhi)
    f = (lambda v: math.log10(v)) if logx else (lambda v: v)
    g = (lambda v: math.log10(v)) if logy else (lambda v: v)

    def sx(v):
        return ML + (f(v) - f(xlo)) / ((f(xhi) - f(xlo)) or 1) * (W - ML - MR)

    def sy(v):
        return H - MB - (g(v) - g(ylo)) / ((g(yhi) - g(ylo)) or 1) * (H - MT - MB)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="15">{title}</text>']
    for t in xt:
        if xlo <= t <= xhi:
            out.append(f'<line x1="{sx(t):.1f}" y1="{MT}" x2="{sx(t):.1f}" y2="{H - MB}" stroke="#ddd"/>')
            out.append(f'<text x="{sx(t):.1f}" y="{H - MB + 16}" text-anchor="middle">{fmt(t)}</text>')
    for t in yt:
        if ylo <= t <= yhi:
            out.append(f'<line x1="{ML}" y1="{sy(t):.1f}" x2="{W - MR}" y2="{sy(t):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{ML - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    out.append(f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" fill="none" stroke="black"/>')
    out.append(f'<text x="{(ML + W - MR) / 2}" y="{H - MB + 34}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text transform="translate(16,{(MT + H - MB) / 2}) rotate(-90)" text-anchor="middle">{ylabel}</text>')
    for i, (label, s) in enumerate(series):
        c = COLORS[label]
        if s:
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
            out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
            out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>' for x, y in s)
        out.append(f'<rect x="{ML + 10}" y="{MT + 10 + 18 * i}" width="12" height="12" fill="{c}"/>')
        out.append(f'<text x="{ML + 28}" y="{MT + 21 + 18 * i}">{label}</text>')
    for i, note in enumerate(notes):
        out.append(f'<text x="{ML}" y="{H - MB + 54 + 15 * i}" font-size="11" fill="#444">{note}</text>')
    out.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(out) + "\n")


def points_of(rows, key, eng, metric, scale=1.0):
    return [(r[key], r[eng][metric] * scale) for r in rows
            if metric in r[eng] and r[eng][metric]]


def skipped(rows, key):
    return [f"{key}={r[key]}" for r in rows if "skipped" in r["langgraph"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flexrun", default=os.path.join(ROOT, "target", "release", "flexrun"))
    ap.add_argument("--peer-python",
                    default=os.path.expanduser("~/.cache/flexrun-peer/langgraph/.venv/bin/python"))
    ap.add_argument("--peer-bench",
                    default=os.path.expanduser("~/.cache/flexrun-peer/langgraph/bench.py"))
    ap.add_argument("--nodes", default="10,30,100,300,1000,3000")
    ap.add_argument("--runs", default="1,3,10,30,100,300")
    ap.add_argument("--runs-n", type=int, default=100, help="plan size of the R sweep")
    ap.add_argument("--peer-timeout", type=float, default=60.0)
    ap.add_argument("--flexrun-timeout", type=float, default=300.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--replot", action="store_true",
                    help="redraw the plots from OUT/curves.json without measuring")
    args = ap.parse_args()
    nodes = [int(v) for v in args.nodes.split(",")]
    runs = [int(v) for v in args.runs.split(",")]
    os.makedirs(args.out, exist_ok=True)

    if args.replot:
        with open(os.path.join(args.out, "curves.json")) as fh:
            data = json.load(fh)
        args.peer_timeout = data["peer_timeout_s"]
        draw(args, data)
        return
    data = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "peer_timeout_s": args.peer_timeout,
        "nodes_memory": sweep(args, "nodes", "linear", False, nodes, 1),
        "nodes_durable": sweep(args, "nodes", "linear", True, nodes, 1),
        "runs_memory": sweep(args, "runs", "fanout", False, runs, args.runs_n),
    }
    probes = [r["flexrun"]["fsync_probe_us_p50"] for k in ("nodes_memory", "nodes_durable",
                                                          "runs_memory") for r in data[k]]
    probes.sort()
    data["fsync_probe_us_p50_median"] = probes[len(probes) // 2]
    with open(os.path.join(args.out, "curves.json"), "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
    draw(args, data)
    print(json.dumps({"out": args.out, "points": sum(len(data[k]) for k in
                                                     ("nodes_memory", "nodes_durable", "runs_memory"))}))


def draw(args, data):
    """Writes the four plots of `data` into args.out."""

    stamp = f"{data['date']}, fsync probe p50 {data['fsync_probe_us_p50_median']:.0f} µs, 2-core VM"

    def notes(rows, key, extra):
        s = skipped(rows, key)
        cap = [f"peer capped at {args.peer_timeout:g} s per point: no point at {', '.join(s)}"] if s else []
        return [extra, stamp] + cap

    nm, nd, rm = data["nodes_memory"], data["nodes_durable"], data["runs_memory"]
    both = ("flexrun", "langgraph")
    plot(os.path.join(args.out, "us_per_step_vs_n.svg"), "µs per step vs plan size N",
         "N (steps in the plan, log)", "µs per step (log)",
         [(e, points_of(nm, "n", e, "us_per_step")) for e in both], True, True,
         notes(nm, "N", "linear, R = 1, in memory (flexrun MemoryStore, LangGraph InMemorySaver)"))
    plot(os.path.join(args.out, "bytes_vs_n.svg"), "serialized bytes stored vs N",
         "N (log)", "bytes stored per run (log)",
         [(e, points_of(nd, "n", e, "stored_bytes")) for e in both], True, True,
         notes(nd, "N", "linear, R = 1, flexrun d1 / LangGraph SQLite NORMAL; slope 1 = O(N), 2 = O(N²)"))
    plot(os.path.join(args.out, "steps_per_s_vs_r.svg"), f"steps/s vs concurrent runs R (N = {args.runs_n})",
         "R (concurrent runs, log)", "steps per second",
         [(e, points_of(rm, "runs", e, "steps_per_s")) for e in both], True, False,
         notes(rm, "R", "fanout, in memory, one engine and one store per process"))
    plot(os.path.join(args.out, "rss_vs_r.svg"), f"peak RSS vs concurrent runs R (N = {args.runs_n})",
         "R (concurrent runs, log)", "peak RSS (MiB)",
         [(e, points_of(rm, "runs", e, "peak_rss_kib", 1 / 1024)) for e in both], True, False,
         notes(rm, "R", "fanout, in memory, peak resident set of the whole process"))


if __name__ == "__main__":
    main()
