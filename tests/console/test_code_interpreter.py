"""A code interpreter step in the browser, against the stack whose engine runs code in the real
sandbox (real bubblewrap, a real kernel with matplotlib): the fake vendor calls
code_interpreter with code that prints and draws a chart, and the chat shows the step with its
code, the printed output and the chart (fetched from the edge with the key in a header, never
in a URL, and actually decoded by Chromium), then the answer streaming in after it; the same
step again after a reload (read back from the run's steps). Screenshots in both themes.

And the printed output streams into the step while the code still runs: the code prints, then
waits for a file that the test writes into the session's sandbox only once the browser has
shown the line."""

from __future__ import annotations

import json
import struct
from urllib.parse import parse_qs, urlsplit

import aiohttp

from parley.sandbox.v1 import sandbox_service_pb2 as sbapi
from parley.sandbox.v1 import sandbox_service_pb2_grpc as sbgrpc
from services.rest import ids
from tests.conftest import channel_to
from tests.console.conftest import Trigger

CODE = ("import matplotlib.pyplot as plt\n"
        "squares = [n * n for n in range(1, 6)]\n"
        "print('squares:', squares)\n"
        "plt.figure(figsize=(4, 3))\n"
        "plt.plot(range(1, 6), squares, marker='o')\n"
        "plt.title('Squares')\n"
        "plt.savefig('/mnt/data/squares.png')\n"
        "plt.show()")
PRINTED = "squares: [1, 4, 9, 16, 25]"
ANSWER = ("The squares of one to five are 1, 4, 9, 16 and 25: they grow faster and faster, as the "
          "chart shows. It is saved as sandbox:/mnt/data/squares.png.")


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR", data[:16]
    return struct.unpack(">II", data[16:24])


async def test_a_code_interpreter_step_shows_its_code_output_and_chart_then_the_answer(code_interpreter_console):
    console = code_interpreter_console
    model = console.model()
    console.script(model, {"tool_calls": [("call_squares", "code_interpreter", json.dumps({"code": CODE}))]},
                   {"text": ANSWER, "pace": 0.04})
    assistant = await console.call("POST", "/assistants", {"model": model, "name": "Analyst",
                                                            "tools": [{"type": "code_interpreter"}]})
    report = await console.run("code_interpreter", assistant=assistant["id"], printed=PRINTED,
                               expected="The squares of one to five are 1, 4, 9, 16 and 25")

    # What the run stored: the step's code, its logs and one image, a PNG the key downloads.
    runs = (await console.call("GET", f"/threads/{report['thread']}/runs"))["data"]
    assert [r["status"] for r in runs] == ["completed"]
    steps = (await console.call("GET", f"/threads/{report['thread']}/runs/{runs[0]['id']}/steps?order=asc"))["data"]
    [call] = [c for s in steps if s["type"] == "tool_calls" for c in s["step_details"]["tool_calls"]]
    assert call["type"] == "code_interpreter" and call["code_interpreter"]["input"] == CODE
    outputs = call["code_interpreter"]["outputs"]
    assert [o["type"] for o in outputs] == ["logs", "image"], outputs
    # The logs are the printed text, then the note the model reads about the file saved.
    logs = outputs[0]["logs"]
    assert logs.startswith(PRINTED + "\n") and "sandbox:/mnt/data/squares.png" in logs, logs
    image_id = outputs[1]["image"]["file_id"]
    async with console.http.get(f"{console.origin}/v1/files/{image_id}/content") as response:
        assert response.status == 200
        width, height = png_size(await response.read())
    async with aiohttp.ClientSession() as anonymous, \
            anonymous.get(f"{console.origin}/v1/files/{image_id}/content") as response:
        assert response.status == 401  # the image is the user's: no credential, no image

    # The browser showed the same, live and after the reload: the code, the printed line, and
    # the chart decoded at the PNG's own size from a blob: URL.
    for seen in (report["live"], report["stored"]):
        assert "Code interpreter" in seen["title"] and "completed" in seen["title"]
        assert seen["pres"][0] == CODE and seen["pres"][1] == logs
        [image] = seen["images"]
        assert image["src"].startswith("blob:") and (image["width"], image["height"]) == (width, height)
        assert width > 0 and height > 0
    # Fetched from the edge's files API with the key as a header (the scenario also checked no
    # URL the page asked for held the key).
    fetched = [r for r in report["fileRequests"] if r["path"] == f"/v1/files/{image_id}/content"]
    assert fetched and all(r["authorization"] == f"Bearer {console.key}" for r in fetched)
    # The answer's sandbox path became a link to the saved file's page, which shows the image.
    [link] = report["fileLinks"]
    saved_id = link.split("/")[-1]
    saved = await console.call("GET", f"/files/{saved_id}")
    assert link.startswith("/files/file-") and saved["filename"] == "squares.png"
    async with console.http.get(f"{console.origin}/v1/files/{saved_id}/content") as response:
        saved_size = png_size(await response.read())
    linked = report["linked"]
    assert linked["name"] == "squares.png" and linked["src"].startswith("blob:")
    assert (linked["width"], linked["height"]) == saved_size


WAITING_CODE = ("import os, time\n"
                "print('first line', flush=True)\n"
                "while not os.path.exists('go'):  # written by the test once the browser shows the line\n"
                "    time.sleep(0.05)\n"
                "os.remove('go')\n"
                "print('second line')")


async def test_the_printed_output_streams_into_the_step_while_the_code_runs(code_interpreter_console,
                                                                           code_interpreter_stack, minter):
    console = code_interpreter_console
    model = console.model()
    console.script(model, {"tool_calls": [("call_wait", "code_interpreter", json.dumps({"code": WAITING_CODE}))]},
                   {"text": "Both lines were printed."})
    assistant = await console.call("POST", "/assistants", {"model": model, "name": "Patient",
                                                            "tools": [{"type": "code_interpreter"}]})

    async def let_the_code_go_on(path: str) -> None:
        """Writes `go` into the sandbox of the scenario's chat (?thread=), as its user."""
        thread = parse_qs(urlsplit(path).query)["thread"][0]
        who = minter.metadata(console.user, ("sandbox",))
        async with channel_to(code_interpreter_stack.sandbox) as channel:
            stub = sbgrpc.SandboxServiceStub(channel)
            sandbox = await stub.CreateSandbox(sbapi.CreateSandboxRequest(session_id=ids.internal("thread", thread)),
                                               metadata=who)  # the session's live sandbox

            async def upload():
                yield sbapi.UploadSandboxFileRequest(metadata=sbapi.UploadSandboxFileMetadata(
                    sandbox_id=sandbox.id, path="go"))
                yield sbapi.UploadSandboxFileRequest(chunk=b"go")

            await stub.UploadSandboxFile(upload(), metadata=who)

    trigger = await Trigger(let_the_code_go_on).start()
    try:
        report = await console.run("code_interpreter_live", assistant=assistant["id"], control=trigger.url,
                                   expected="Both lines were printed.")
    finally:
        await trigger.stop()
    assert trigger.calls == 1
    # While the code waited: the step in progress, its first line shown, no answer yet.
    assert "in progress" in report["waiting"]["title"] and report["waiting"]["answers"] == 0
    assert report["waiting"]["output"].strip() == "first line"
    assert report["done"]["output"].strip() == "first line\nsecond line"
    runs = (await console.call("GET", f"/threads/{report['thread']}/runs"))["data"]
    assert [r["status"] for r in runs] == ["completed"]
