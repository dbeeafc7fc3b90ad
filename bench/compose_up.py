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
                                  [--compose FILE ...]

With several ``--compose`` files the runs alternate between them (A, B, A, B ...), so that a
comparison on a shared machine sees the same load; each file gets its own median.
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

from mailstack.testing.ports import compose_published, free_port  # noqa: E402

SERVICES = ["mda", "mta", "imap", "pop3", "autoconfig"]
PUBLISH = list(compose_published(ROOT / "docker-compose.yml"))
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
    ap.add_argument("--compose", action="append", type=Path,
                    help="a compose file (default: the project's); repeat to compare")
    args = ap.parse_args()
    files = args.compose or [ROOT / "docker-compose.yml"]
    env = dict(os.environ, MAILSTACK_IMAGE=args.image)
    env.update({f"MAILSTACK_PUBLISH_{n}": str(free_port()) for n in PUBLISH})
    def compose(file: Path, *a: str) -> None:
        subprocess.run(["docker-compose", "-f", str(file), "-p", PROJECT, *a], env=env,
                       capture_output=True, check=True, cwd=ROOT)

    totals: dict[Path, list[float]] = {f: [] for f in files}
    try:
        for i in range(args.runs * len(files)):
            file = files[i % len(files)]
            compose(file, "down", "-v")
            t0 = time.time()
            compose(file, "up", "-d")
            while True:
                states = _states()
                if all("(healthy)" in states.get(s, "") for s in SERVICES):
                    break
                time.sleep(0.1)
            total = time.time() - t0
            totals[file].append(total)
            ids = [states[s].split()[0] for s in SERVICES]
            info = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True,
                                             text=True, check=True).stdout)
            parts = []
            for name, c in zip(SERVICES, info, strict=True):
                ok = [h for h in c["State"]["Health"]["Log"] if h["ExitCode"] == 0]
                parts.append(f"{name} {_stamp(c['State']['StartedAt']) - t0:.2f}→"
                             f"{_stamp(ok[0]['End']) - t0:.2f}")
            print(f"run {i} ({file.name}): all healthy after {total:.2f} s (started→healthy: "
                  f"{', '.join(parts)})", flush=True)
        for file, runs in totals.items():
            print(f"{file}: up to all-healthy median {statistics.median(runs):.2f} s, "
                  f"min {min(runs):.2f}, max {max(runs):.2f} over {len(runs)} runs")
        if args.idle > 0:
            hz = os.sysconf("SC_CLK_TCK")
            c0, t0 = _cpu_ticks(), time.monotonic()
            time.sleep(args.idle)
            cores = (_cpu_ticks() - c0) / hz / (time.monotonic() - t0)
            print(f"machine CPU with the stack idle (health checks running): {cores:.3f} cores")
    finally:
        subprocess.run(["docker-compose", "-f", str(files[-1]), "-p", PROJECT, "down", "-v"],
                       env=env, capture_output=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
