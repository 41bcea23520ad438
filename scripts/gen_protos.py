"""Generates the Python code and type stubs for every contract in protos/ (`make protos`).

Output goes to the `parley` client package: `protos/parley/llm/v1/llm_service.proto` becomes
`parley/llm/v1/llm_service_pb2.py` with `_pb2.pyi`, `_pb2_grpc.py` and `_pb2_grpc.pyi` stubs
from mypy-protobuf. tests/protos/test_generated_code.py fails when the committed files drift.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted(PROTOS.rglob("*.proto"))


def _plugin(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the dev extras (`make install`)")
    return found


def generate(out_dir: Path) -> list[Path]:
    """Writes the generated files under `out_dir` (mirroring the package tree); returns them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *[str(p.relative_to(PROTOS)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted(p for p in out_dir.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))
    # Every generated directory is a regular package, so the client installs and type-checks.
    for directory in {p.parent for p in generated}:
        while directory != out_dir:
            (directory / "__init__.py").touch(exist_ok=True)
            directory = directory.parent
    return generated


def generated_in_tree() -> list[Path]:
    return sorted(p for p in (ROOT / "parley").rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main() -> None:
    for stale in generated_in_tree():
        stale.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            target = ROOT / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            init = target.parent / "__init__.py"
            if not init.exists():
                init.touch()
    print(f"generated code for {len(proto_files())} proto files")


if __name__ == "__main__":
    main()
