"""``python -m fuzzlib.probe HOST PORT``: GET /healthz every 100 ms on a fresh connection until stdin closes.

A process of its own, so the latency it measures is the relay's, not the battery's busy event loop.
Prints one JSON line at the end: {"ms": [...], "bad": {status: count}}.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from collections import Counter


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    latencies: list[float] = []
    bad: Counter[str] = Counter()
    request = b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n"
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.1)
        if ready and not sys.stdin.readline():
            break
        started = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=10) as s:
                s.sendall(request)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            latencies.append((time.perf_counter() - started) * 1000)
            if not answer.startswith(b"HTTP/1.1 200"):
                bad[answer[:12].decode("ascii", "replace") or "no answer"] += 1
        except OSError as exc:
            bad[type(exc).__name__] += 1
    print(json.dumps({"ms": latencies, "bad": bad}), flush=True)


if __name__ == "__main__":
    main()
