"""A code interpreter step in the browser, against the stack whose engine runs code in the real
sandbox (real bubblewrap, a real kernel with matplotlib): the fake vendor calls
code_interpreter with code that prints and draws a chart, and the chat shows the step with its
code, the printed output and the chart (fetched from the edge with the key in a header, never
in a URL, and actually decoded by Chromium), then the answer streaming in after it; the same
step again after a reload (read back from the run's steps). Screenshots in both themes."""

from __future__ import annotations

import json
import struct

import aiohttp

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
    # The answer's sandbox path became a link to the saved file's page.
    [link] = report["fileLinks"]
    saved = await console.call("GET", f"/files/{link.split('/')[-1]}")
    assert link.startswith("/files/file-") and saved["filename"] == "squares.png"
