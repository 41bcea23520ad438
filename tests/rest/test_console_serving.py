"""The edge serves the web console's build at `/` without shadowing the API: hashed assets
cached as immutable, index.html for client routes and never cached, a strict CSP, and a clear
503 when there is no build. Real edge processes, each with its own console folder."""

from __future__ import annotations

import aiohttp
import pytest

from tests.rest.conftest import Edge

INDEX = '<!doctype html><html><head><script type="module" src="/assets/app-1a2b3c.js"></script></head></html>'


@pytest.fixture(scope="module")
async def console_edges(stack, tmp_path_factory):
    built = tmp_path_factory.mktemp("console-built")
    (built / "assets").mkdir()
    (built / "index.html").write_text(INDEX)
    (built / "assets" / "app-1a2b3c.js").write_text("console.log('parley');")
    (built / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path_factory.getbasetemp() / "secret.txt").write_text("not for the web")
    missing = tmp_path_factory.mktemp("console-missing")
    logs = tmp_path_factory.mktemp("console-logs")
    edges = [Edge(stack, logs / "built.log", PARLEY_REST_CONSOLE_DIR=str(built)),
             Edge(stack, logs / "missing.log", PARLEY_REST_CONSOLE_DIR=str(missing))]
    try:
        for edge in edges:
            await edge.wait_healthy()
        yield [f"http://127.0.0.1:{edge.port}" for edge in edges]
    finally:
        for edge in edges:
            edge.stop()


async def test_the_console_is_served_beside_the_api(console_edges):
    origin, _ = console_edges
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/chat/thread_0123", "/usage", "/assistants?x=1"):
            async with http.get(origin + path) as page:
                assert page.status == 200 and await page.text() == INDEX, path
                assert page.headers["content-type"].startswith("text/html")
                assert page.headers["cache-control"] == "no-cache"
                csp = page.headers["content-security-policy"]
                assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
                assert page.headers["x-content-type-options"] == "nosniff"
        async with http.get(origin + "/assets/app-1a2b3c.js") as asset:
            assert asset.status == 200 and asset.headers["content-type"].startswith("text/javascript")
            assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        async with http.get(origin + "/favicon.svg") as icon:
            assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml"
        for path in ("/assets/missing.js", "/assets/..%2f..%2fsecret.txt", "/assets/"):
            async with http.get(origin + path) as missing:
                assert missing.status == 404 and "not for the web" not in await missing.text(), path
        # The API's own paths are never the console's.
        async with http.get(origin + "/v1/no-such-endpoint") as unknown:
            assert unknown.status == 404
            assert (await unknown.json())["error"]["code"] == "unknown_url"
        async with http.get(origin + "/healthz") as health:
            assert (await health.json()) == {"status": "SERVING"}
        async with http.get(origin + "/openapi.json") as spec:
            assert "/v1/parley/threads" in (await spec.json())["paths"]
        async with http.get(origin + "/docs") as docs:
            assert docs.status == 200 and "swagger" in (await docs.text()).lower()
        async with http.get(origin + "/v1/models") as models:
            assert models.status == 401  # the API, not the console: no key
        async with http.post(origin + "/chat") as posted:
            assert posted.status == 404 and (await posted.json())["error"]["code"] == "unknown_url"


async def test_without_a_build_the_console_says_what_to_run(console_edges):
    _, origin = console_edges
    async with aiohttp.ClientSession() as http:
        async with http.get(origin + "/") as page:
            assert page.status == 503 and "make install" in await page.text()
            assert page.headers["cache-control"] == "no-store"
        async with http.get(origin + "/healthz") as health:
            assert health.status == 200
        async with http.get(origin + "/v1/models") as models:
            assert models.status == 401
