"""The cluster manifests deploy as written: cluster/ray-cluster.yaml passes Ray's own cluster-config
validation (what `ray up` runs), cluster/rayjob.yaml passes the RayJob CRD schema of the pinned
KubeRay version (vendored in cluster/schemas/) with unknown fields refused, as `kubectl apply`'s
strict field validation does; and both keep token auth on, with the dashboard where its clients
can reach it."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = next((ROOT / "cluster" / "schemas").glob("kuberay-v*-rayjob-v1.schema.json"))


def strict(schema):
    """The CRD's structural schema with unknown fields refused: an object that lists its properties
    and neither says otherwise nor preserves unknown fields gets additionalProperties: false."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def rayjob_validator():
    return jsonschema.Draft7Validator(strict(json.loads(SCHEMA.read_text())))


def rayjob_docs():
    return list(yaml.safe_load_all((ROOT / "cluster" / "rayjob.yaml").read_text()))


def errors(validator, doc):
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc))


def test_rayjob_matches_the_pinned_kuberay_crd(rayjob_validator):
    job = next(d for d in rayjob_docs() if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert errors(rayjob_validator, job) == []


@pytest.mark.parametrize("path, value, expect", [
    (("spec", "rayClusterSpec", "headGroupSpec", "rayStartParam"), {}, "rayStartParam"),        # a typo
    (("spec", "backoffLimit"), "two", "'two' is not of type 'integer'"),
    (("spec", "rayClusterSpec", "authOptions", "mode"), "on", "'on' is not one of"),
    (("spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0, "volumeMount"), [], "volumeMount"),
])
def test_the_schema_check_can_fail(rayjob_validator, path, value, expect):
    job = copy.deepcopy(next(d for d in rayjob_docs() if d["kind"] == "RayJob"))
    node = job
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    assert any(expect in e for e in errors(rayjob_validator, job)), errors(rayjob_validator, job)


def test_rayjob_dashboard_reachable_by_the_submitter_and_token_auth_on():
    docs = rayjob_docs()
    job = next(d for d in docs if d["kind"] == "RayJob")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"
    # KubeRay's submitter pod reaches the dashboard through the head Service, not over loopback
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/node-type": "head"}
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {}}]}]  # this namespace only


def test_rayjob_entrypoint_names_a_job_and_config_that_exist():
    job = next(d for d in rayjob_docs() if d["kind"] == "RayJob")
    words = job["spec"]["entrypoint"].split()
    module = words[words.index("-m") + 1]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    config = words[words.index("--config") + 1]
    from cropi.config import load_config

    load_config(ROOT / config)  # parses and passes every field check


def test_ray_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["head"]["resourcez"] = {}
    with pytest.raises(jsonschema.ValidationError, match="resourcez"):
        validate_config(prepare_config(bad))
    # the launcher reaches the head's dashboard through its SSH tunnel: loopback, token auth on
    head = " ".join(cfg["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["worker_start_ray_commands"] if c.endswith("--disable-usage-stats"))
