"""The streaming MIME scan against the whole-message parse, in one process and one run.

For a multipart message of ``--size`` MiB (a small text part, a big base64 attachment, an
encapsulated message) it prints the median time of ``--runs`` runs and the peak of memory
allocated (tracemalloc) for: the whole parse (read the file, CRLF, ``mime.Part``,
BODYSTRUCTURE), which is what FETCH did for a big message's parts, and the scan from the file
(``mimescan.scan`` over 256 KiB file ranges, BODYSTRUCTURE), and the same for BINARY decoding
of the attachment (whole ``base64`` decode against piece-by-piece). Usage::

    python bench/mime_scan_bench.py [--size 20] [--runs 5]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailstack.imap import binary, mime, mimescan  # noqa: E402
from mailstack.imap.fetch import file_range  # noqa: E402
from mailstack.store.maildir import crlf_size, to_crlf  # noqa: E402


def message(size: int) -> bytes:
    blob = os.urandom(size * 3 // 4)
    return (b"Subject: bench\nContent-Type: multipart/mixed; boundary=BB\n\n"
            b"--BB\nContent-Type: text/plain\n\nhello\n"
            b"--BB\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
            + base64.encodebytes(blob) +
            b"--BB\nContent-Type: message/rfc822\n\nSubject: inner\n\ninner\n--BB--\n")


def measure(fn, runs: int) -> tuple[float, int]:
    """(median seconds, peak allocated octets of one run)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=20, help="MiB")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    data = message(args.size << 20)
    with tempfile.NamedTemporaryFile() as fh:
        fh.write(data)
        fh.flush()
        path, size = fh.name, crlf_size(data)

        def whole() -> None:
            part = mime.Part(to_crlf(Path(path).read_bytes()))
            mime.bodystructure(part)

        def scanned() -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                mime.bodystructure(mimescan.scan(file_range(fd, size, 0, size)))
            finally:
                os.close(fd)

        def whole_binary() -> None:
            part = mime.Part(to_crlf(Path(path).read_bytes()))
            base64.decodebytes(part.children[1].body)

        def scanned_binary() -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                span = mimescan.scan(file_range(fd, size, 0, size)).children[1]
                assert isinstance(span, mimescan.Span)
                for _ in binary.decode("base64", file_range(fd, size, span.body_start,
                                                            span.body_size)):
                    pass
            finally:
                os.close(fd)

        print(f"message: {size / 2**20:.1f} MiB (CRLF), {args.runs} runs, medians")
        rows = [("BODYSTRUCTURE", whole, scanned), ("BINARY[2]", whole_binary, scanned_binary)]
        for label, old, new in rows:
            t_old, m_old = measure(old, args.runs)
            t_new, m_new = measure(new, args.runs)
            print(f"{label:14} whole parse {t_old * 1000:7.1f} ms, peak {m_old / 2**20:6.1f} MiB"
                  f" | streaming scan {t_new * 1000:7.1f} ms, peak {m_new / 2**20:5.2f} MiB"
                  f" | time x{t_new / t_old:.2f}, memory /{m_old / max(m_new, 1):.0f}")


if __name__ == "__main__":
    main()
