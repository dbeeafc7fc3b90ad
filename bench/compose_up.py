"""docker-compose: ``up -d`` to every service healthy, and the CPU the health checks cost.

Needs a Docker engine, docker-compose and the image built (as ``tests/deploy/test_docker.py``
builds it: ``docker build --build-arg PYTHON_IMAGE=$(.ci/docker-base) -t mailstack-e2e .``).
Each run starts from nothing (``down -v``), so the first start generates the TLS files, as an
operator's first ``up`` does. The health state is polled with one ``docker ps`` every 0.1 s;
each run also prints, from ``docker inspect``, when each service started and when its first
passing probe ended (seconds after ``up`` was called). Then, with the stack idle, the CPU that
dockerd, containerd and the probes take over ``--idle`` seconds (from /proc/stat, so the
machine must be otherwise quiet for that figure to mean anything).

Target (issue 15): up to all-healthy <= 5 s.

Usage: python bench/compose_up.py [--runs 5] [--image mailstack-e2e:latest] [--idle 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailstack.testing.ports import free_port  # noqa: E402

SERVICES = ["mda", "mta", "imap", "pop3", "autoconfig"]
PUBLISH = ["SMTP", "SUBMISSION", "SUBMISSIONS", "IMAP", "IMAPS", "POP3", "POP3S", "HTTP"]
PROJECT = "mailstackbench"


def _stamp(text: str) -> float:
    """Docker's RFC 3339 time with nanoseconds → epoch seconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def _states() -> dict[str, str]:
    r = subprocess.run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project="
                        f"{PROJECT}", "--format", '{{.Label "com.docker.compose.service"}} '
                        "{{.ID}} {{.Status}}"], capture_output=True, text=True, check=True)
    out = {}
    for line in r.stdout.splitlines():
        name, cid, status = line.split(" ", 2)
        out[name] = f"{cid} {status}"
    return out


def _cpu_ticks() -> int:
    with open("/proc/stat") as f:
        user, nice, system = (int(x) for x in f.readline().split()[1:4])
    return user + nice + system


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image", default="mailstack-e2e:latest")
    ap.add_argument("--idle", type=float, default=20.0)
    args = ap.parse_args()
    env = dict(os.environ, MAILSTACK_IMAGE=args.image)
    env.update({f"MAILSTACK_PUBLISH_{n}": str(free_port()) for n in PUBLISH})
    base = ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "-p", PROJECT]

    def compose(*a: str) -> None:
        subprocess.run([*base, *a], env=env, capture_output=True, check=True, cwd=ROOT)

    totals = []
    try:
        for i in range(args.runs):
            compose("down", "-v")
            t0 = time.time()
            compose("up", "-d")
            while True:
                states = _states()
                if all("(healthy)" in states.get(s, "") for s in SERVICES):
                    break
                time.sleep(0.1)
            totals.append(time.time() - t0)
            ids = [states[s].split()[0] for s in SERVICES]
            info = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True,
                                             text=True, check=True).stdout)
            parts = []
            for name, c in zip(SERVICES, info, strict=True):
                ok = [h for h in c["State"]["Health"]["Log"] if h["ExitCode"] == 0]
                parts.append(f"{name} {_stamp(c['State']['StartedAt']) - t0:.2f}→"
                             f"{_stamp(ok[0]['End']) - t0:.2f}")
            print(f"run {i}: all healthy after {totals[-1]:.2f} s (started→healthy: "
                  f"{', '.join(parts)})", flush=True)
        print(f"up to all-healthy: median {statistics.median(totals):.2f} s, "
              f"min {min(totals):.2f}, max {max(totals):.2f} over {len(totals)} runs")
        if args.idle > 0:
            hz = os.sysconf("SC_CLK_TCK")
            c0, t0 = _cpu_ticks(), time.monotonic()
            time.sleep(args.idle)
            cores = (_cpu_ticks() - c0) / hz / (time.monotonic() - t0)
            print(f"machine CPU with the stack idle (health checks running): {cores:.3f} cores")
    finally:
        subprocess.run([*base, "down", "-v"], env=env, capture_output=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
