"""deploy/kubernetes against the code: a Deployment (probes, resources, non-root) and a Service
per service, each starting with the settings it needs, HPAs and PDBs for the stateless ones,
and NetworkPolicies that allow exactly the call graph the services' settings configure."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import yaml

from services.runtime.identity import generate_private_key_pem, public_key_pem
from tests.deploy._suite import ROOT, default_port, discovered_services, load_settings, on_the_bootstrap

MANIFESTS = ROOT / "deploy" / "kubernetes"
# Holds per-session kernels in memory: scaled by hand behind session affinity, not by an HPA.
STATEFUL = {"sandbox"}
# The doors: reachable from outside the namespace (their load balancers).
PUBLIC = {"gateway", "rest"}


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document and "kind" in document:
                key = (document["kind"], document["metadata"]["name"])
                assert key not in found, f"{key} defined twice"
                found[key] = {**document, "_file": path.name}
    return found


def of_kind(objects, kind: str) -> dict[str, dict]:
    return {name: obj for (k, name), obj in objects.items() if k == kind}


def deployment(objects, service: str) -> dict:
    return objects[("Deployment", f"parley-{service}")]


def container(objects, service: str) -> dict:
    (only,) = deployment(objects, service)["spec"]["template"]["spec"]["containers"]
    return only


def test_kustomization_applies_every_manifest_but_the_secret_template(objects):
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"secrets.example.yaml"}
    assert all(obj["metadata"].get("namespace", "parley") == "parley" for obj in objects.values()
               if obj["kind"] != "Namespace")


def test_each_service_has_a_deployment_with_probes_resources_and_no_root(objects):
    for service in discovered_services():
        spec = deployment(objects, service)["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        main = container(objects, service)
        assert main["command"] == ["python", "-m", f"services.{service}"]
        port = default_port(service)
        if on_the_bootstrap(service):
            assert {"name": "grpc", "containerPort": port} in main["ports"]
            assert {"name": "metrics", "containerPort": port + 1000} in main["ports"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert main[probe]["grpc"] == {"port": port}, (service, probe)
        else:
            assert main["ports"] == [{"name": "http", "containerPort": port}]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert main[probe]["httpGet"] == {"path": "/healthz", "port": port}, (service, probe)
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(main["resources"][bound]), (service, bound)
        assert main["securityContext"]["allowPrivilegeEscalation"] is False
        service_object = objects[("Service", service)]
        assert service_object["spec"]["selector"] == spec["selector"]["matchLabels"]
        protocol = "grpc" if on_the_bootstrap(service) else "http"
        assert {"name": protocol, "port": port, "targetPort": protocol, "appProtocol": protocol} in \
            service_object["spec"]["ports"]
        assert service_object["spec"]["type"] == ("LoadBalancer" if service in PUBLIC else "ClusterIP"), service


def test_stateless_services_autoscale_and_keep_a_replica_through_disruptions(objects):
    hpas, pdbs = of_kind(objects, "HorizontalPodAutoscaler"), of_kind(objects, "PodDisruptionBudget")
    stateless = [s for s in discovered_services() if s not in STATEFUL]
    assert set(hpas) == {f"parley-{s}" for s in stateless}
    for service in stateless:
        hpa = hpas[f"parley-{service}"]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"parley-{service}"}
        assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
        pdb = pdbs[f"parley-{service}"]["spec"]
        assert pdb["selector"]["matchLabels"] == deployment(objects, service)["spec"]["selector"]["matchLabels"]
        assert pdb["minAvailable"] >= 1
    assert deployment(objects, "sandbox")["spec"]["strategy"]["type"] == "Recreate"


def _environment(objects, service: str, secret_dir: Path) -> dict[str, str]:
    """The container's environment as Kubernetes builds it, with each secret a test value and
    each mounted secret file written under `secret_dir`."""
    private = generate_private_key_pem()
    secret_values = {
        "parley-database": {"admin-url": "postgresql://parley:pw@postgres.parley-data.svc:5432/parley",
                            **{f"{s}-password": "pw" for s in discovered_services()}},
        "parley-identity": {"identity-ed25519.pem": private.decode(),
                            "identity-ed25519.pub.pem": public_key_pem(private).decode()},
        "parley-page-token": {"secret": "s" * 64},
        "parley-vendors": {},
    }
    main = container(objects, service)
    env: dict[str, str] = {}
    for source in main.get("envFrom", []):
        env.update(objects[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for entry in main["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] in secret_values, f"{service} reads unknown secret {ref['name']}"
            value = secret_values[ref["name"]].get(ref["key"])
            assert value is not None or ref.get("optional"), f"{service}: {ref} is missing"
            if value is not None:
                env[entry["name"]] = value
        elif "fieldRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = f"pod-{service}"
    volumes = {v["name"]: v for v in deployment(objects, service)["spec"]["template"]["spec"]["volumes"]}
    for variable, value in list(env.items()):
        if not variable.endswith("_FILE"):
            continue
        path = PurePosixPath(value)
        mount = next((m for m in main["volumeMounts"] if path.is_relative_to(m["mountPath"])), None)
        assert mount is not None and "secret" in volumes[mount["name"]], f"{service}: {variable} is not on a secret volume"
        assert mount.get("readOnly") is True
        secret = volumes[mount["name"]]["secret"]
        item = next(i for i in secret["items"] if i["path"] == str(path.relative_to(mount["mountPath"])))
        local = secret_dir / service / variable
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(secret_values[secret["secretName"]][item["key"]])
        env[variable] = str(local)
    return env


def _call_graph(objects, tmp_path) -> dict[str, set[str]]:
    """Caller → callees, from each service's own settings loaded with its manifest's environment."""
    graph = {}
    for service in discovered_services():
        loaded = load_settings(service, _environment(objects, service, tmp_path))
        assert loaded.host == "0.0.0.0"
        callees = set()
        for callee, target in loaded.targets().items():
            assert target == f"{callee}:{default_port(callee)}", (service, callee, target)
            assert ("Service", callee) in objects
            callees.add(callee)
        graph[service] = callees
    return graph


def test_each_service_starts_with_the_environment_its_manifest_gives_it(objects, tmp_path):
    graph = _call_graph(objects, tmp_path)
    # The DAG of the design, as the code configures it.
    assert graph["gateway"] >= {"llm", "sessions", "files"}
    assert graph["files"] == {"llm"} and graph["sandbox"] == set() and graph["llm"] == set()


def test_network_policies_allow_exactly_the_call_graph(objects, tmp_path):
    policies = of_kind(objects, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    graph = _call_graph(objects, tmp_path)
    services = discovered_services()
    allowed_in: dict[str, set[str]] = {s: set() for s in services}
    allowed_out: dict[str, set[str]] = {s: set() for s in services}
    selected = set()
    for name, policy in policies.items():
        if name == "default-deny":
            continue
        spec = policy["spec"]
        target = spec["podSelector"]["matchLabels"]["parley.dev/service"]
        selected.add(target)
        port = default_port(target)
        for rule in spec.get("ingress", []):
            rule_ports = {p["port"] for p in rule["ports"]}
            if port not in rule_ports:
                assert rule_ports == {port + 1000}, f"{name}: only the metrics port besides gRPC"
                assert all("namespaceSelector" in peer for peer in rule["from"])
                continue
            if "from" not in rule:
                assert target in PUBLIC, f"only the doors may take calls from anywhere, not {target}"
                continue
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, f"{name}: callers are pods of this namespace"
                allowed_in[target].add(peer["podSelector"]["matchLabels"]["parley.dev/service"])
        for rule in spec.get("egress", []):
            for peer in rule["to"]:
                if set(peer) == {"podSelector"}:
                    callee = peer["podSelector"]["matchLabels"]["parley.dev/service"]
                    assert {p["port"] for p in rule["ports"]} == {default_port(callee)}
                    allowed_out[target].add(callee)
    assert selected == set(services)
    callers = {s: {c for c, callees in graph.items() if s in callees} for s in services}
    for service in services:
        if service not in PUBLIC:
            assert allowed_in[service] == callers[service], f"who may call {service}"
        assert allowed_out[service] == graph[service], f"whom {service} may call"
    # The sandbox runs user code: it may reach nothing.
    assert policies["parley-sandbox"]["spec"]["egress"] == []


def test_the_sandbox_pod_may_build_bubblewrap_walls(objects):
    main = container(objects, "sandbox")
    assert main["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    assert main["securityContext"]["procMount"] == "Unmasked"
    assert deployment(objects, "sandbox")["spec"]["template"]["spec"]["hostUsers"] is False
    assert not any("DATABASE" in e["name"] for e in main["env"])
