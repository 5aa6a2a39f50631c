"""Split a dataset folder into train/val/test with no leakage between them.

Examples:
  kubevae split --data runs/raw --out runs/split
  kubevae split --data runs/raw --out runs/split --group-column patient
  kubevae split --data runs/raw --out runs/split --time-column timestamp --time-cutoff 2024-01-01
  kubevae split --data runs/raw --out runs/split2 --previous-split runs/split/assignments.csv
  kubevae split --data runs/raw --out runs/split3 --previous-split champion --model-name kubevae-sprites

Groups: the metadata --group-column, exact duplicates (same pixels) and near duplicates
(nearest-neighbour candidates verified by max normalised cross-correlation over +-2 px shifts,
at a threshold calibrated on the data or set with --near-dup-threshold) are merged by union-find; each group goes
to one split by a salted sha256 of its key (stable when data is appended). --previous-split pins
every earlier assignment (`champion`: the split recorded on models:/MODEL@champion, none yet: a
fresh split); new items joining a pinned group inherit its split. When new data
shows pinned items of different splits to be copies (or one group), --pinned-copies exclude (the
default) keeps the later split's items (test > val > train) and excludes the others, naming
them in the report; --pinned-copies fail fails instead. --no-mirror-copies: mirror images are
not copies. Time mode puts items older than the first cutoff in train and newer ones in val/test.

Writes assignments.csv, train/ val/ test/, stats.json (fit on train only), leakage_report.json
and leakage_report.md. Fails when any group, exact or near duplicate is shared across splits.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI builds its parsers without importing the split's dependencies
    from kubevae.split.report import PreviousSplit

CHAMPION = "champion"


def names_champion(requested: str | None) -> bool:
    """Whether `requested` asks for the champion's split (which needs the model registry)."""
    return (requested or "").strip().lower() == CHAMPION


def resolve_previous_split(requested: str | None, model_name: str = "") -> PreviousSplit:
    """The earlier split to pin: a path or URI as given; `champion`: the split recorded on
    models:/MODEL_NAME@champion (kubevae.registry), or a fresh split when there is no champion
    yet; empty: a fresh split. The leakage report says which it was."""
    from kubevae.split.report import PreviousSplit

    if not names_champion(requested):
        return PreviousSplit.given((requested or "").strip())
    if not model_name:
        raise ValueError("previous_split=champion: model_name (--model-name) must name the registered "
                         "model whose champion's split is pinned")
    from kubevae.registry import champion_split

    found = champion_split(model_name)
    if found is None:
        return PreviousSplit(CHAMPION, None, "no champion", model_name)
    return PreviousSplit(CHAMPION, found[0], f"champion version {found[1]}", model_name)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kubevae.split import DEFAULT_SALT
    from kubevae.split.assign import PINNED_COPIES

    p.add_argument("--data", required=True, help="a dataset folder (kubevae ingest)")
    p.add_argument("--out", required=True, help="the split folder to write")
    p.add_argument("--fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1],
                   metavar=("TRAIN", "VAL", "TEST"),
                   help="fractions of groups per split, each in (0, 1), summing to at most 1")
    p.add_argument("--group-column", default=None,
                   help="manifest column whose equal values must share a split (patient, device, ...)")
    p.add_argument("--time-column", default=None, help="manifest column with each item's time")
    p.add_argument("--time-cutoff", action="append", default=None,
                   help="train < first cutoff <= val (< second cutoff <= test); repeat for two")
    p.add_argument("--previous-split", default=None,
                   help="an earlier assignments.csv (or its split folder; a path or an s3:// "
                        "URI): pins every item it names; `champion`: the split recorded on "
                        "--model-name's champion (none yet: a fresh split)")
    p.add_argument("--model-name", default="",
                   help="with --previous-split champion: the registered model (MLflow) whose "
                        "champion's split is pinned")
    p.add_argument("--near-dup-threshold", type=float, default=None,
                   help="verification threshold in (0, 1]: the max normalised cross-correlation "
                        "(over +-2 px shifts) at which two images are near duplicates; closer to 1 "
                        "merges fewer (unset: the dataset card's hint, else calibrated on copies of "
                        "the data set's own images; the report says how)")
    p.add_argument("--max-group-fraction", type=float, default=None,
                   help="fail when one group holds more than this fraction of the items "
                        "(unset: the smallest split fraction)")
    p.add_argument("--pinned-copies", choices=PINNED_COPIES, default="exclude",
                   help="with --previous-split, when pinned items of different splits turn out "
                        "to be copies or one group (a link the earlier split missed): exclude "
                        "(default) keeps the later split's items (test > val > train; the frozen "
                        "test items stay) and excludes the others; fail publishes nothing")
    p.add_argument("--mirror-copies", action=argparse.BooleanOptionalAction, default=True,
                   help="mirror images count as copies (default; saved flips are augmentations "
                        "in many data sets)")
    p.add_argument("--salt", default=DEFAULT_SALT, help="salt of the group-key hash (changes every split)")


def run(a: argparse.Namespace) -> int:
    from kubevae.split import LeakageError, split

    try:
        previous = resolve_previous_split(a.previous_split, a.model_name)
        report = split(a.data, a.out, fractions=a.fractions, group_column=a.group_column,
                       time_column=a.time_column, time_cutoffs=a.time_cutoff,
                       previous_split=previous, near_dup_threshold=a.near_dup_threshold,
                       salt=a.salt, max_group_fraction=a.max_group_fraction,
                       pinned_copies=a.pinned_copies, mirror_copies=a.mirror_copies)
    except LeakageError as e:
        print(f"kubevae split: error: {e}", file=sys.stderr)
        return 1
    print(report.summary(), flush=True)
    return 0
