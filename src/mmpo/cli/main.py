"""The `mmpo` command. Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``.

User errors (:class:`mmpo.errors.UserError`) print one line and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator

# (subcommand, module under mmpo.cli). Modules are imported lazily so `mmpo --help` stays fast.
COMMANDS = [
    ("demo", "mmpo.cli.demo", "the main job: MMPO vs BT reward models and MMPO vs DPO policies on the embedded model"),
    ("rm", "mmpo.cli.train", "train a reward model (MMPO or a baseline loss)"),
    ("dpo", "mmpo.cli.train", "train a policy with DPO-family losses (MMPO, DPO, cDPO, IPO, SimPO)"),
    ("online", "mmpo.cli.online", "on-policy MMPO: sample from the policy, grade the samples, train on their margins, repeat"),
    ("eval", "mmpo.cli.evaluate", "evaluate models: pairs, rewardbench, mtbench"),
    ("report", "mmpo.cli.report", "compare finished runs: calibration, accuracy by margin, training curves"),
    ("compare", "mmpo.cli.compare", "train one recipe with several losses and seeds; differences with 95%% intervals"),
    ("sweep", "mmpo.cli.sweep", "train one recipe for several gammas and pick the lowest held-out NLL"),
    ("data", "mmpo.cli.data", "read a preference data set and print its report"),
    ("make-data", "mmpo.cli.make_data", "write the graded-tasks preference set (checkable prompts, graded responses)"),
    ("label", "mmpo.cli.label", "add a margin to every pair from a reward model, an LLM judge or a checker"),
    ("fit-gamma", "mmpo.cli.fit_gamma", "fit gamma of p = sigmoid(gamma * margin) to independent preference outcomes"),
    ("serve", "mmpo.cli.serve", "serve a chat model or a reward model over HTTP (OpenAI / vLLM-style APIs)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmpo", description="Margin Matching Preference Optimization")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    parser.add_argument("--version", action="version", version=f"mmpo {mmpo_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, add_help=True)
        p.set_defaults(_module=module, _name=name)
        importlib.import_module(module).add_arguments(name, p)
    for p in iter_parsers(parser):
        if p is parser:
            continue
        # Every (sub-)subcommand takes --debug after its name too, and names itself in its errors (`mmpo eval
        # pairs: error: ...`): argparse copies the innermost parser's defaults last, so its `_command` wins.
        p.set_defaults(_command=p.prog)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for user errors")
    return parser


def iter_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every parser below it (subcommands, and their subcommands), depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser once
                yield from iter_parsers(child)


def mmpo_version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmpo")
    except PackageNotFoundError:
        import mmpo

        return getattr(mmpo, "__version__", "unknown")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    args.extra = extra
    debug = bool(getattr(args, "debug", False)) or os.environ.get("MMPO_DEBUG") == "1"
    if not sys.stderr.isatty():
        _no_library_progress_bars()
    try:
        return _run_command(parser, args, extra, debug)
    finally:
        _leave_process_group()


def _run_command(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str], debug: bool) -> int:
    from mmpo.errors import UserError

    try:
        module = importlib.import_module(args._module)
        if extra and not getattr(module, "ACCEPTS_OVERRIDES", {}).get(args._name, False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return int(module.run(args) or 0)
    except UserError as e:
        if debug:
            raise
        _close_progress_bars()
        print(f"{args._command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        # A diverged run (see PairTrainer.compute_loss): the message names the step and batch rows.
        if debug:
            raise
        _close_progress_bars()
        print(f"{args._command}: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


def _leave_process_group() -> None:
    """Tear down torch.distributed's process group if this process joined one (under torchrun or accelerate
    launch), while the interpreter is whole.

    Left to interpreter exit, a gloo group's threads can be destroyed still running: the process then dies of
    SIGABRT ("terminate called without an active exception") after its work is done, now and then, more often
    on a loaded machine.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _no_library_progress_bars() -> None:
    """Output to a file or pipe: transformers' and huggingface_hub's bars (loading and writing weights) stay off,
    as mmpo's own do there (tqdm's ``disable=None``); a bar's redraws would fill the log with ``\r`` lines."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _close_progress_bars() -> None:
    """End any open tqdm bar so the error message starts on its own line."""
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


if __name__ == "__main__":
    sys.exit(main())
