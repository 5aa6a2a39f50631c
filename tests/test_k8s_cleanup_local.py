"""The exit handler under kfp.local: it runs after a failed step, gets the run's final status,
and with the local backend records that nothing needed cleaning (what it does on a cluster is
tested against the recorded fake API in tests/test_k8s_launchers.py)."""

import pytest
from kfp import dsl, local

from components.base import component
from components.cleanup import cleanup


@component
def failing_step():
    raise RuntimeError("this step fails on purpose")


@dsl.pipeline
def failing_run(marker: str):
    exit_task = cleanup(backend="local", namespace="", run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        model_name="kubevae")
    with dsl.ExitHandler(exit_task):
        failing_step()


@pytest.mark.slow
def test_the_exit_handler_runs_locally_after_a_failure_and_records_what_it_did(tmp_path):
    root = tmp_path / "root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=False)
    failing_run(marker="x")
    [run] = [p for p in root.iterdir() if p.is_dir()]
    report = (run / "cleanup" / "report").read_text()
    assert "ended FAILED" in report
    assert "backend=local: no cluster resources; nothing to clean up" in report
    run_id = report.split("Run `")[1].split("`")[0]
    assert run_id and "{{" not in run_id  # kfp.local filled in the run's id
