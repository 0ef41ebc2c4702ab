"""The ``ierf`` command line.

Each subcommand lives in its own module of this package with a ``register(sub)`` function
that adds its parser(s); ``ierf bench <what>`` subcommands register on the ``bench`` group.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from ierf.errors import IerfError, environment_error

#: modules adding top-level subcommands (``register(sub)``)
COMMANDS = ("ierf.cli.explain", "ierf.cli.atlas", "ierf.cli.concepts", "ierf.cli.graph",
            "ierf.cli.cafe", "ierf.cli.diagnose", "ierf.cli.fact")
#: modules adding ``ierf bench`` subcommands (``register(bench_sub)``)
BENCH_COMMANDS: tuple[str, ...] = ("ierf.cli.bench_local", "ierf.cli.bench_concepts",
                                     "ierf.cli.bench_graph", "ierf.cli.bench_cafe",
                                     "ierf.cli.bench_c2", "ierf.cli.bench_fact")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ierf`` console script."""
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line
    try:
        args = _parser().parse_args(argv)
        return args.run(args)
    except IerfError as e:
        print(f"ierf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nierf: interrupted; nothing half-written is left (files are written atomically), "
              "and builds, benchmarks and SAE training resume when the same command runs again",
              file=sys.stderr)
        return 130
    except Exception as e:
        if (error := environment_error(e)) is None:
            raise
        print(f"ierf: error: {error}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning      # callers in-process keep their format


def _one_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    """Warnings as one line each, without the source line that printed them."""
    return f"ierf: warning: {message}\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ierf", description="Explain vision models: SRD saliency, "
                                "iERFs, concepts and their evaluation.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    if BENCH_COMMANDS:
        bench = sub.add_parser("bench", help="run an evaluation benchmark and write its tables")
        bench_sub = bench.add_subparsers(required=True, metavar="BENCHMARK")
        for name in BENCH_COMMANDS:
            importlib.import_module(name).register(bench_sub)
    return p


if __name__ == "__main__":
    sys.exit(main())
