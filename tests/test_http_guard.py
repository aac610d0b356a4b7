"""The limits every HTTP request to a worker passes (agents/http_guard.py), over real HTTP:
body size, requests in flight, request time; probes and metrics are never held back."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from agents.http_guard import Guard
from control.config import Settings
from control.local.brokers import free_port


def serve(settings: Settings, scenario) -> None:
    """Run `scenario(base_url)` against an aiohttp app guarded like a worker's, whose /slow
    handler takes 0.3 s and whose /health answers at once."""
    guard = Guard(settings)

    async def slow(request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(0.3)
        return web.json_response({"bytes": len(body)})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def main() -> None:
        app = web.Application(**guard.application_options())
        app.router.add_post("/slow", slow)
        app.router.add_get("/health/live", health)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await scenario(f"http://127.0.0.1:{port}")
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_a_body_over_the_record_limit_gets_413_before_it_is_read() -> None:
    settings = Settings(max_record_bytes=1000)

    async def scenario(base: str) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/slow", data=b"x" * 1000) as r:
                assert r.status == 200 and (await r.json())["bytes"] == 1000
            async with session.post(f"{base}/slow", data=b"x" * 1001) as r:
                assert r.status == 413
                assert "1001 bytes is over the limit of 1000" in (await r.json())["error"]

            async def chunks():  # no Content-Length: aiohttp's own limit stops it
                for _ in range(10):
                    yield b"x" * 500
            async with session.post(f"{base}/slow", data=chunks()) as r:
                assert r.status == 413

    serve(settings, scenario)


def test_past_the_in_flight_limit_requests_get_503_with_retry_after() -> None:
    settings = Settings(http_max_in_flight=5)

    async def scenario(base: str) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one() -> tuple[int, str | None]:
                async with session.post(f"{base}/slow", data=b"{}") as r:
                    await r.read()
                    return r.status, r.headers.get("Retry-After")

            async def probe() -> int:
                async with session.get(f"{base}/health/live") as r:
                    return r.status

            answers = await asyncio.gather(*(one() for _ in range(200)), probe())
            statuses = Counter(status for status, _ in answers[:-1])
            assert set(statuses) == {200, 503} and statuses[200] >= 5, statuses
            assert all(after == "1" for status, after in answers[:-1] if status == 503)
            assert answers[-1] == 200  # probes are not held back by the limit
            assert (await one())[0] == 200  # and the worker serves again afterwards

    serve(settings, scenario)


def test_a_request_that_takes_too_long_gets_503() -> None:
    settings = Settings(http_request_timeout_s=0.1)

    async def scenario(base: str) -> None:
        async with aiohttp.ClientSession() as session, \
                session.post(f"{base}/slow", data=b"{}") as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            assert "longer than 0.1s" in (await r.json())["error"]

    serve(settings, scenario)


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0", "::", "10.1.2.3"])
def test_the_worker_url_names_a_host_this_machine_reaches(bind: str) -> None:
    url = Settings(worker_bind=bind, worker_web_port=7000).worker_url
    assert url == f"http://{'10.1.2.3' if bind == '10.1.2.3' else '127.0.0.1'}:7000"
    assert Settings(worker_host="w1.example.com").worker_url == "http://w1.example.com:6066"
