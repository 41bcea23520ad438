"""docker-compose.yml and the Dockerfile against the code: every service is there, starts with
the settings it needs (loaded here by the services' own settings loaders), is health-checked
over grpc.health.v1, waits for what it calls, and only the public doors are published."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.runtime.config import ConfigError
from tests.deploy._suite import ROOT, discovered_services, load_settings, on_the_bootstrap

COMPOSE_FILE = ROOT / "docker-compose.yml"
EXAMPLE_ENV = ROOT / "deploy" / "compose" / "example.env"
INFRASTRUCTURE = {"postgres", "redis", "jaeger", "prometheus", "grafana", "secrets-init"}
# What may be reachable from the host, and on which interface.
PUBLISHED = {"gateway": ["50051:50051"], "rest": ["8080:8080"], "jaeger": ["127.0.0.1:16686:16686"], "prometheus": ["127.0.0.1:9090:9090"],
             "grafana": ["127.0.0.1:3000:3000"]}

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`."""

    def substitute(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name, "")
        if value:
            return value
        if op == ":?":
            raise ValueError(f"required variable {name} is missing: {arg}")
        return arg if op == ":-" else ""

    return _VARIABLE.sub(substitute, text)


def load_compose(env: dict[str, str]) -> dict:
    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), env))


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(read_env_file(EXAMPLE_ENV))


@pytest.fixture(scope="module")
def parley_services(compose) -> dict[str, dict]:
    return {name: spec for name, spec in compose["services"].items() if name not in INFRASTRUCTURE}


def container_env(spec: dict) -> dict[str, str]:
    return {name: "" if value is None else str(value) for name, value in (spec.get("environment") or {}).items()}


def mounts(spec: dict) -> list[tuple[str, PurePosixPath, bool]]:
    """(volume, path in the container, read-only) for each volume of a service."""
    found = []
    for entry in spec.get("volumes") or []:
        source, target, *mode = entry.split(":")
        found.append((source, PurePosixPath(target), bool(mode) and mode[0] == "ro"))
    return found


def secrets_volume(compose: dict) -> tuple[str, PurePosixPath]:
    init = compose["services"]["secrets-init"]
    (volume, path, _), = mounts(init)
    assert init["command"] == ["parley-init-secrets", str(path)]
    return volume, path


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory) -> Path:
    """What `secrets-init` writes, made by the same script."""
    directory = tmp_path_factory.mktemp("parley-secrets")
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "init_secrets.py"), str(directory)],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    return directory


def test_every_service_of_the_code_runs_from_the_one_image(compose, parley_services):
    services = discovered_services()
    assert services, "no services/*/__main__.py found"
    assert sorted(parley_services) == services
    images = {spec["image"] for spec in parley_services.values()} | {compose["services"]["secrets-init"]["image"]}
    assert len(images) == 1
    for name, spec in parley_services.items():
        assert spec["command"] == ["python", "-m", f"services.{name}"]
        assert spec["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert {"postgres", "redis", "jaeger", "prometheus", "grafana"} <= set(compose["services"])
    assert "pgvector" in compose["services"]["postgres"]["image"]
    assert compose["services"]["jaeger"]["image"].startswith("jaegertracing/jaeger:2.")


def test_secrets_init_creates_the_shared_secrets_once(secrets_dir):
    before = {path.name: path.read_bytes() for path in secrets_dir.iterdir()}
    assert set(before) == {"identity-ed25519.pem", "identity-ed25519.pub.pem", "page-token-secret"}
    assert b"PRIVATE KEY" in before["identity-ed25519.pem"] and b"PUBLIC KEY" in before["identity-ed25519.pub.pem"]
    again = subprocess.run([sys.executable, str(ROOT / "deploy" / "init_secrets.py"), str(secrets_dir)],
                           capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert again.returncode == 0 and "all present" in again.stdout
    assert {path.name: path.read_bytes() for path in secrets_dir.iterdir()} == before


def test_secrets_init_keeps_a_public_key_bundle_of_a_rotation_and_mends_a_wrong_one(tmp_path):
    """During an identity key rotation the public key file trusts the old and the new key; a
    restart of secrets-init must not cut it back to one (backends would refuse the other)."""
    from services.runtime.identity import generate_private_key_pem, public_key_pem

    def init() -> None:
        result = subprocess.run([sys.executable, str(ROOT / "deploy" / "init_secrets.py"), str(tmp_path)],
                                capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr

    init()
    current = (tmp_path / "identity-ed25519.pub.pem").read_bytes()
    bundle = public_key_pem(generate_private_key_pem()) + current
    (tmp_path / "identity-ed25519.pub.pem").write_bytes(bundle)
    init()
    assert (tmp_path / "identity-ed25519.pub.pem").read_bytes() == bundle
    (tmp_path / "identity-ed25519.pub.pem").write_bytes(public_key_pem(generate_private_key_pem()))
    init()
    assert (tmp_path / "identity-ed25519.pub.pem").read_bytes() == current


def _env_with_local_secrets(compose: dict, name: str, spec: dict, secrets_dir: Path) -> dict[str, str]:
    """The container's environment, each `*_FILE` pointing at the local copy of the file — which
    must lie on the secrets volume that this container mounts read-only."""
    volume, _ = secrets_volume(compose)
    env = container_env(spec)
    for variable, value in list(env.items()):
        if not variable.endswith("_FILE"):
            continue
        path = PurePosixPath(value)
        on = [(v, target) for v, target, read_only in mounts(spec) if v == volume and read_only and path.is_relative_to(target)]
        assert on, f"{name}: {variable}={value} is not on the read-only secrets volume {volume}"
        env[variable] = str(secrets_dir / path.relative_to(on[0][1]))
    return env


def test_each_service_starts_with_the_environment_compose_gives_it(compose, parley_services, secrets_dir):
    for name, spec in parley_services.items():
        env = _env_with_local_secrets(compose, name, spec, secrets_dir)
        loaded = load_settings(name, env)  # raises ConfigError naming a missing or bad variable
        assert loaded.host == "0.0.0.0", name
        settings = loaded.settings
        if settings is not None and hasattr(settings, "admin_url"):
            # Never the embedded server inside a container: the compose PostgreSQL, with a role password.
            assert settings.admin_url and "@postgres:5432/" in settings.admin_url, name
            assert settings.role_password, f"{name} needs PARLEY_{name.upper()}_DATABASE_PASSWORD"
            assert "postgres" in spec["depends_on"], name
        else:
            assert "PARLEY_DATABASE_URL" not in env, f"{name} has no schema: it must not get the admin URL"
        if settings is not None and hasattr(settings, "identity_private_key"):
            # It signs identities for its own calls (the files worker and runs call as their user).
            assert settings.identity_private_key and b"PRIVATE KEY" in settings.identity_private_key, name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317", name


def test_without_the_shared_secrets_a_guarded_service_refuses_to_start(compose, parley_services, secrets_dir):
    env = _env_with_local_secrets(compose, "sessions", parley_services["sessions"], secrets_dir)
    del env["PARLEY_IDENTITY_PUBLIC_KEY_FILE"]
    with pytest.raises(ConfigError, match="PARLEY_IDENTITY_PUBLIC_KEY"):
        load_settings("sessions", env)


def test_every_call_goes_to_a_healthy_dependency(compose, parley_services, secrets_dir):
    for name, spec in parley_services.items():
        loaded = load_settings(name, _env_with_local_secrets(compose, name, spec, secrets_dir))
        for callee, target in loaded.targets().items():
            host, _, port = target.rpartition(":")
            assert host == callee and host in parley_services, f"{name} calls {callee} at {target}"
            callee_port = load_settings(callee, _env_with_local_secrets(
                compose, callee, parley_services[callee], secrets_dir)).port
            assert int(port) == callee_port, f"{name} calls {callee} on {port}, it listens on {callee_port}"
            assert spec["depends_on"][callee] == {"condition": "service_healthy"}, f"{name} must wait for {callee}"
        if any(volume == secrets_volume(compose)[0] for volume, _, _ in mounts(spec)):
            assert spec["depends_on"]["secrets-init"] == {"condition": "service_completed_successfully"}, name
        for dependency, condition in spec["depends_on"].items():
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"
            if dependency not in ("secrets-init", "jaeger"):
                assert condition == {"condition": "service_healthy"}, (name, dependency)
                assert "healthcheck" in compose["services"][dependency], f"{dependency} has no healthcheck"


def test_healthchecks_ask_grpc_health_on_the_service_port(parley_services):
    for name, spec in parley_services.items():
        port = container_env(spec)[f"PARLEY_{name.upper()}_PORT"]
        if not on_the_bootstrap(name):  # an HTTP edge: its /healthz
            assert spec["healthcheck"]["test"] == ["CMD", "grpc-health", f"http://127.0.0.1:{port}/healthz"], name
            continue
        assert spec["healthcheck"]["test"] == ["CMD", "grpc-health", f"127.0.0.1:{port}"], name
        assert str(int(port) + 1000) in spec["expose"] and port in spec["expose"] + [p.split(":")[-1] for p in spec.get("ports", [])]


@pytest.fixture
def health_server():
    """A real gRPC server with the standard health servicer, on a free port."""
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def _probe(port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py"), f"127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=30)


def test_the_healthcheck_command_tells_serving_from_not(health_server):
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    serving = _probe(port)
    assert serving.returncode == 0 and "SERVING" in serving.stdout
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert _probe(port).returncode == 1


def test_the_healthcheck_asks_an_http_edge_for_its_healthz():
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        ok = subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py"), f"{base}/healthz"],
                            capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and "HTTP 200" in ok.stdout
        failing = subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py"), f"{base}/other"],
                                 capture_output=True, text=True, timeout=30)
        assert failing.returncode == 1
    finally:
        server.shutdown()


def test_the_healthcheck_fails_when_nothing_listens(health_server):
    _, port = health_server
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    refused = _probe(free)
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr


def test_only_the_public_doors_are_published(compose):
    published = {name: spec["ports"] for name, spec in compose["services"].items() if spec.get("ports")}
    assert published == PUBLISHED


def test_the_sandbox_may_build_its_walls_and_holds_no_database_credentials(parley_services):
    sandbox = parley_services["sandbox"]
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= set(sandbox["security_opt"])
    assert not any("DATABASE" in variable or "REDIS" in variable for variable in container_env(sandbox))
    assert container_env(sandbox)["PARLEY_SANDBOX_RUNTIME"] == _dockerfile_env()["PARLEY_SANDBOX_RUNTIME"]


def test_a_missing_password_stops_compose_with_its_name():
    env = read_env_file(EXAMPLE_ENV)
    del env["PARLEY_FILES_DATABASE_PASSWORD"]
    with pytest.raises(ValueError, match="PARLEY_FILES_DATABASE_PASSWORD"):
        load_compose(env)


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _dockerfile_env() -> dict[str, str]:
    runtime = _dockerfile().split("AS runtime", 1)[1]
    block = re.search(r"^ENV (.+?)(?<!\\)$", runtime, re.M | re.S).group(1)
    return dict(re.findall(r"([A-Z_]+)=(\S+)", block))


def test_the_dockerfile_is_multi_stage_non_root_and_brings_the_sandbox_walls():
    text = _dockerfile()
    stages = re.findall(r"^FROM \S+ AS (\S+)", text, re.M)
    assert len(stages) >= 2 and stages[-1] == "runtime"
    runtime = text.split("AS runtime", 1)[1]
    user = re.findall(r"^USER (\S+)", runtime, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert "bubblewrap" in runtime and "libseccomp" in runtime
    # Everything the compose commands call is copied into the image.
    for script in ("healthcheck.py", "init_secrets.py"):
        assert f"COPY deploy/{script}" in runtime
    env = _dockerfile_env()
    assert env["PARLEY_HOST"] == "0.0.0.0" and "/opt/parley/bin" in env["PATH"]
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed (make install)")
def test_docker_compose_itself_accepts_the_file(compose, tmp_path):
    result = subprocess.run(["docker-compose", "--env-file", str(EXAMPLE_ENV), "-f", str(COMPOSE_FILE), "config"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(compose["services"])
    for name, spec in compose["services"].items():
        assert container_env(resolved["services"][name]) == container_env(spec), name
    missing = tmp_path / "missing.env"
    missing.write_text(EXAMPLE_ENV.read_text().replace("PARLEY_POSTGRES_PASSWORD=", "#"))
    refused = subprocess.run(["docker-compose", "--env-file", str(missing), "-f", str(COMPOSE_FILE), "config"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120,
                             env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert refused.returncode != 0 and "PARLEY_POSTGRES_PASSWORD" in refused.stderr


def test_prometheus_scrapes_each_service_on_the_metrics_port_it_opens(compose, parley_services):
    from services.runtime.metrics import metrics_port
    from tests.deploy._suite import environment

    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    scraped = {entry["labels"]["service"]: entry["targets"] for entry in job["static_configs"]}
    bootstrapped = {name: spec for name, spec in parley_services.items() if on_the_bootstrap(name)}
    assert set(scraped) == set(bootstrapped)
    for name, spec in bootstrapped.items():
        with environment(container_env(spec)):
            port = metrics_port(name)
        assert scraped[name] == [f"{name}:{port}"], name
        assert str(port) in spec["expose"], name
    prometheus = compose["services"]["prometheus"]
    mounted = {str(target): source for source, target, _ in mounts(prometheus)}
    assert mounted["/etc/prometheus/rules"] == "./deploy/prometheus/rules"
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (make install)")
def test_promtool_accepts_the_compose_prometheus_config():
    result = subprocess.run(["promtool", "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
