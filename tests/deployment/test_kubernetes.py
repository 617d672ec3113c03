"""Static checks of the Kubernetes manifests in deploy/kubernetes (no cluster is needed)."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
SECRET_VARIABLES = {"POSTGRES_URL", "PATIENT_API_KEYS", "CLIENT_REGISTRY_TOKEN"}
# Names that hold credentials wherever they appear in an env list.
SECRET_NAME = re.compile(r"(PASSWORD|TOKEN|SECRET|API_KEYS?|POSTGRES_URL)$")

Manifest = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.y*ml") if p.name != "kustomization.yaml")


@functools.cache
def load_all() -> list[Manifest]:
    docs: list[Manifest] = []
    for path in manifest_files():
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def one(kind: str, name: str | None = None) -> Manifest:
    found = [
        doc
        for doc in load_all()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kustomization() -> Manifest:
    data: Manifest = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    return data


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Manifest) -> Manifest:
    containers: list[Manifest] = pod_spec(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: Manifest) -> dict[str, Manifest]:
    return {entry["name"]: entry for entry in c.get("env", [])}


def container_port(c: Manifest, port: int | str) -> int:
    """The container port a probe or Service names, by number or by port name."""
    for declared in c["ports"]:
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    raise AssertionError(f"port {port!r} is not a port of container {c['name']}")


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile sets no numeric USER"
    return int(users[-1])


def workloads() -> list[Manifest]:
    return [one("Deployment", "fhir-server"), one("Job", "fhir-server-migrate")]


def test_kustomization_lists_every_manifest_in_the_directory() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed)), "a manifest is listed twice"
    assert set(listed) == {p.name for p in manifest_files()}
    assert kustomization()["namespace"] == "fhir"


def test_every_object_is_in_the_namespace_of_the_kustomization() -> None:
    namespace = kustomization()["namespace"]
    for doc in load_all():
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace
        else:
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]


def test_the_deployment_serves_with_readiness_on_readyz_at_the_container_port() -> None:
    deployment = one("Deployment", "fhir-server")
    assert deployment["spec"]["replicas"] == 2
    server = container(deployment)
    assert server["command"] == ["fhir-server", "serve"]
    env = env_of(server)
    assert env["HOST"]["value"] == "0.0.0.0"  # noqa: S104 (the container listens on every interface)
    assert env["FHIR_MIGRATE_ON_START"]["value"] == "false"
    port = int(env["PORT"]["value"])

    readiness = server["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert container_port(server, readiness["port"]) == port
    liveness = server["livenessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert container_port(server, liveness["port"]) == port


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_secrets_come_from_secret_refs_never_literals(kind: str) -> None:
    workload = one(kind)
    env = env_of(container(workload))
    assert "POSTGRES_URL" in env
    for name, entry in env.items():
        if name in SECRET_VARIABLES or SECRET_NAME.search(name):
            assert "value" not in entry, f"{kind} sets {name} as a literal"
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"]


def test_no_secret_values_in_the_directory() -> None:
    config = one("ConfigMap", "fhir-server-config")
    assert not SECRET_VARIABLES & set(config["data"]), "a secret is in the ConfigMap"
    assert not [doc for doc in load_all() if doc["kind"] == "Secret"], "Secrets are made by hand"
    for path in manifest_files():
        # a URL carrying a password
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", path.read_text()), path.name


def test_the_settings_configmap_is_the_one_the_server_reads() -> None:
    server = container(one("Deployment", "fhir-server"))
    sources = [source["configMapRef"]["name"] for source in server["envFrom"]]
    assert sources == [one("ConfigMap")["metadata"]["name"]]


def test_the_job_migrates_with_the_same_image_and_database_secret() -> None:
    deployment, job = one("Deployment", "fhir-server"), one("Job", "fhir-server-migrate")
    server, migrate = container(deployment), container(job)
    assert migrate["command"] == ["fhir-server", "migrate"]
    assert migrate["image"] == server["image"]
    assert env_of(migrate)["POSTGRES_URL"] == env_of(server)["POSTGRES_URL"]
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert pod_spec(job)["restartPolicy"] in {"Never", "OnFailure"}
    # the release sets one image for both through the kustomization's images entry
    image_names = {entry["name"] for entry in kustomization()["images"]}
    assert server["image"].split(":")[0].split("@")[0] in image_names


def test_the_service_targets_the_server_pods_and_port() -> None:
    deployment, job, service = (
        one("Deployment", "fhir-server"),
        one("Job", "fhir-server-migrate"),
        one("Service", "fhir-server"),
    )
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # the migration pods are not endpoints of the Service
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    server = container(deployment)
    assert container_port(server, port["targetPort"]) == int(env_of(server)["PORT"]["value"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container_port(server, port["targetPort"])


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_run_hardened_as_the_image_user(kind: str) -> None:
    workload = one(kind)
    spec, c = pod_spec(workload), container(workload)
    uid = dockerfile_uid()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == uid
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    account = one("ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False

    security = c["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security.get("runAsUser", uid) == uid
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["resources"]["requests"] and c["resources"]["limits"]

    # the only writable paths are emptyDirs: the data directory and /tmp
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    data_dir = env_of(c)["FHIR_DATA_DIR"]["value"]
    assert set(mounts) == {data_dir, "/tmp"}
    assert all("emptyDir" in volumes[name] for name in mounts.values())


def test_disruption_budget_and_network_policy_cover_the_server_pods() -> None:
    pod_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    budget = one("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["minAvailable"] >= 1
    policy = one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    job_labels = one("Job")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= job_labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    port = int(env_of(container(one("Deployment")))["PORT"]["value"])
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {port}


def test_accepted_checkov_findings_are_documented() -> None:
    doc = (ROOT / "docs" / "infrastructure.md").read_text()
    for workload in workloads():
        annotations = workload["metadata"].get("annotations", {})
        for key, value in annotations.items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert reason.strip(), f"{key} gives no reason"
                assert f"`{check}`" in doc, f"{check} is not in docs/infrastructure.md"
