"""``ehrfm <stage>``: one subcommand per stage. Each stage lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported lazily so ``ehrfm --help``
stays fast and a stage's heavy dependencies (Spark, torch, MLflow) load only when it runs."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "synth": ("ehrfm.synth.cli", "generate a synthetic FHIR R4 population with planted, documented risk"),
    "ingest": ("ehrfm.ingest.cli", "FHIR R4 / MIMIC-IV / MEDS -> MEDS events on disk (Spark)"),
    "prepare": ("ehrfm.prepare.cli", "vocabulary and numeric-value bins fitted on the train split"),
    "label": ("ehrfm.labels.cli", "label tables from tasks/*.yaml (Spark)"),
    "tokenize": ("ehrfm.tokenize.cli", "token-stream parquet: pretraining rows and task rows (Spark)"),
    "pretrain": ("ehrfm.train.pretrain_cli", "next-token pretraining (Lightning, MLflow)"),
    "finetune": ("ehrfm.train.finetune_cli", "multitask prompted finetuning"),
    "evaluate": ("ehrfm.evaluate.cli", "metrics with CIs, calibration, subgroups, baselines"),
    "register": ("ehrfm.serve.register_cli", "register a run's model in the MLflow registry"),
    "score": ("ehrfm.serve.score_cli", "batch-score a population with a registered model (Spark)"),
    "demo": ("ehrfm.demo", "the end-to-end demo on the embedded defaults"),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every stage whose module is installed."""
    parser = argparse.ArgumentParser(prog="ehrfm", description="EHR foundation-model toolkit")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>")
    for name, (module, help_text) in STAGES.items():
        try:
            available = _available(module)
        except ModuleNotFoundError:
            available = False
        if not available:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ehrfm`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
