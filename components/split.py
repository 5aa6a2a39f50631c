from kfp.dsl import Dataset, Input, Markdown, Output

from components.base import component


@component
def split(dataset: Input[Dataset], train_fraction: float, val_fraction: float,
          test_fraction: float, group_column: str, previous_split: str, model_name: str,
          splits: Output[Dataset], leakage_report: Output[Markdown],
          pinned_copies: str = "exclude", mirror_copies: bool = True):
    """Leakage-safe split: groups, exact and near duplicates, stable under appended data.

    Args:
        dataset: The ingested dataset folder.
        train_fraction: Fraction of groups in the training split.
        val_fraction: Fraction of groups in the validation split (the tuning objective).
        test_fraction: Fraction of groups in the frozen test split (the gate).
        group_column: Metadata column that groups images (patient, device, session); empty for
            none.
        previous_split: Empty (a fresh split), the URI of an earlier assignments.csv, or
            `champion`: the split recorded on the registered model `model_name`@champion (none
            yet: split fresh). The leakage report says which it was.
        model_name: The registered model whose champion's split `champion` pins.
        pinned_copies: What to do when new data shows pinned items of different splits to be
            copies or one group (a link the earlier split missed): `exclude` (the default)
            keeps the later split's items (test > val > train) and excludes the others,
            naming each pair in the leakage report; `fail` fails the step. Exclude is the
            default because a scheduled retraining (previous_split=champion) pins the same
            items every run, so `fail` would fail every run on a link in old data; excluding
            the train-side copy keeps the new model from training on a copy of a frozen test
            item, while the test split stays the same for champion and challenger (the
            champion trained on the copy: the report says so).
        mirror_copies: Mirror images count as copies (saved flips are augmentations in many
            data sets); false: only unflipped edits do.

    Returns:
        splits: The split folder: train/, val/ and test/ dataset folders, assignments.csv,
            stats.json (normalization fit on train only) and the leakage report.
        leakage_report: The leakage report: items and groups per split, duplicate clusters,
            and what is shared across splits (all zero, or the step fails).
    """
    import json
    import shutil
    from pathlib import Path

    from kubevae import mlflow_datasets, tracking
    from kubevae.registry import champion_split
    from kubevae.split import split as run_split
    from kubevae.storage import atomic_write_json, atomic_write_text

    wants_champion = previous_split.strip().lower() == "champion"
    # Resolving the champion needs the registry: no silent fresh split when MLflow is down.
    with tracking.start_run("split", require=wants_champion,
                            tags={"kubevae.step": "split"}) as tracker:
        pinned, how = previous_split or None, "given" if previous_split else "none"
        if wants_champion:
            found = champion_split(model_name)
            pinned = found[0] if found else None
            how = f"champion version {found[1]}" if found else "no champion"
        report = run_split(dataset.path, splits.path,
                           fractions=(train_fraction, val_fraction, test_fraction),
                           group_column=group_column or None, previous_split=pinned,
                           pinned_copies=pinned_copies, mirror_copies=mirror_copies)
        pinned_items = int(report.report.get("how_assigned", {}).get("pinned", 0))
        if how == "no champion":
            text = (f"`previous_split=champion`, but `models:/{model_name}@champion` does not "
                    "exist yet: this run splits fresh (nothing pinned).")
        elif pinned:
            text = (f"Pinned to `{pinned}` ({how}): {pinned_items} existing items keep their "
                    "split; new items join their group's split or are placed by hash.")
            copies = report.report.get("pinned_copies") or {}
            if copies.get("excluded_items"):
                text += (f" {copies['excluded_items']} earlier items were excluded as copies of "
                         "items pinned to a later split (see Pinned items found to be copies).")
        else:
            text = "A fresh split (no previous_split)."
        note = {"requested": previous_split or "", "resolved": pinned or "", "source": how,
                "pinned_items": pinned_items, "text": text}
        out = Path(splits.path)
        full = json.loads((out / "leakage_report.json").read_text())
        atomic_write_json(out / "leakage_report.json", {**full, "previous_split_resolution": note})
        markdown = (out / "leakage_report.md").read_text().rstrip()
        atomic_write_text(out / "leakage_report.md", f"{markdown}\n\n## Previous split\n\n{text}\n")
        tracker.log_metrics(report.counts())
        tracker.set_tags({"kubevae.previous_split": pinned or "",
                          "kubevae.previous_split_source": how})
        for name in ("leakage_report.md", "leakage_report.json", "assignments.csv", "stats.json"):
            tracker.log_artifact(out / name)
        mlflow_datasets.log_split_outputs(tracker, splits.path, parent_dir=dataset.path,
                                          split_uri=splits.uri)
        tracker.rename("split · " + " / ".join(f"{k} {v}" for k, v in report.items.items())
                       + f" · leakage {'PASSED' if report.passed else 'FAILED'}")
    splits.metadata.update(report.counts())
    shutil.copyfile(Path(splits.path) / "leakage_report.md", leakage_report.path)
