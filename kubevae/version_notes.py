"""What a registered model version says about itself in the MLflow UI.

The gate calls `describe_version` once it has decided. The version gets:
- a Markdown description: the decision and the comparison with the champion and its margin, the
  test and validation metrics, the data it was trained and judged on (digests, counts, the
  split's leakage verdict), how it was trained, and the pipeline run it came from;
- tags the registry page can filter by: beta, latent_dim, objective, training_api, the test
  split's digest and the leakage verdict.
The `champion` / `challenger` aliases are the gate's business; nothing here touches them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubevae import mlflow_datasets
from kubevae.model import read_model_config
from kubevae.storage import read_json

VAL_METRICS = ("val_neg_elbo", "val_iwae_nll", "val_recon", "val_kl", "val_active_units", "val_psnr")


def describe_version(decision, model_dir: str | Path, data_dir: str | Path, tracker, *,
                     training_api: str | None = None) -> str | None:
    """Set the description and tags of `decision`'s model version; returns the description.
    Warns and goes on (like all tracking) if the registry refuses."""
    if not tracker.enabled:
        return None
    return tracker.call("describe model version", _describe, decision, model_dir, data_dir,
                        tracker, training_api)


def _describe(decision, model_dir, data_dir, tracker, training_api: str | None) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    facts = version_facts(decision, model_dir, data_dir, training_api=training_api,
                          pipeline_run=_pipeline_run(client, tracker.run_id))
    text = render(facts)
    tracker.call("describe model version", client.update_model_version,
                 decision.model_name, decision.version, description=text)
    for key, value in facts["tags"].items():
        tracker.call("tag model version", client.set_model_version_tag,
                     decision.model_name, decision.version, key, str(value))
    return text


def version_facts(decision, model_dir: str | Path, data_dir: str | Path, *,
                  training_api: str | None, pipeline_run: dict[str, str] | None) -> dict[str, Any]:
    model_config, objective, raw = read_model_config(model_dir)
    training = raw.get("training") or {}
    metrics_path = Path(model_dir) / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    splits = mlflow_datasets.split_datasets(data_dir)
    verdict = mlflow_datasets.leakage_verdict(data_dir)
    api = training_api or "unknown"
    world = training.get("world_size")
    tags = {"beta": f"{objective.beta:g}", "latent_dim": model_config.latent_dim,
            "objective": objective.kind, "training_api": api}
    if "test" in splits:
        tags["test_data_digest"] = splits["test"].digest
    if verdict:
        tags["leakage_check"] = verdict["leakage_check"]
    return {"decision": decision, "objective": objective, "latent_dim": model_config.latent_dim,
            "likelihood": model_config.likelihood, "training": training, "world_size": world,
            "training_api": api, "val_metrics": {k: metrics[k] for k in VAL_METRICS if k in metrics},
            "splits": splits, "verdict": verdict, "pipeline_run": pipeline_run, "tags": tags}


def render(facts: dict[str, Any]) -> str:
    d = facts["decision"]
    maximize = d.direction == "maximize"
    lines = [_headline(d), "", "| | |", "|---|---|",
             f"| criterion {d.metric} ({d.criterion_source}, {'higher' if maximize else 'lower'} "
             f"is better; search objective {d.objective_metric}) | {_fixed(d.candidate)} |"]
    if d.champion is not None and d.candidate is not None:
        gain = d.candidate - d.champion if maximize else d.champion - d.candidate
        lines += [f"| champion (version {d.champion_version}) on the same split | {d.champion:.3f} |",
                  f"| improvement over the champion | {gain:+.3f} |"]
    lines.append(f"| required improvement (gate margin) | {d.margin:.3f} |")
    lines.append(f"| guard: test negative ELBO at β = 1 (nats per image), candidate / champion | "
                 f"{_fixed(d.candidate_neg_elbo)} / {_fixed(d.champion_neg_elbo)} "
                 f"(at most {100 * d.elbo_tolerance:g} % worse) |")
    if d.reason:
        lines.append(f"| reason | {d.reason} |")
    for key, value in facts["val_metrics"].items():
        lines.append(f"| {key} (validation, at the end of training) | {_num(value)} |")
    obj = facts["objective"]
    lines += ["", "**Model**", "", "| | |", "|---|---|",
              f"| objective | {obj.kind} (β = {obj.beta:g}"
              + (f", C_max = {obj.capacity_max:g}, γ = {obj.gamma:g}" if obj.kind == "capacity" else "")
              + ") |",
              f"| latent size | {facts['latent_dim']} |",
              f"| likelihood | {facts['likelihood']} |",
              f"| training API | {facts['training_api']}"
              + (f", {facts['world_size']} process(es)" if facts["world_size"] else "") + " |"]
    training = facts["training"]
    if training.get("epochs"):
        lines.append(f"| epochs, batch size, learning rate, seed | {training.get('epochs')}, "
                     f"{training.get('batch_size')}, {training.get('lr')}, {training.get('seed')} |")
    lines += ["", "**Data**", "", "| dataset | digest | images |", "|---|---|---|"]
    for name, ds in facts["splits"].items():
        lines.append(f"| {ds.name} ({name}) | `{ds.digest}` | {ds.profile.get('num_items')} |")
    parent = next(iter(facts["splits"].values())).profile.get("parent_content_sha256") \
        if facts["splits"] else None
    if parent:
        lines.append(f"| ingested dataset | `{parent[:mlflow_datasets.DIGEST_CHARS]}` | |")
    verdict = facts["verdict"]
    if verdict:
        shared = ", ".join(f"{k} = {v}" for k, v in verdict.get("cross_split", {}).items())
        lines += ["", f"**Split leakage check: {verdict['leakage_check']}**"
                  + (f" (shared across splits: {shared})" if shared else "")]
    run = facts["pipeline_run"]
    if run:
        lines += ["", f"**Pipeline run:** {run['name']} (MLflow run `{run['id']}`); "
                  f"gate run `{run['gate']}`"]
    return "\n".join(lines) + "\n"


def _headline(d) -> str:
    if d.promoted and d.champion_version is None:
        return (f"**Promoted to `champion`**: the first version judged on this test split "
                f"({d.metric} = {_fixed(d.candidate)}).")
    if d.promoted:
        return (f"**Promoted to `champion`** over version {d.champion_version}: {d.metric} "
                f"{_fixed(d.candidate)} against {_fixed(d.champion)}; {d.reason}.")
    if d.champion_version is None:
        return f"**Not promoted**, and there is no champion: {d.reason}."
    return (f"**Kept as `challenger`**: {d.metric} {_fixed(d.candidate)} against champion version "
            f"{d.champion_version} ({_fixed(d.champion)}); {d.reason}.")


def _fixed(value: Any) -> str:
    return "none" if value is None else f"{value:.3f}"


def _pipeline_run(client, run_id: str | None) -> dict[str, str] | None:
    """The pipeline's MLflow run: the gate run's parent (kfp.local's parent run, or the run
    KFP's MLflow integration made for the pipeline run), else the gate run itself."""
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
        parent_id = run.data.tags.get("mlflow.parentRunId")
        parent = client.get_run(parent_id) if parent_id else run
        return {"id": parent.info.run_id, "name": parent.info.run_name, "gate": run_id}
    except Exception:
        return {"id": run_id, "name": "gate run", "gate": run_id}


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
