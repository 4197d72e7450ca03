"""ops/k8s/rayjob.yaml is a KubeRay RayJob (ray.io/v1) whose pod templates are valid Kubernetes
and whose cluster fits the training command it runs.

No package on PyPI ships KubeRay's CRD, so the RayJob levels are checked against the schema below,
written from KubeRay's v1 API reference (RayJobSpec, RayClusterSpec, HeadGroupSpec,
WorkerGroupSpec: field names, types and required fields; unknown fields rejected, as the API
server prunes them). The pod templates are checked against Kubernetes' own strict PodTemplate
schema (the `kubernetes-validate` package). The entrypoint itself runs through `--dry-run` in
tests/test_cli_commands.py."""
from __future__ import annotations

import copy
import shlex

import jsonschema
import pytest
import yaml

from conftest import REPO

STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
INT = {"type": "integer", "minimum": 0}
OBJ = {"type": "object"}
POD_TEMPLATE = {"type": "object", "required": ["spec"]}  # checked in full by Kubernetes' schema below
HEAD_GROUP = {
    "type": "object", "additionalProperties": False, "required": ["template"],
    "properties": {"template": POD_TEMPLATE, "rayStartParams": STR_MAP, "serviceType": {"type": "string"},
                   "headService": OBJ, "enableIngress": {"type": "boolean"}, "labels": STR_MAP,
                   "resources": STR_MAP},
}
WORKER_GROUP = {
    "type": "object", "additionalProperties": False, "required": ["groupName", "minReplicas", "maxReplicas", "template"],
    "properties": {"groupName": {"type": "string", "minLength": 1}, "replicas": INT, "minReplicas": INT,
                   "maxReplicas": INT, "idleTimeoutSeconds": INT, "numOfHosts": INT, "suspend": {"type": "boolean"},
                   "rayStartParams": STR_MAP, "template": POD_TEMPLATE, "scaleStrategy": OBJ, "labels": STR_MAP,
                   "resources": STR_MAP},
}
CLUSTER = {
    "type": "object", "additionalProperties": False, "required": ["headGroupSpec"],
    "properties": {"headGroupSpec": HEAD_GROUP, "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
                   "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
                   "autoscalerOptions": OBJ, "headServiceAnnotations": STR_MAP, "suspend": {"type": "boolean"},
                   "gcsFaultToleranceOptions": OBJ, "managedBy": {"type": "string"}},
}
RAYJOB_V1 = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["entrypoint", "rayClusterSpec"],
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1}, "rayClusterSpec": CLUSTER,
                "shutdownAfterJobFinishes": {"type": "boolean"}, "ttlSecondsAfterFinished": INT,
                "activeDeadlineSeconds": INT, "backoffLimit": INT, "runtimeEnvYAML": {"type": "string"},
                "jobId": {"type": "string"}, "metadata": STR_MAP, "clusterSelector": STR_MAP,
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "submitterPodTemplate": POD_TEMPLATE, "suspend": {"type": "boolean"},
                "entrypointNumCpus": {"type": "number"}, "entrypointNumGpus": {"type": "number"},
                "entrypointResources": {"type": "string"}, "deletionStrategy": OBJ,
            },
        },
    },
}


def manifest() -> dict:
    return yaml.safe_load((REPO / "ops/k8s/rayjob.yaml").read_text())


def pod_templates(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]


def validate_pod_template(template: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                  "template": template}, kubernetes_validate.latest_version(), strict=True)


def test_manifest_matches_the_rayjob_v1_schema_and_kubernetes_pod_templates():
    job = manifest()
    jsonschema.validate(job, RAYJOB_V1)
    for template in pod_templates(job):
        validate_pod_template(template)


@pytest.mark.parametrize("path, value, error", [
    (("spec", "rayClusterSpecs"), {}, jsonschema.ValidationError),               # misspelt key
    (("spec", "rayClusterSpec", "headGroupSpec", "rayStartParams", "num-cpus"), 0, jsonschema.ValidationError),
    (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "minReplicas"), "2", jsonschema.ValidationError),
])
def test_schema_rejects_typical_mistakes(path, value, error):
    job = manifest()
    node = job
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(error):
        jsonschema.validate(job, RAYJOB_V1)


def test_kubernetes_schema_rejects_a_bad_pod_template():
    import kubernetes_validate

    template = copy.deepcopy(pod_templates(manifest())[1])
    template["spec"]["containers"][0]["resource"] = template["spec"]["containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pod_template(template)


def test_cluster_fits_the_training_command():
    job = manifest()
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head schedules; it trains nothing
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "pretrain", "train"]
    sets = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    assert sets["ray.storage_path"].startswith("s3://")  # shared by every pod, so a resubmitted job resumes
    gpus = cpus = 0
    images = {c["image"] for t in pod_templates(job) for c in t["spec"]["containers"]}
    assert len(images) == 1  # head and workers run the same code
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        res = container["resources"]
        assert res["requests"] == res["limits"]  # GPUs cannot be overcommitted; keep CPU/memory guaranteed
        per_pod = int(res["limits"]["nvidia.com/gpu"])
        gpus += per_pod * group["replicas"]
        cpus = int(res["limits"]["cpu"])
        # each GPU worker reserves ray.cpus_per_worker CPUs: they must fit in its pod
        assert per_pod * int(sets["ray.cpus_per_worker"]) <= cpus
    assert sets["ray.use_gpu"] == "true" and int(sets["ray.num_workers"]) == gpus  # one training worker per GPU
