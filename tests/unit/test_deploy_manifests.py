"""deploy/kubernetes, validated offline against the Kubernetes schemas (kubernetes-validate).

Each kustomization is rendered here the way kustomize would for what it uses (resources, and
strategic-merge patches keyed by kind/name, lists of named items merged by name), then every
object is validated strictly, the embedded authsidecar config is loaded by our own settings
loader, and the security and probe invariants the README promises are asserted.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from sidecar.config import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"
KUSTOMIZATIONS = ["base", "overlays/redis"]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list):
        if all(isinstance(i, dict) and "name" in i for i in base + patch):
            merged = {item["name"]: item for item in base}
            for item in patch:
                name = item["name"]
                merged[name] = _merge(merged[name], item) if name in merged else item
            return list(merged.values())
    return copy.deepcopy(patch)


def _render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            objects.extend(_render(path))
        else:
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch_entry in kustomization.get("patches", []):
        patch = yaml.safe_load((directory / patch_entry["path"]).read_text())
        key = (patch["kind"], patch["metadata"]["name"])
        index = next(i for i, o in enumerate(objects) if (o["kind"], o["metadata"]["name"]) == key)
        objects[index] = _merge(objects[index], patch)
    return objects


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schema(name: str) -> None:
    objects = _render(DEPLOY / name)
    assert {o["kind"] for o in objects} == {"ConfigMap", "Deployment"}
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_embedded_config_loads_and_matches_the_probes(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = _render(DEPLOY / name)
    config = tmp_path / "authsidecar.yaml"
    config.write_text(_one(objects, "ConfigMap")["data"]["authsidecar.yaml"])
    for key in [k for k in os.environ if k.startswith("AUTHSIDECAR_")]:
        monkeypatch.delenv(key)
    settings = load_settings(config)
    assert settings.keys.dev_generate is False
    health_port = int(settings.listen.health_tcp.rpartition(":")[2])
    sidecar = _one(objects, "Deployment")["spec"]["template"]["spec"]["initContainers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["grpc"]["port"] == health_port
    if name == "overlays/redis":
        assert settings.store.backend == "redis"
        env = {e["name"] for e in sidecar["env"]}
        assert "AUTHSIDECAR_STORE__REDIS_URL" in env
        assert _one(objects, "Deployment")["spec"]["replicas"] > 1


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_pods_are_locked_down_and_share_the_socket(name: str) -> None:
    pod = _one(_render(DEPLOY / name), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "limits" in container["resources"] and "requests" in container["resources"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["authsidecar-socket"] == "/run/authsidecar"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["authsidecar-socket"]
    assert volumes["authsidecar-keys"]["secret"]["secretName"] == "authsidecar-keys"


def test_the_redis_overlay_states_the_persistence_production_needs() -> None:
    """Issue 13: a Redis without persistence loses every family on restart; the overlay
    must say what to run, and the operations guide must explain each choice's risk."""
    overlay = DEPLOY / "overlays" / "redis"
    text = (overlay / "kustomization.yaml").read_text()
    for needed in ("appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"):
        assert needed in text, needed
    guide = (DEPLOY.parents[1] / "docs" / "operations.md").read_text()
    assert "## Redis persistence" in guide
    for mode in ("aof-always", "aof-everysec", "aof-no", "rdb", "none", "unknown"):
        assert f"`{mode}`" in guide, mode
