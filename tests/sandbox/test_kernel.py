"""The kernel keeps state like a notebook: variables, imports and files persist between
executions; exceptions are results; charts come back as PNG; attached files are readable."""

from __future__ import annotations

import pytest

from parley.sandbox.v1 import sandbox_pb2, sandbox_service_pb2
from tests.sandbox.conftest import download, execute, new_sandbox, upload


@pytest.fixture
async def sandbox(stub, as_user):
    created = await new_sandbox(stub, as_user("kernel-user"))
    yield created
    await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=created.id),
                             metadata=as_user("kernel-user"))


async def test_variables_imports_and_files_persist_between_executions(stub, as_user, sandbox):
    md = as_user("kernel-user")
    first = await execute(stub, md, sandbox.id, "import math\nanswer = 41\nopen('note.txt', 'w').write('kept')\n"
                                                "print('defined')")
    assert first.stdout == "defined\n" and first.result.exit_code == 0 and not first.result.kernel_restarted
    assert [f.path for f in first.result.output_files] == ["note.txt"]
    second = await execute(stub, md, sandbox.id, "print(answer + 1, math.sqrt(16), open('note.txt').read())")
    assert second.stdout == "42 4.0 kept\n"
    assert second.result.note == "" and not second.result.kernel_restarted
    # The value of a last expression is shown, as in a notebook.
    third = await execute(stub, md, sandbox.id, "answer * 2")
    assert third.stdout == "82\n"


async def test_an_exception_is_a_result_with_its_traceback(stub, as_user, sandbox):
    md = as_user("kernel-user")
    ran = await execute(stub, md, sandbox.id, "def f():\n    return 1 / 0\nf()")
    assert ran.result.exit_code == 1
    assert ran.result.error.name == "ZeroDivisionError" and ran.result.error.value == "division by zero"
    assert "1 / 0" in ran.result.error.traceback and "\x1b[" not in ran.result.error.traceback
    # The kernel is fine afterwards.
    assert (await execute(stub, md, sandbox.id, "print('still here')")).stdout == "still here\n"


async def test_a_matplotlib_chart_comes_back_as_png_display_and_file(stub, as_user, sandbox):
    md = as_user("kernel-user")
    ran = await execute(stub, md, sandbox.id,
                        "import matplotlib\nimport matplotlib.pyplot as plt\n"
                        "plt.plot([1, 2, 3], [1, 4, 9])\nplt.savefig('chart.png')\nplt.show()\n"
                        "print(matplotlib.get_backend())")
    assert ran.result.exit_code == 0, ran.result.error.traceback
    assert "inline" in ran.stdout or "agg" in ran.stdout.lower()
    pngs = [d for d in ran.result.displays if d.media_type == "image/png"]
    assert len(pngs) == 1 and pngs[0].data.startswith(b"\x89PNG\r\n\x1a\n")
    chart = next(f for f in ran.result.output_files if f.path == "chart.png")
    assert chart.media_type == "image/png" and chart.inlined and chart.data.startswith(b"\x89PNG")
    file, data = await download(stub, md, sandbox.id, "chart.png")
    assert file.media_type == "image/png" and data == chart.data


async def test_an_uploaded_csv_is_read_by_pandas(stub, as_user, sandbox):
    md = as_user("kernel-user")
    csv = "city,temp\nLisbon,21\nOslo,7\nCairo,33\n".encode()
    uploaded = await upload(stub, md, sandbox.id, "data/temps.csv", csv, source_file_id="file-123")
    assert uploaded.size_bytes == len(csv) and uploaded.source_file_id == "file-123"
    ran = await execute(stub, md, sandbox.id,
                        "import pandas as pd\ndf = pd.read_csv('/mnt/data/data/temps.csv')\n"
                        "print(df['temp'].mean(), df.loc[df['temp'].idxmax(), 'city'])")
    assert ran.stdout == "20.333333333333332 Cairo\n", ran.result.error.traceback
    listed = await stub.ListSandboxFiles(sandbox_service_pb2.ListSandboxFilesRequest(sandbox_id=sandbox.id),
                                         metadata=md)
    assert [(f.path, f.source_file_id) for f in listed.files] == [("data/temps.csv", "file-123")]


async def test_listing_pages_through_files_in_path_order(stub, as_user, sandbox):
    md = as_user("kernel-user")
    await execute(stub, md, sandbox.id, "import os\nos.makedirs('d', exist_ok=True)\n"
                                        "[open(f'd/{i:02}.txt', 'w').write(str(i)) for i in range(5)]")
    seen, token = [], ""
    while True:
        page = await stub.ListSandboxFiles(sandbox_service_pb2.ListSandboxFilesRequest(
            sandbox_id=sandbox.id, page_size=2, page_token=token, directory="d"), metadata=md)
        seen += [f.path for f in page.files]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"d/{i:02}.txt" for i in range(5)]


async def test_a_crashed_kernel_is_restarted_and_the_result_says_state_was_lost(stub, as_user, sandbox):
    md = as_user("kernel-user")
    await execute(stub, md, sandbox.id, "kept_variable = 1\nopen('survives.txt', 'w').write('x')")
    died = await execute(stub, md, sandbox.id, "import os\nos._exit(3)")
    assert died.result.kernel_died and "fresh kernel" in died.result.note
    after = await execute(stub, md, sandbox.id, "print('kept_variable' in globals(), open('survives.txt').read())")
    assert after.stdout == "False x\n"
    assert after.result.kernel_restarted and "lost" in after.result.note
    again = await execute(stub, md, sandbox.id, "print(1)")
    assert not again.result.kernel_restarted and again.result.note == ""


async def test_one_session_one_sandbox(stub, as_user):
    md = as_user("session-user")
    first = await new_sandbox(stub, md, session_id="thread-1")
    same = await new_sandbox(stub, md, session_id="thread-1")
    other = await new_sandbox(stub, md, session_id="thread-2")
    try:
        assert first.id == same.id and other.id != first.id and first.session_id == "thread-1"
        assert first.status == sandbox_pb2.SANDBOX_STATUS_READY
        # The same session id of another user is another sandbox.
        theirs = await new_sandbox(stub, as_user("someone-else"), session_id="thread-1")
        assert theirs.id != first.id
        await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=theirs.id),
                                 metadata=as_user("someone-else"))
    finally:
        for sandbox_id in {first.id, other.id}:
            await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=sandbox_id), metadata=md)


async def test_pandas_numpy_and_matplotlib_are_the_documented_runtime(stub, as_user, sandbox):
    ran = await execute(stub, as_user("kernel-user"), sandbox.id,
                        "import numpy, pandas, matplotlib, sys\nprint(sys.version_info[:2] >= (3, 11), "
                        "numpy.__version__.split('.')[0] >= '2', bool(pandas.__version__))")
    assert ran.stdout == "True True True\n", ran.result.error.traceback
