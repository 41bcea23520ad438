"""A second ecosystem: the official `openai` npm package (package.json, installed by
`make install`) streams a run through the edge."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("stream_run.mjs")


async def test_the_node_sdk_streams_a_run(edge):
    node = shutil.which("node")
    assert node, "Node.js is needed for this test (make install brings the npm packages)"
    assert (ROOT / "node_modules" / "openai" / "package.json").exists(), "run `npm ci` (make install)"
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(model.split("/")[1], {"text": "Hello from Node.js."})
    key = await edge.key()
    import openai

    async with openai.AsyncOpenAI(api_key=key, base_url=edge.base_url, max_retries=0) as sdk:
        assistant = await sdk.beta.assistants.create(model=model)
        thread = await sdk.beta.threads.create(messages=[{"role": "user", "content": "Hi from Node"}])
    # The script lives under tests/; node resolves `openai` from the repository's node_modules.
    process = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "OPENAI_API_KEY": key, "OPENAI_BASE_URL": edge.base_url, "THREAD_ID": thread.id,
             "ASSISTANT_ID": assistant.id, "NODE_PATH": str(ROOT / "node_modules")})
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-3000:]
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert seen["status"] == "completed" and seen["runId"].startswith("run_")
    assert seen["text"] == "Hello from Node.js." == seen["stored"]
    assert seen["events"][0] == "thread.run.created" and "thread.message.delta" in seen["events"]
    assert seen["events"][-1] == "thread.run.completed"


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
