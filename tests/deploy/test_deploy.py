"""deploy/: what can be checked without a container engine or a cluster."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import load_settings
from proxy.testing import Fail, FakeUpstream
from tests.helpers import REPO, free_port

DEPLOY = REPO / "deploy"
YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
METRIC = re.compile(r"\bnocp_[a-zA-Z0-9_]+")


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s by (kind, name)."""
    objects = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in load_yaml(path):
            if "kind" in doc and "metadata" in doc:
                objects[doc["kind"], doc["metadata"]["name"]] = doc
    return objects


def nocp_container() -> dict[str, Any]:
    deployment = k8s_objects()["Deployment", "nocp"]
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "nocp"]
    return container


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    """Every YAML file under deploy/ parses and is not empty."""
    assert load_yaml(path)


def test_expected_files_exist() -> None:
    """The image, compose stack, Prometheus, Grafana and Kubernetes files are all there."""
    for name in ("Dockerfile", "docker-compose.yml", "prometheus.yml", "grafana/dashboards/nocp.json",
                 "k8s/configmap.yaml", "k8s/deployment.yaml", "k8s/service.yaml", "k8s/hpa.yaml",
                 "k8s/redis.yaml", "k8s/kustomization.yaml"):  # fmt: skip
        assert (DEPLOY / name).is_file(), name
    kustomization = load_yaml(DEPLOY / "k8s" / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_dockerfile() -> None:
    """The image runs as a non-root user on a slim Python base, with a healthcheck on /healthz."""
    text = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and all(re.fullmatch(r"python:3\.1[1-9]-slim", b.split("@")[0]) for b in bases)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r"^EXPOSE\s+8080\b", text, re.M)
    assert "NOCP_PORT=8080" in text and "NOCP_HOST=0.0.0.0" in text
    healthcheck = re.search(r"^HEALTHCHECK .*?(?<!\\)$", text, re.M | re.S)
    assert healthcheck and "/healthz" in healthcheck.group(0)
    assert re.search(r'^ENTRYPOINT \["nocp"\]', text, re.M)


def test_compose_stack() -> None:
    """Compose runs nocp, Redis, Prometheus (scraping nocp's /metrics) and a provisioned Grafana."""
    compose = load_yaml(DEPLOY / "docker-compose.yml")[0]
    services = compose["services"]
    assert {"nocp", "redis", "prometheus", "grafana"} <= set(services)
    nocp = services["nocp"]
    env = nocp["environment"]
    port, admin_port = int(env["NOCP_PORT"]), int(env["NOCP_SERVER__ADMIN_PORT"])
    assert f"127.0.0.1:{port}:{port}" in nocp["ports"]
    assert env["NOCP_SESSIONS__BACKEND"] == "redis" and "@redis:6379/" in env["NOCP_SESSIONS__REDIS_URL"]
    assert (DEPLOY / nocp["build"]["context"] / nocp["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    ).resolve()

    prometheus = load_yaml(DEPLOY / "prometheus.yml")[0]
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "nocp"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"nocp:{admin_port}"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"] if ":" in v}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"

    grafana = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"] if v.startswith(".")}
    assert (DEPLOY / grafana["/etc/grafana/provisioning"]).is_dir()
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/nocp.yml")[0]["providers"][0]
    assert (DEPLOY / grafana[provider["options"]["path"]] / "nocp.json").is_file()
    datasource = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")[0]["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/nocp.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {datasource["uid"]}


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/nocp.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    return {name for expr in exprs for name in METRIC.findall(expr)}


def exported_names(text: str) -> set[str]:
    """Series names in an exposition: the samples, plus what each declared family will export."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names


async def test_dashboard_uses_only_exported_metrics(fake: FakeUpstream, make_proxy: Any) -> None:
    """Every metric the Grafana dashboard queries is one that /metrics exports after real traffic."""
    proxy = await make_proxy()
    body: Any = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-x", max_retries=0) as client:
        await client.chat.completions.create(**body)
        async for _ in await client.chat.completions.create(**body, stream=True):
            pass
        fake.script(Fail(429))
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(**body)
    await proxy.log_lines(3)
    async with aiohttp.ClientSession() as http:
        for _ in range(250):
            async with http.get(f"{proxy.url}/metrics") as resp:
                text = await resp.text()
            if "nocp_time_to_first_chunk_seconds_count" in text and 'outcome="upstream_error"' in text:
                break
            await asyncio.sleep(0.02)  # records reach the metrics just after the log write
    exported = exported_names(text)
    wanted = dashboard_metric_names()
    assert len(wanted) >= 15
    assert wanted <= exported, sorted(wanted - exported)
    # the histograms really have their series, not just a declaration
    for name in ("nocp_request_duration_seconds", "nocp_upstream_duration_seconds"):
        assert {f"{name}_bucket", f"{name}_sum", f"{name}_count"} <= {
            s.name for f in text_string_to_metric_families(text) for s in f.samples
        }


def test_compose_binds_loopback_and_redis_needs_a_password() -> None:
    """Compose publishes every port on 127.0.0.1 only (the admin port not at all), and Redis
    requires the password that nocp's Redis URL carries."""
    services = load_yaml(DEPLOY / "docker-compose.yml")[0]["services"]
    published = [p for svc in services.values() for p in svc.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published)
    assert not any(p.endswith(":9091") for p in published)
    redis = services["redis"]
    assert "--requirepass" in " ".join(redis["command"]) and "$$REDIS_PASSWORD" in " ".join(redis["command"])
    password = redis["environment"]["REDIS_PASSWORD"]
    assert password.startswith("${NOCP_REDIS_PASSWORD:?")  # compose refuses to start without it
    url = services["nocp"]["environment"]["NOCP_SESSIONS__REDIS_URL"]
    assert url.startswith("redis://:${NOCP_REDIS_PASSWORD:?") and url.endswith("@redis:6379/0")
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])


def test_k8s_redis_password_from_secret() -> None:
    """In Kubernetes, Redis requires a password from the Secret nocp-redis, nocp's Redis URL
    carries the same one, and only nocp pods may reach Redis."""
    objects = k8s_objects()
    (redis,) = objects["Deployment", "nocp-redis"]["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}
    assert refs["REDIS_PASSWORD"] == {"name": "nocp-redis", "key": "password"}
    assert redis["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    env = {e["name"]: e for e in nocp_container()["env"]}
    assert env["NOCP_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == refs["REDIS_PASSWORD"]
    names = list(env)
    assert names.index("NOCP_REDIS_PASSWORD") < names.index("NOCP_SESSIONS__REDIS_URL")  # $(VAR) order
    assert env["NOCP_SESSIONS__REDIS_URL"]["value"].startswith("redis://:$(NOCP_REDIS_PASSWORD)@nocp-redis:")
    policy = objects["NetworkPolicy", "nocp-redis"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "nocp-redis"}
    assert policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "nocp"}


async def test_k8s_probes_and_ports_match_server(tmp_path: Path, fake: FakeUpstream, make_proxy: Any) -> None:
    """The manifests' config loads, its port is the container/Service port, the probes answer 200."""
    objects = k8s_objects()
    container = nocp_container()
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env = {k: v.replace("$(NOCP_REDIS_PASSWORD)", "pw") for k, v in env.items()}
    config = tmp_path / "nocp.yaml"
    config.write_text(objects["ConfigMap", "nocp-config"]["data"]["nocp.yaml"])
    assert env.pop("NOCP_CONFIG").endswith("/nocp.yaml")
    settings = load_settings(config, env=env)
    assert settings.sessions.backend == "redis"
    redis_host = re.match(r"redis://(?:[^@/]*@)?([^:/]+)", settings.sessions.redis_url)
    assert redis_host and ("Service", redis_host.group(1)) in objects

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.server.port
    assert settings.server.host == "0.0.0.0"
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz" and probes["readinessProbe"]["path"] == "/readyz"
    assert all(p["port"] in ("http", settings.server.port) for p in probes.values())
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    annotations = objects["Deployment", "nocp"]["spec"]["template"]["metadata"]["annotations"]
    assert settings.server.admin_port is not None and settings.server.admin_port != settings.server.port
    assert annotations["prometheus.io/port"] == str(settings.server.admin_port) == str(ports["admin"])

    service = objects["Service", "nocp"]  # the admin port stays off the Service
    assert all(p["targetPort"] in ("http", settings.server.port) for p in service["spec"]["ports"])
    hpa = objects["HorizontalPodAutoscaler", "nocp"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "nocp"
    assert hpa["spec"]["minReplicas"] >= 2

    admin_port = free_port()
    proxy = await make_proxy(server={"admin_host": "127.0.0.1", "admin_port": admin_port})
    async with aiohttp.ClientSession() as http:
        for probe in probes.values():
            async with http.get(f"{proxy.url}{probe['path']}") as resp:
                assert resp.status == 200, probe
        async with http.get(f"http://127.0.0.1:{admin_port}{annotations['prometheus.io/path']}") as resp:
            assert resp.status == 200 and "nocp_requests" in await resp.text()


def test_replicas_share_the_retrieval_secret() -> None:
    """Several replicas share one Redis store, so they must key marker ids alike: the k8s pods
    take retrieval.secret from a Secret, not each a generated one."""
    objects = k8s_objects()
    replicas = objects["Deployment", "nocp"]["spec"].get("replicas", 1)
    env = {e["name"]: e for e in nocp_container()["env"]}
    assert replicas > 1
    assert env["NOCP_RETRIEVAL__SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "nocp-redis",
        "key": "retrieval-secret",
    }
