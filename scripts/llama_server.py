#!/usr/bin/env python3
"""Runs llama.cpp's OpenAI-compatible HTTP server (from the xllamacpp wheel) on 127.0.0.1.

Usage: llama_server.py MODEL.gguf [--threads N] [--ctx N] [--port N]

Prints one line `LISTENING <base url>` once the server is bound, then serves until its
standard input closes (the parent went away) or it is terminated. Port 0 picks a free port.
"""

import argparse
import signal
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--alias", default="smollm2")
    args = parser.parse_args()

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = args.alias
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_ctx = args.ctx
    params.n_parallel = 1
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.warmup = False

    server = xllamacpp.Server(params)
    print(f"LISTENING {server.listening_address}", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Serve until the parent closes our stdin (or dies).
    sys.stdin.read()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
