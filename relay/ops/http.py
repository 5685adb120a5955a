"""The operations endpoint: /healthz, /readyz and /metrics (aiohttp.web)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.metrics import Metrics

ReadinessCheck = Callable[[], str | None]


def create_app(metrics: Metrics, not_ready_reason: ReadinessCheck) -> web.Application:
    """``not_ready_reason`` returns None when ready, else a short reason for the probe body."""

    async def healthz(_: web.Request) -> web.Response:
        # Answering at all proves the event loop is not blocked.
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reason = not_ready_reason()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    async def metrics_view(_: web.Request) -> web.Response:
        # Readiness as /readyz would answer now, so dashboards and alerts see it without a
        # probe of their own (and outside Kubernetes).
        metrics.ready.set(1 if not_ready_reason() is None else 0)
        body = generate_latest(metrics.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
