"""The contracts lint clean and the committed generated code matches them exactly."""

from __future__ import annotations

import importlib
import subprocess

from scripts.gen_protos import ROOT, generate, generated_in_tree, proto_files

BUF = ROOT / "node_modules" / ".bin" / "buf"


def test_buf_lint_passes():
    assert BUF.exists(), "buf is missing: run `make install` (it comes from npm)"
    result = subprocess.run([str(BUF), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_does_not_drift(tmp_path):
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in generate(tmp_path)}
    committed = {p.relative_to(ROOT): p.read_bytes() for p in generated_in_tree()}
    assert sorted(fresh) == sorted(committed), "generated files differ in name: run `make protos`"
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code, run `make protos`: {stale}"


def test_every_service_contract_is_importable_with_its_stub():
    services = {}
    for proto in proto_files():
        module_name = ".".join(proto.relative_to(ROOT / "protos").with_suffix("").parts) + "_pb2"
        module = importlib.import_module(module_name)
        for name, service in module.DESCRIPTOR.services_by_name.items():
            grpc_module = importlib.import_module(module_name + "_grpc")
            assert hasattr(grpc_module, f"{name}Stub")
            services[service.full_name] = [m.name for m in service.methods]
    assert set(services) == {
        "parley.llm.v1.LLMService",
        "parley.sessions.v1.SessionService",
        "parley.files.v1.FileService",
        "parley.assistants.v1.AssistantService",
        "parley.sandbox.v1.SandboxService",
        "parley.gateway.v1.ApiKeyService",
        "parley.runstore.v1.RunStoreService",
        "parley.admin.v1.AdminService",
        "parley.admin.v1.AuditLogService",
        "parley.admin.v1.UserDataService",
    }
    assert {"Generate", "StreamGenerate", "Embed", "ListModels", "CountTokens", "GetUsage"} <= set(services["parley.llm.v1.LLMService"])
    assert {"UploadFile", "SearchVectorStore", "DownloadFile"} <= set(services["parley.files.v1.FileService"])
    assert {"StreamRun", "WatchRun", "SubmitToolOutputs", "CancelRun"} <= set(services["parley.assistants.v1.AssistantService"])
    assert {"ExportSession", "SubmitFeedback", "ListMessages"} <= set(services["parley.sessions.v1.SessionService"])
    assert {"ListAuditEvents", "ExportAuditEvents", "DeleteUserData"} <= set(services["parley.admin.v1.AdminService"])
    assert {"CreateRun", "UpdateRun", "GetActiveRun", "AppendRunEvents", "ListRunEvents"} <= set(
        services["parley.runstore.v1.RunStoreService"]
    )
