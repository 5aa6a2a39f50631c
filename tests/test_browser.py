"""The pages people look at, opened in a real browser (Debian's chromium + chromedriver, driven
by Selenium): the evaluation report, the tuning study, the leakage report (its Markdown rendered
as HTML, as the Kubeflow UI renders a Markdown visualization), and the MLflow UI served by
`mlflow server` on loopback from the store the run wrote.

Every page must open without console errors (the browser's log, level SEVERE), every image must
decode (naturalWidth > 0) and the key numbers must be on the page. Nothing here runs a pipeline
of its own: all pages come from the session's short run (tests/conftest.py::pipeline_run), which
tests/test_pipeline_local.py shares. One browser serves the module.

Screenshots of every page go to runs/screenshots/ in the checkout (KUBEVAE_SCREENSHOTS moves
them); the run prints the folder at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, SHORT_RUN

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    reason = ("chromium and chromedriver are not installed; `make test` installs them "
              "(apt-get install chromium chromium-driver)")
    if os.environ.get("CI"):  # CI must run the browser tests, never skip them unseen
        pytest.fail(f"browser tests: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

# Headless, and nothing that reaches outside this machine (no sync, updates, QUIC or pings).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")
UI_TIMEOUT = 120  # seconds for the MLflow UI to render on a busy 2-core machine


@pytest.fixture(scope="module")
def shots(request):
    folder = Path(os.environ.get("KUBEVAE_SCREENSHOTS", REPO / "runs" / "screenshots"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    yield folder
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    message = f"browser screenshots: {folder} ({', '.join(sorted(p.name for p in folder.glob('*.png')))})"
    if reporter is not None:
        reporter.write_line(message)
    else:
        print(message)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="kubevae-chromium-")  # a fresh profile every run
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(UI_TIMEOUT)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _open_page(driver, path: Path, shots: Path, name: str) -> tuple[str, list]:
    """Open a local HTML file (copied next to its screenshot, for people to open too); check
    the console and every image; return the page's text and its images (alt, width)."""
    page = shots / f"{name}.html"
    if path != page:
        shutil.copyfile(path, page)
    driver.get_log("browser")  # drop what earlier pages left
    driver.get(page.as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
    errors = _console_errors(driver)
    _full_page_screenshot(driver, shots / f"{name}.png")
    assert not errors, f"{name}: console errors: {errors}"
    broken = [alt for alt, complete, width in images if not complete or width == 0]
    assert not broken, f"{name}: images that do not decode: {broken}"
    return driver.find_element(By.TAG_NAME, "body").text, [(alt, width) for alt, _, width in images]


def _full_page_screenshot(driver, path: Path) -> None:
    """The whole page, not only the window: grow the window to the page's height for the shot."""
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], min(max(height, size["height"]), 6000))
    driver.save_screenshot(str(path))
    driver.set_window_size(size["width"], size["height"])


def test_evaluation_report_renders_its_numbers_and_pictures(pipeline_run, browser, shots):
    evaluation = pipeline_run["tasks"] / "evaluate" / "evaluation"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    text, images = _open_page(browser, evaluation / "report.html", shots, "evaluation-report")
    names = {alt.rsplit(".", 1)[0] for alt, _ in images}
    assert {"reconstructions", "samples", "traversals", "training_curves", "tuning_objective"} <= names
    for key in ("neg_elbo", "iwae_nll", "kl", "mig"):
        assert f"{metrics[key]:.4g}" in text, key


def test_study_report_lists_every_trial_and_the_best(pipeline_run, browser, shots):
    study = json.loads((pipeline_run["tasks"] / "tune" / "study").read_text())
    text, images = _open_page(browser, pipeline_run["tasks"] / "tune" / "study_plot", shots, "study")
    alts = {alt for alt, _ in images}
    assert f"{study['objective_metric']} against beta, with intervals" in alts
    assert "rate against distortion, chosen trial marked" in alts
    rows = browser.find_elements(By.CSS_SELECTOR, "table tr")
    assert len(rows) == 1 + len(study["trials"]) == 1 + SHORT_RUN["max_trials"]
    # The short run's trials are tiny and may all collapse: then the page must say so in a
    # banner and name the trial it took as least collapsed, not as chosen on the objective.
    if study["all_collapsed"]:
        assert "All trials collapsed." in text
        how = "Least collapsed, not chosen on the objective"
    else:
        assert "All trials collapsed." not in text
        how = "Chosen"
    assert f"{how} (trial {study['best_trial']}" in text and f"{study['best_value']:.4g}" in text
    assert f"latent_dim = {study['best_params']['latent_dim']}" in text


def test_leakage_report_renders_as_html_with_its_counts(pipeline_run, browser, shots):
    from markdown_it import MarkdownIt

    splits = pipeline_run["tasks"] / "split" / "splits"
    report = json.loads((splits / "leakage_report.json").read_text())
    body = MarkdownIt("commonmark").enable("table").render((splits / "leakage_report.md").read_text())
    page = shots / "leakage-report.html"
    page.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Leakage report</title>'
                    f"<style>table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px}}"
                    f"</style></head><body>{body}</body></html>")
    text, _ = _open_page(browser, page, shots, "leakage-report")
    assert "Leakage report: PASSED" in text
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "table td")]
    assert cells, "the report's tables did not render"
    for name, count in report["items"].items():  # the per-split table, as numbers in cells
        assert name in cells and str(count) in cells, (name, count)
    # builtin://sprites?n=600: every item is assigned or excluded, and the page says so
    assert report["items_total"] == 600 == report["assigned"] + report["excluded"]["count"]
    assert sum(report["items"].values()) == report["assigned"]
    assert (f"600 items: {report['assigned']} assigned, {report['excluded']['count']} excluded"
            in text)


# -- the MLflow UI ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(pipeline_run):
    """`mlflow server` on loopback over the run's SQLite store (the artifacts stay where the run
    wrote them: the store records their absolute location). Started with the module, so that
    it boots while the static pages are checked; `mlflow_ui` waits for it."""
    port = _free_port()
    store = f"sqlite:///{pipeline_run['run_dir'] / 'mlflow.db'}"
    log_path = pipeline_run["run_dir"] / "mlflow-server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server",
                                   "--backend-store-uri", store, "--host", "127.0.0.1",
                                   "--port", str(port), "--workers", "1"],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        yield {"process": server, "url": f"http://127.0.0.1:{port}", "store": store, "log": log_path}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def mlflow_ui(mlflow_server):
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"{mlflow_server['url']}/health", timeout=3):  # noqa: S310 (loopback)
                return mlflow_server
        except OSError as e:
            if mlflow_server["process"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start: "
                                   + mlflow_server["log"].read_text()[-2000:]) from e
            time.sleep(0.5)


# What MLflow's own UI logs on a healthy server: it asks for the signed-in user (a server without
# its auth app answers 404), and its grid's ResizeObserver reports the browser's benign notice.
MLFLOW_UI_KNOWN_ERRORS = ("/ajax-api/2.0/mlflow/users/current - Failed to load resource",
                          "ResizeObserver loop completed with undelivered notifications")


def _no_mlflow_console_errors(driver) -> None:
    errors = [e for e in _console_errors(driver) if not any(k in e for k in MLFLOW_UI_KNOWN_ERRORS)]
    assert not errors, f"MLflow UI console errors: {errors}"


def _wait_for_text(driver, *needles: str, timeout: float = UI_TIMEOUT) -> str:
    def ready(d):
        text = d.find_element(By.TAG_NAME, "body").text
        return text if all(n in text for n in needles) else False
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(ready)
    except Exception:
        body = driver.find_element(By.TAG_NAME, "body").text
        missing = [n for n in needles if n not in body]
        raise AssertionError(f"the page never showed {missing}; it shows: {body[:1500]}") from None


def _client(mlflow_ui):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_ui["store"], registry_uri=mlflow_ui["store"])


def _first_pipeline(client):
    """The session's pipeline run (the first in its store): the pipeline run and its runs by
    step."""
    experiment = client.get_experiment_by_name("kubevae")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parent = next(r for r in runs if r.data.tags.get("kubevae.step") == "pipeline")
    tune = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                and r.data.tags.get("kubevae.step") == "tune")
    steps = {r.data.tags.get("kubevae.step"): r for r in runs
             if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == tune.info.run_id]
    return experiment, parent, steps, trials


def _dataset_label(run, context: str) -> str:
    """How the UI names a run's dataset input: "name (digest)"."""
    dataset = next(i.dataset for i in run.inputs.dataset_inputs
                   if any(t.key == "mlflow.data.context" and t.value == context for t in i.tags))
    return f"{dataset.name} ({dataset.digest})"


def test_mlflow_ui_opens_the_training_view_with_the_runs_and_their_datasets(mlflow_ui, browser, shots):
    from kubevae.tracking import TRAINING_VIEW_QUERY

    client = _client(mlflow_ui)
    experiment, parent, steps, trials = _first_pipeline(client)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert {"ingest", "split", "tune", "train", "evaluate", "gate"} <= set(steps)
    assert len(trials) == SHORT_RUN["max_trials"]  # the trials are children of the tuning run

    browser.get_log("browser")
    browser.get(f"{mlflow_ui['url']}/#/experiments/{experiment.experiment_id}{TRAINING_VIEW_QUERY}")
    text = _wait_for_text(browser, "Run Name", "Dataset", parent.info.run_name,
                          _dataset_label(parent, "training"))
    # The training view: the experiment's Runs / Models / Traces tabs, none of the GenAI view's
    # pages (a fresh browser without the query lands on the GenAI overview).
    assert "Models" in text and not {"Observability", "Judges", "Training runs"} & set(text.splitlines())
    # Open the pipeline run's row: its step runs appear, each with the datasets it read.
    browser.find_element(By.CSS_SELECTOR, f".ag-row[row-id='{parent.info.run_id}'] "
                                          "button[data-component-id*='runnamecellrenderer']").click()
    _wait_for_text(browser, *(run.info.run_name for run in steps.values()),
                   _dataset_label(steps["ingest"], "ingested"), _dataset_label(steps["evaluate"], "evaluation"))
    _no_mlflow_console_errors(browser)  # before the screenshot: resizing makes its own notices
    _full_page_screenshot(browser, shots / "mlflow-experiment-runs.png")

    train = steps["train"]
    browser.get(f"{mlflow_ui['url']}/#/experiments/{experiment.experiment_id}/runs/"
                f"{train.info.run_id}{TRAINING_VIEW_QUERY}")
    _wait_for_text(browser, train.info.run_name, "Datasets", _dataset_label(train, "training"),
                   "Parent run", parent.info.run_name, "kubevae train")
    _no_mlflow_console_errors(browser)
    _full_page_screenshot(browser, shots / "mlflow-train-run.png")


def test_mlflow_ui_shows_the_registered_model_with_its_alias_and_description(mlflow_ui, browser, shots):
    from kubevae.tracking import TRAINING_VIEW_QUERY

    client = _client(mlflow_ui)
    name = SHORT_RUN["model_name"]
    champion = client.get_model_version_by_alias(name, "champion")
    browser.get(f"{mlflow_ui['url']}/#/models/{name}{TRAINING_VIEW_QUERY}")
    _wait_for_text(browser, name, f"Version {champion.version}", "@ champion")
    _no_mlflow_console_errors(browser)
    _full_page_screenshot(browser, shots / "mlflow-registered-model.png")
    browser.get(f"{mlflow_ui['url']}/#/models/{name}/versions/{champion.version}{TRAINING_VIEW_QUERY}")
    text = _wait_for_text(browser, "Aliases", "@ champion", "Promoted to champion",
                          "Split leakage check: PASSED", champion.tags["test_data_digest"])
    _no_mlflow_console_errors(browser)
    _full_page_screenshot(browser, shots / "mlflow-model-version.png")
    assert champion.tags["training_api"] == "torchrun" and "torchrun" in text
    assert champion.tags["test_neg_elbo"] in text  # the tags table, as registered
