"""The `kubevae` command. Subcommands plug in through the "kubevae.commands" entry points
(pyproject.toml), so this core package never imports the outer packages (pipelines, serving)."""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

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
    modules = {}
    for name, target in available.items():
        if name == chosen:
            module = importlib.import_module(target)
            modules[name] = module
            doc = (module.__doc__ or name).strip()
            p = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                               formatter_class=HelpFormatter)
            module.add_arguments(p)
        else:
            sub.add_parser(name, help=f"see `kubevae {name} --help`")
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args) or 0)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


if __name__ == "__main__":
    sys.exit(main())
