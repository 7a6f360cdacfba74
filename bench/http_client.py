"""Client CPU per HTTP request: httpx, httpx over an ``http.client`` transport, bare
``http.client``, and agentic's ``TaskClient``, side by side in one run.

Run: ``python bench/http_client.py [--requests N] [--rounds R]``. A stdlib HTTP/1.1
server in this process answers every POST with a task's JSON (about 600 bytes);
each client posts the same small body over one keep-alive connection, and the CPU
time of the client's own thread is measured (``time.thread_time``), so the server's
work is not counted. It answers one question from TODO.md: how much of httpx's cost
a leaner transport passed to ``TaskClient(transport=...)`` would save, against what
dropping httpx from the hot path would.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from _common import print_ratios

from agentic.client import TaskClient
from agentic.models import Task, TaskResult

TASK = Task(id="t1", title="bench", status="in_progress", claimed_by="a1", job_id="j1")
ANSWER = TASK.model_dump_json().encode()
BODY = json.dumps({"agent_id": "a1", "job_id": "j1", "result": {"success": True}}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms stalls

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would be the benchmark


class HTTPClientTransport(httpx.BaseTransport):
    """The leanest transport httpx accepts: one ``http.client`` connection."""

    def __init__(self, host: str, port: int) -> None:
        self._conn = http.client.HTTPConnection(host, port)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._conn.request(
            request.method,
            request.url.raw_path.decode(),
            body=request.read(),
            headers=dict(request.headers),
        )
        answer = self._conn.getresponse()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())

    def close(self) -> None:
        self._conn.close()


def _httpx(url: str, port: int) -> tuple[Callable[[], object], Callable[[], None]]:
    client = httpx.Client(base_url=url)
    return lambda: client.post("/api/tasks/t1/complete", content=BODY).content, client.close


def _httpx_lean(url: str, port: int) -> tuple[Callable[[], object], Callable[[], None]]:
    client = httpx.Client(base_url=url, transport=HTTPClientTransport("127.0.0.1", port))
    return lambda: client.post("/api/tasks/t1/complete", content=BODY).content, client.close


def _stdlib(url: str, port: int) -> tuple[Callable[[], object], Callable[[], None]]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json"}

    def post() -> bytes:
        conn.request("POST", "/api/tasks/t1/complete", body=BODY, headers=headers)
        return conn.getresponse().read()

    return post, conn.close


def _task_client(url: str, port: int) -> tuple[Callable[[], object], Callable[[], None]]:
    client = TaskClient(url, token="t", agent_id="a1", retries=0)
    done = TaskResult(success=True)
    return lambda: client.complete_task("t1", done, job_id="j1"), client.close


CONTENDERS: dict[str, Callable[[str, int], tuple[Callable[[], object], Callable[[], None]]]] = {
    "http.client (stdlib)": _stdlib,
    "httpx + http.client transport": _httpx_lean,
    "httpx": _httpx,
    "TaskClient.complete_task (httpx)": _task_client,
}


def _cpu_per_request(post: Callable[[], object], requests: int) -> float:
    """Microseconds of this thread's CPU per request, after a warm-up."""
    for _ in range(50):
        post()
    start = time.thread_time()
    for _ in range(requests):
        post()
    return (time.thread_time() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    samples: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    try:
        for _ in range(args.rounds):
            for name, make in CONTENDERS.items():
                post, close = make(url, port)
                try:
                    samples[name].append(_cpu_per_request(post, args.requests))
                finally:
                    close()
    finally:
        server.shutdown()
    print(
        f"python {platform.python_version()}, httpx {httpx.__version__}, {sys.platform};"
        f" {args.requests} POSTs per round, {args.rounds} round(s); client thread CPU only"
    )
    print_ratios(samples, "httpx", ("client", "us/request", "vs httpx"), ".0f")


if __name__ == "__main__":
    main()
