"""kubevae: ingest images, split them without leakage, train, evaluate and serve beta-VAEs.

Subcommands plug in through the "kubevae.commands" entry points (pyproject.toml), so this core
package never imports the outer packages (pipelines, serving).

One error policy for every subcommand: an error the user can fix (a bad flag, file or field;
ValueError, OSError, an object store's refusal, and their kin) is printed as `kubevae <cmd>: error: ...` with exit status 2,
naming a parameter by the flag the user typed. KUBEVAE_TRACEBACK=1 shows the traceback instead."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from kubevae.errors import ParameterError
from kubevae.objectstore import ObjectStoreError

ORDER = ("ingest", "split", "train", "evaluate", "serve", "predict", "pipeline")


def commands() -> dict[str, str]:
    found = {ep.name: ep.value for ep in entry_points(group="kubevae.commands")}
    return dict(sorted(found.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else 99, kv[0])))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    available = commands()
    parser = argparse.ArgumentParser(prog="kubevae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the chosen command's module is imported: `kubevae train` never loads kserve or kfp.
    chosen = argv[0] if argv and argv[0] in available else None
    modules, parsers = {}, {}
    for name, target in available.items():
        if name == chosen:
            module = importlib.import_module(target)
            modules[name] = module
            doc = (module.__doc__ or name).strip()
            p = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                               formatter_class=HelpFormatter)
            module.add_arguments(p)
            parsers[name] = p
        else:
            sub.add_parser(name, help=summary(name, target))
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except (ParameterError, ValueError, OSError, ObjectStoreError) as error:
        if os.environ.get("KUBEVAE_TRACEBACK"):
            raise
        if isinstance(error, ParameterError):
            error = error.spelled(flag_for(parsers[args.command], error.name))
        print(f"kubevae {args.command}: error: {error}", file=sys.stderr)
        return 2


def flag_for(parser: argparse.ArgumentParser, field: str) -> str:
    """The flag (e.g. --latent-dim) that sets a config field, searching sub-commands too."""
    for action in parser._actions:  # argparse has no public accessor for its actions
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if (flag := flag_for(sub, field)) != field:
                    return flag
        elif action.dest == field and action.option_strings:
            return max(action.option_strings, key=len)
    return field


def summary(name: str, target: str) -> str:
    """A command's one-line help, read from its module's docstring without importing it."""
    try:
        spec = importlib.util.find_spec(target)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(target)
        tree = ast.parse(Path(spec.origin).read_text())
        return (ast.get_docstring(tree) or "").strip().splitlines()[0]
    except Exception:  # a missing or broken module still gets listed; running it will say why
        return f"see `kubevae {name} --help`"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


if __name__ == "__main__":
    sys.exit(main())
