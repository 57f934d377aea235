"""The ``deephealth`` command line: ``deephealth <command> --help`` documents each command.

Each command lives in ``deephealth.cli.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status). Command modules import heavy libraries inside ``run`` only,
so ``deephealth --help`` and the serving commands never import PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from deephealth import __version__

# (command, module, one-line help) in the order shown by --help.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("inspect", "inspect", "read image files and show what the model will see"),
    ("predict", "predict", "classify chest X-rays (files, folders, globs)"),
    ("batch", "batch", "score a whole archive into Parquet with Ray Data (resumable; needs the [scale] extra)"),
    ("serve", "serve", "serve the web app and REST API"),
    ("pacs", "pacs", "classify the CR/DX images in a PACS (DICOMweb) and store DICOM SR results back"),
    ("evaluate", "evaluate", "score a model and write its evaluation report"),
    ("train", "train", "train a model (needs the [train] extra)"),
    ("export", "export", "export a training run to ONNX + metadata.json"),
    ("adapt", "adapt", "adapt a model to a site's unlabelled films (BatchNorm statistics, AdaBN)"),
    ("dataset", "dataset", "summarise a dataset: classes per split, patients, duplicates, overlap between splits"),
)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (not after the whole usage block) and where to look."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _CommandParser(_Parser):
    """A command's parser: arguments it does not recognise are its usage error, naming it and its help.

    (argparse hands a sub-parser's leftovers back to the top-level parser, whose error would say
    ``deephealth: error: ... (see deephealth --help)`` for a mistyped ``predict`` option.)
    """

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command (usage errors: one line, exit status 2)."""
    parser = _Parser(
        prog="deephealth",
        description="Deep Health: pediatric chest X-ray decision support "
        "(0 no pneumonia, 1 bacterial, 2 viral). Not a diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"deephealth {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for name, module, help_text in COMMANDS:
        mod = importlib.import_module(f"deephealth.cli.{module}")
        # the module docstring is the description, line breaks kept (its examples stay one per line)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 some inputs failed, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
