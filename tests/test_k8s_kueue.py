"""Kueue: the pipeline's `queue_name` puts `kueue.x-k8s.io/queue-name` where Kueue reads it.

Kueue admits a TrainJob or PyTorchJob whose own metadata carries the label (its pods must not:
Kueue's pod integration would queue each pod too). A Katib trial's job is created by Katib
from the trialSpec, whose metadata labels it keeps: the label goes there. Every job is written
to the fake API server (tests/k8s_fake.py), which checks the CRDs with strict field validation
and, as an API server does, every object's metadata labels.
"""

from __future__ import annotations

import pytest
from k8s_checks import custom_resource_errors, label_errors, trainjob_pod_metadata
from k8s_fake import FakeCluster
from k8s_scenarios import NAMESPACE, PLURALS, train_request, train_succeeds, tune_request, tune_succeeds
from kubernetes.client.rest import ApiException

from components.backends import render
from components.backends.kubernetes import KubernetesBackend
from components.k8s.contract import QUEUE_LABEL, check_queue_name
from components.k8s.katib import trial_instance
from components.k8s.training_apis import TRAINING_APIS

APIS = ("trainer", "pytorchjob")
QUEUE = "gpu-a100"


def pod_labels(job: dict) -> list[dict[str, str]]:
    """The labels of every pod template of a TrainJob or PyTorchJob (JSON)."""
    if job["kind"] == "TrainJob":
        return [trainjob_pod_metadata(job)["labels"]]
    return [r["template"]["metadata"]["labels"] for r in job["spec"]["pytorchReplicaSpecs"].values()]


@pytest.mark.parametrize("api", APIS)
def test_the_training_job_carries_the_queue_label_and_its_pods_do_not(tmp_path, s3, api):
    out = train_succeeds(tmp_path, s3, api=api, queue_name=QUEUE)
    assert out.error is None, out.error
    [job] = out.cluster.created(PLURALS[api])
    assert job["metadata"]["labels"][QUEUE_LABEL] == QUEUE
    assert all(QUEUE_LABEL not in labels for labels in pod_labels(job))
    assert all(body["metadata"]["labels"][QUEUE_LABEL] == QUEUE for body in out.cluster.dry_runs(PLURALS[api]))
    assert custom_resource_errors(job) == []


@pytest.mark.parametrize("api", APIS)
def test_each_katib_trial_job_carries_the_queue_label(tmp_path, api):
    out = tune_succeeds(tmp_path, api=api, queue_name=QUEUE)
    assert out.error is None, out.error
    [experiment] = out.cluster.created("experiments")
    assert custom_resource_errors(experiment) == []
    assert QUEUE_LABEL not in experiment["metadata"]["labels"]  # Kueue admits jobs, not Experiments
    template = experiment["spec"]["trialTemplate"]["trialSpec"]
    assert set(template["metadata"]) == {"labels"}  # Katib names the trial's job
    assert template["metadata"]["labels"][QUEUE_LABEL] == QUEUE
    # The job Katib makes of the template (its name and namespace set, the labels kept) is
    # what Kueue sees; the API server takes it as Katib writes it (no strict validation).
    job = trial_instance(experiment, f"{experiment['metadata']['name']}-x7k2p", NAMESPACE)
    assert job["metadata"]["labels"][QUEUE_LABEL] == QUEUE
    assert all(QUEUE_LABEL not in labels for labels in pod_labels(job))
    cluster = FakeCluster()
    api_entry = TRAINING_APIS[api]
    cluster.api().custom.create_namespaced_custom_object(api_entry.group, api_entry.version, NAMESPACE,
                                                         api_entry.plural, job)
    assert cluster.warnings == []  # nothing dropped


@pytest.mark.parametrize("queue_name", ["GPU-queue", "gpu_queue", "-gpu", "gpu-", "q" * 64, "team a"])
@pytest.mark.parametrize("api", APIS)
def test_an_invalid_queue_name_fails_before_anything_is_created(tmp_path, queue_name, api):
    cluster = FakeCluster()
    backend = KubernetesBackend(api=cluster.api(), env={}, log=lambda line: None)
    with pytest.raises(ValueError, match=r"^queue_name: expected the name of a Kueue LocalQueue .*got "):
        backend.train(train_request(tmp_path, api=api, queue_name=queue_name))
    with pytest.raises(ValueError, match=r"^queue_name: "):
        backend.tune(tune_request(tmp_path, api=api, queue_name=queue_name))
    assert cluster.calls == []


def test_a_valid_queue_name_is_a_label_value_the_api_server_accepts():
    longest = "q" * 63
    assert check_queue_name(longest) == longest and check_queue_name("") == ""
    assert label_errors({"labels": {QUEUE_LABEL: longest}}) == []


def test_the_fake_api_server_refuses_an_invalid_label():
    """The check the tests above rely on can fail: the fake answers 422 as an API server does."""
    assert label_errors({"labels": {QUEUE_LABEL: "team a"}}) != []
    assert label_errors({"labels": {"bad key/x/y": "v"}}) != []
    job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
           "metadata": {"name": "j", "labels": {QUEUE_LABEL: "q" * 64}},
           "spec": {"pytorchReplicaSpecs": {}}}
    with pytest.raises(ApiException) as refused:
        FakeCluster().api().custom.create_namespaced_custom_object("kubeflow.org", "v1", NAMESPACE,
                                                                   "pytorchjobs", job)
    assert refused.value.status == 422 and "metadata.labels: Invalid value" in refused.value.body


def test_without_a_queue_nothing_carries_the_label():
    for name, obj in render.workloads().items():
        assert QUEUE_LABEL not in str(obj), name


def test_the_pipeline_passes_queue_name_to_tune_and_train():
    from pipelines.pipeline import PARAMETERS, kubevae_pipeline

    assert PARAMETERS["queue_name"][0] == ""
    dags = [kubevae_pipeline.pipeline_spec.root.dag]
    dags += [c.dag for c in kubevae_pipeline.pipeline_spec.components.values() if c.dag.tasks]
    bound = {name: task.inputs.parameters["queue_name"] for dag in dags for name, task in dag.tasks.items()
             if "queue_name" in task.inputs.parameters}
    assert set(bound) == {"tune", "train"}
    # bound to the pipeline's parameter (inside the exit handler's group: through the group's input)
    assert all(b.component_input_parameter.endswith("queue_name") for b in bound.values()), bound
