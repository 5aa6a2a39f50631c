"""The compiled pipeline as the KFP 2.16.0 and 2.17.0 API servers read it.

The API server parses the pipeline spec and the Kubernetes platform spec (the YAML's second
document) strictly, with protojson: one unknown field and a 2.16 server skips the WHOLE platform
spec without an error (no Secrets, ConfigMap, labels or step deadlines reach a pod). Here the
upstream protos of each version (../shared/kfp-api/<version>/, see VERSIONS.md) are compiled with
grpc_tools.protoc at test time and every document is parsed with
json_format.ParseDict(ignore_unknown_fields=False): the PipelineSpec, the PlatformSpec (its
SinglePlatformSpec and PipelineConfig) and each executor's KubernetesExecutorConfig.

Both versions define the same proto packages (ml_pipelines, kfp_kubernetes), and kfp itself
registers its own ml_pipelines in this process's descriptor pool; so each version is loaded in
a subprocess of its own that imports only protobuf and the generated modules.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.pipeline import PIPELINE_CONFIG, TIMEOUTS
from pipelines.submit import compile_pipeline

REPO = Path(__file__).resolve().parents[1]
KFP_API = REPO.parent / "shared" / "kfp-api"
VERSIONS = ("2.16.0", "2.17.0")
PROTOS = ("pipeline_spec.proto", "kubernetes_executor_config.proto")

# Run as `python check.py PROTO_MODULES COMPILED.json`: one line of JSON on stdout,
# {variant: {"pipeline_spec": error, "platform_spec": error, "executors": {label: error}}},
# each error null when the document parsed.
CHECKER = r'''
import json
import sys

sys.path.insert(0, sys.argv[1])
from google.protobuf import json_format  # noqa: E402

import kubernetes_executor_config_pb2  # noqa: E402
import pipeline_spec_pb2  # noqa: E402


def parse(document, message):
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        return str(error)
    return None


report = {}
for variant, (pipeline, platform) in json.loads(open(sys.argv[2]).read()).items():
    executors = platform.get("platforms", {}).get("kubernetes", {}).get(
        "deploymentSpec", {}).get("executors", {})
    report[variant] = {
        "pipeline_spec": parse(pipeline, pipeline_spec_pb2.PipelineSpec()),
        "platform_spec": parse(platform, pipeline_spec_pb2.PlatformSpec()),
        "executors": {label: parse(config, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
                      for label, config in executors.items()},
    }
print(json.dumps(report))
'''


def _protoc_includes() -> list[str]:
    """The well-known protos (grpc_tools) and google/rpc/status.proto (googleapis-common-protos),
    which pipeline_spec.proto imports."""
    grpc_tools = importlib.util.find_spec("grpc_tools")
    assert grpc_tools is not None and grpc_tools.origin, "grpcio-tools is not installed"
    status = importlib.util.find_spec("google.rpc.status_pb2")
    assert status is not None and status.origin, "googleapis-common-protos is not installed"
    return [str(Path(grpc_tools.origin).parent / "_proto"), str(Path(status.origin).parents[2])]


def _compile_protos(version: str, out: Path) -> Path:
    source = KFP_API / version
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{source}",
               *(f"-I{include}" for include in _protoc_includes()), f"--python_out={out}",
               *(str(source / name) for name in PROTOS)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The YAML of each compile option: the default and --kfp-backend 2.17."""
    tmp = tmp_path_factory.mktemp("kfp-versions")
    return {variant: list(yaml.safe_load_all(compile_pipeline(tmp / f"{variant}.yaml", variant).read_text()))
            for variant in ("2.16", "2.17")}


@pytest.fixture(scope="module")
def parsed(compiled, tmp_path_factory):
    """{API server version: the checker's report on every compile option}."""
    tmp = tmp_path_factory.mktemp("kfp-protos")
    documents = tmp / "compiled.json"
    documents.write_text(json.dumps(compiled))
    checker = tmp / "check.py"
    checker.write_text(CHECKER)
    reports = {}
    for version in VERSIONS:
        modules = _compile_protos(version, tmp / version)
        done = subprocess.run([sys.executable, str(checker), str(modules), str(documents)],
                              capture_output=True, text=True, timeout=120, cwd=tmp)
        assert done.returncode == 0, done.stderr
        reports[version] = json.loads(done.stdout)
    return reports


def test_the_protos_are_the_two_versions():
    """The 2.16.0 PipelineConfig lacks the run deadline and TTL fields; 2.17.0 has them."""
    old = (KFP_API / "2.16.0" / "pipeline_spec.proto").read_text()
    new = (KFP_API / "2.17.0" / "pipeline_spec.proto").read_text()
    assert "active_deadline_seconds" not in old and "resource_ttl_on_success" not in old
    assert "active_deadline_seconds" in new and "resource_ttl_on_success" in new


def test_the_default_compile_has_no_run_config_and_a_platform_spec_for_every_step(compiled):
    pipeline, platform = compiled["2.16"]
    kubernetes = platform["platforms"]["kubernetes"]
    assert "pipelineConfig" not in kubernetes  # a 2.16 server would drop the whole doc for it
    executors = kubernetes["deploymentSpec"]["executors"]
    assert set(executors) == set(pipeline["deploymentSpec"]["executors"])
    assert {label.removeprefix("exec-") for label in executors} == set(TIMEOUTS)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_default_compile_parses_strictly_on_both_backends(parsed, version):
    report = parsed[version]["2.16"]
    assert report["pipeline_spec"] is None, report["pipeline_spec"]
    assert report["platform_spec"] is None, report["platform_spec"]
    assert len(report["executors"]) == len(TIMEOUTS)
    assert all(error is None for error in report["executors"].values()), report["executors"]


def test_the_2_17_option_carries_the_run_deadline_and_ttls(compiled):
    _, platform = compiled["2.17"]
    assert platform["platforms"]["kubernetes"]["pipelineConfig"] == {
        "activeDeadlineSeconds": PIPELINE_CONFIG.active_deadline_seconds,
        "resourceTtlOnSuccess": PIPELINE_CONFIG.ttl_seconds_after_success,
        "resourceTtlOnFailure": PIPELINE_CONFIG.ttl_seconds_after_failure}


def test_the_2_17_option_parses_on_2_17(parsed):
    report = parsed["2.17.0"]["2.17"]
    assert report["pipeline_spec"] is None, report["pipeline_spec"]
    assert report["platform_spec"] is None, report["platform_spec"]
    assert len(report["executors"]) == len(TIMEOUTS)
    assert all(error is None for error in report["executors"].values()), report["executors"]


def test_the_2_17_option_fails_on_2_16_where_the_platform_spec_would_be_dropped(parsed):
    """The check can fail: the 2.16.0 PipelineConfig has no deadline or TTL fields, so a 2.16
    API server would skip this platform spec (and with it every Secret, ConfigMap and label)."""
    report = parsed["2.16.0"]["2.17"]
    assert report["pipeline_spec"] is None, report["pipeline_spec"]  # only the platform doc breaks
    error = report["platform_spec"]
    assert error is not None
    assert "PipelineConfig" in error and "has no field named" in error, error
    assert any(field in error for field in
               ("activeDeadlineSeconds", "resourceTtlOnSuccess", "resourceTtlOnFailure")), error
