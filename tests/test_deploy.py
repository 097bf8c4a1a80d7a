"""deploy/k8s (issue 15): valid Kubernetes objects, wired to each other, the generated
ConfigMaps equal to a fresh generation.

- Every manifest validates offline against the Kubernetes schemas that
  ``kubernetes-validate`` bundles (strict: unknown fields are errors).
- The StatefulSet's pods are the map's nodes: replicas = nodes, the node name is the
  pod name (downward API), the cluster map and the data volume are mounted where the
  flags point, health probes are grpc.health.v1; Services, the PDB and HAProxy select
  the right pods and ports.
- cluster-map.yaml and haproxy-config.yaml are what ``dispatcher cluster k8s`` writes
  for those replicas and that namespace, and HAProxy accepts the config.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from server_fixtures import ROOT

from dispatcher.cli import main
from dispatcher.cluster import dump_map, load_map
from dispatcher.cluster_tools import HAPROXY_CONFIG, PARTITIONS_MAP, find_haproxy, k8s_configmaps, k8s_map

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests are for (grpc probes are GA since 1.27)
GENERATED = ("cluster-map.yaml", "haproxy-config.yaml")


def load_all() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, over every file of deploy/k8s."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{path.name}: {key} twice"
            objects[key] = doc
    return objects


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return load_all()


def test_every_manifest_is_a_valid_kubernetes_object(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert set(objects) == {
        ("Namespace", "dispatch"),
        ("StatefulSet", "dispatch"),
        ("Service", "dispatch"),
        ("PodDisruptionBudget", "dispatch"),
        ("ConfigMap", "dispatch-cluster-map"),
        ("ConfigMap", "dispatch-haproxy"),
        ("Deployment", "dispatch-haproxy"),
        ("Service", "dispatch-haproxy"),
    }
    for key, obj in objects.items():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        if key[0] != "Namespace":
            assert obj["metadata"]["namespace"] == "dispatch", key
    # The validation is real: a misspelt field or a wrong type is refused.
    bad = yaml.safe_load((K8S / "pdb.yaml").read_text())
    bad["spec"]["maxUnavailabel"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = yaml.safe_load((K8S / "statefulset.yaml").read_text())
    bad["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_the_generated_configmaps_equal_a_fresh_generation(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    replicas = objects[("StatefulSet", "dispatch")]["spec"]["replicas"]
    namespace = objects[("StatefulSet", "dispatch")]["metadata"]["namespace"]
    fresh = k8s_configmaps(replicas, namespace)
    assert set(fresh) == set(GENERATED)
    for name in GENERATED:
        assert (K8S / name).read_text() == fresh[name], (
            f"deploy/k8s/{name} is stale: run `dispatcher cluster k8s --nodes {replicas} --namespace {namespace}`"
        )
    # The command writes the same files, and says so when replicas and --nodes disagree.
    out = tmp_path / "k8s"
    assert main(["cluster", "k8s", "--nodes", str(replicas), "--namespace", namespace, "--out", str(out)]) == 0
    assert {p.name: p.read_text() for p in out.iterdir()} == fresh
    shutil.copy(K8S / "statefulset.yaml", out)
    assert main(["cluster", "k8s", "--nodes", str(replicas + 1), "--out", str(out)]) == 1
    # After a rebalance: the same map with a newer epoch, and `cluster map --k8s` writes it as TOML
    # (what `cluster rebalance --to-map` takes).
    later = tmp_path / "later"
    assert main(["cluster", "k8s", "--nodes", "5", "--epoch", "2", "--out", str(later)]) == 0
    assert "--nodes 5 --namespace dispatch --epoch 2" in (later / "cluster-map.yaml").read_text()
    toml = tmp_path / "new.toml"
    assert main(["cluster", "map", "--k8s", "--nodes", "5", "--epoch", "2", "--out", str(toml)]) == 0
    assert load_map(toml) == k8s_map(5, epoch=2) and load_map(toml).epoch == 2
    assert dump_map(load_map(toml)) in (later / "cluster-map.yaml").read_text().replace("\n    ", "\n")


def test_the_cluster_map_names_the_statefulset_pods(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    sts = objects[("StatefulSet", "dispatch")]
    (tmp_path / "cluster.toml").write_text(objects[("ConfigMap", "dispatch-cluster-map")]["data"]["cluster.toml"])
    cluster = load_map(tmp_path / "cluster.toml")
    assert cluster == k8s_map(sts["spec"]["replicas"])
    headless = objects[("Service", "dispatch")]
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"] and headless["spec"]["clusterIP"] == "None"
    grpc_port = next(p for p in headless["spec"]["ports"] if p["name"] == "grpc")["port"]
    for i, node in enumerate(cluster.nodes):  # dispatch-i.<service>.<namespace>.svc.cluster.local:<port>
        assert node.name == f"{sts['metadata']['name']}-{i}"
        assert node.address == f"{node.name}.dispatch.{sts['metadata']['namespace']}.svc.cluster.local:{grpc_port}"


def _flags(container: dict[str, Any]) -> dict[str, str]:
    return dict(a.removeprefix("--").partition("=")[::2] for a in container["args"] if a.startswith("--"))


def _mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mount path -> the pod's volume (or the StatefulSet's claim template name)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {m["mountPath"]: volumes.get(m["name"], {"claim": m["name"]}) for m in container["volumeMounts"]}


def test_a_node_pod_is_its_node_with_its_volume_probes_and_limits(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    sts = objects[("StatefulSet", "dispatch")]
    pod = sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["containers"]
    assert container["args"][0] == "serve"
    flags = _flags(container)
    env = {e["name"]: e for e in container["env"]}
    # The node name is the pod name: dispatch-0, dispatch-1, ...
    assert flags["node"] == "$(POD_NAME)"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    mounts = _mounts(pod, container)
    cluster_dir, _, cluster_file = flags["cluster-map"].rpartition("/")
    assert mounts[cluster_dir] == {"name": "cluster-map", "configMap": {"name": "dispatch-cluster-map"}}
    assert cluster_file in objects[("ConfigMap", "dispatch-cluster-map")]["data"]
    # One PVC per node, mounted above the data dir; the dir is created on a new volume.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    data_mount = next(path for path, v in mounts.items() if v.get("claim") == claim["metadata"]["name"])
    assert flags["data-dir"].startswith(data_mount + "/") and "create-data-dir" in flags
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    # grpc.health.v1 probes on the gRPC port: readiness on "" (NOT_SERVING while the journal
    # cannot write), liveness and start-up on dispatch.v1.Admin (SERVING then).
    port = int(flags["port"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"] == port
    assert container["readinessProbe"]["grpc"] == {"port": port}
    assert container["livenessProbe"]["grpc"] == {"port": port, "service": "dispatch.v1.Admin"}
    assert container["startupProbe"]["grpc"]["port"] == port
    assert flags["host"] == "0.0.0.0" and "insecure" in flags and "auth-policy" in flags and "no-auth" not in flags
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    pdb = objects[("PodDisruptionBudget", "dispatch")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() and pdb["spec"]["maxUnavailable"] == 1
    assert objects[("Service", "dispatch")]["spec"]["selector"].items() <= labels.items()


def test_haproxy_runs_the_generated_config_which_haproxy_accepts(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    deployment = objects[("Deployment", "dispatch-haproxy")]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = pod["containers"]
    config_path = container["command"][container["command"].index("-f") + 1]
    config_dir, _, config_file = config_path.rpartition("/")
    assert _mounts(pod, container)[config_dir] == {"name": "config", "configMap": {"name": "dispatch-haproxy"}}
    data = objects[("ConfigMap", "dispatch-haproxy")]["data"]
    assert config_file == HAPROXY_CONFIG and set(data) == {HAPROXY_CONFIG, PARTITIONS_MAP}
    service = objects[("Service", "dispatch-haproxy")]
    assert service["spec"]["selector"].items() <= labels.items()
    port = next(p for p in container["ports"] if p["name"] == "grpc")["containerPort"]
    assert f"bind :{port} proto h2" in data[HAPROXY_CONFIG]
    assert next(p for p in service["spec"]["ports"] if p["name"] == "grpc")["targetPort"] == "grpc"
    # The config as mounted: HAProxy accepts it (the node names do not resolve here: warnings only).
    haproxy = find_haproxy()
    assert haproxy is not None, "haproxy is not installed: `make test` installs it"
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    checked = subprocess.run([haproxy, "-c", "-f", str(tmp_path / HAPROXY_CONFIG)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    cluster_toml = tomllib.loads(objects[("ConfigMap", "dispatch-cluster-map")]["data"]["cluster.toml"])
    assert len(data[PARTITIONS_MAP].splitlines()) == cluster_toml["partitions"]
