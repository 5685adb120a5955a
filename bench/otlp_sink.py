"""An OTLP/HTTP trace receiver for the tracing benchmark: it decodes what it is sent, as a
collector would, counts the spans and keeps nothing else. Runs as its own process, so its CPU
is not the relay's: ``python -m bench.otlp_sink --port N``."""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from aiohttp import web

from bench.partner import free_port, wait_until_answering


def serve(port: int) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    counted = {"spans": 0}
    answer = ExportTraceServiceResponse().SerializeToString()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        counted["spans"] += sum(
            len(scope.spans) for spans in export.resource_spans for scope in spans.scope_spans
        )
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def count(_: web.Request) -> web.Response:
        return web.json_response(counted)

    async def reset(_: web.Request) -> web.Response:
        counted["spans"] = 0
        return web.json_response(counted)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


class Sink:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.http = requests.Session()

    def spans(self) -> int:
        response = self.http.get(f"{self.url}/count", timeout=30)
        response.raise_for_status()
        return int(response.json()["spans"])

    def reset(self) -> None:
        self.http.post(f"{self.url}/reset", timeout=30).raise_for_status()


@contextmanager
def running_sink(log: Path) -> Iterator[Sink]:
    port = free_port()
    command = [sys.executable, "-m", "bench.otlp_sink", "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    sink = Sink(port)
    try:
        wait_until_answering(process, "OTLP sink", sink.spans, log, 20.0)
        yield sink
    finally:
        sink.http.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args().port)


if __name__ == "__main__":
    main()
