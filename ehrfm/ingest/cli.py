"""``ehrfm ingest {fhir,mimic,meds} ...``: one subcommand per source, with shared Spark and split options.

Each source module exposes ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only to
build their parser, and a source whose module cannot be imported is listed as unavailable instead of
breaking ``ehrfm ingest --help``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ehrfm.prepare.splits import parse_ratios

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# source -> (module, one-line help)
SOURCES: dict[str, tuple[str, str]] = {
    "fhir": ("ehrfm.ingest.fhir.cli", "HL7 FHIR R4 Bundles / NDJSON (.json, .ndjson, .gz) -> MEDS"),
    "mimic": ("ehrfm.ingest.mimic.cli", "MIMIC-IV hosp/ + icu/ CSV(.gz) -> MEDS"),
    "meds": ("ehrfm.ingest.meds_input", "an existing MEDS dataset or a MEDS-like events parquet -> MEDS"),
}


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        return parse_ratios(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Spark and split options shared by every source (skips any option the source already defines)."""
    have = set(parser._option_string_actions)
    options: list[tuple[str, dict[str, object]]] = [
        ("--master", {"default": None, "help": "Spark master (default: $EHRFM_SPARK_MASTER or local[*]; "
                                                 "under spark-submit its own master is kept)"}),
        ("--conf", {"action": "append", "default": [], "metavar": "KEY=VALUE", "help": "Spark conf, repeatable"}),
        ("--split-ratios", {"type": _ratios, "default": (0.8, 0.1, 0.1), "metavar": "TRAIN,TUNING,HELD_OUT",
                            "help": "subject split ratios (default 0.8,0.1,0.1)"}),
        ("--split-seed", {"type": int, "default": 0, "help": "seed of the subject-id hash (default 0)"}),
        ("--rows-per-shard", {"type": int, "default": None, "help": "target events per data/ shard (default 2M)"}),
    ]
    for flag, kwargs in options:
        if flag not in have:
            parser.add_argument(flag, **kwargs)  # type: ignore[arg-type]


def parse_conf(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` -> dict; a clear error for an item without ``=``."""
    conf: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--conf expects KEY=VALUE, got {item!r}")
        conf[key.strip()] = value
    return conf


def spark_from_args(args: argparse.Namespace, app_name: str = "ehrfm-ingest") -> SparkSession:
    """The Spark session for an ingest run, honouring ``--master`` and ``--conf``."""
    # Python workers must run this interpreter (it has pyarrow and ehrfm); spark-submit users set their own.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        # Launched by spark-submit: attach to its JVM first, so that SparkConf() inside get_spark sees the
        # submitted --master/--conf (before the gateway exists SparkConf() is an empty dict, and get_spark
        # would then impose local[*] and its defaults over spark-submit's settings).
        from pyspark import SparkContext

        SparkContext._ensure_initialized()
    from ehrfm.spark import get_spark

    return get_spark(app_name, master=getattr(args, "master", None), conf=parse_conf(getattr(args, "conf", [])))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``fhir``, ``mimic`` and ``meds`` subcommands on the ``ingest`` parser."""
    sub = parser.add_subparsers(dest="source", metavar="<source>")
    for name, (module, help_text) in SOURCES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_ingest_module=module, _ingest_error=None)
        try:
            importlib.import_module(module).add_arguments(p)
        except Exception as e:  # a source still being written or missing deps must not break --help
            p.set_defaults(_ingest_error=f"{type(e).__name__}: {e}")
            p.description = f"{help_text} [unavailable: {type(e).__name__}: {e}]"
        add_common_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen source's ``run``."""
    module = getattr(args, "_ingest_module", None)
    if not module:
        print("ehrfm ingest: choose a source: " + ", ".join(SOURCES), file=sys.stderr)
        return 2
    if args._ingest_error:
        print(f"ehrfm ingest {args.source}: unavailable ({args._ingest_error})", file=sys.stderr)
        return 2
    return int(importlib.import_module(module).run(args) or 0)


def job_main(source: str, argv: Sequence[str]) -> int:
    """Main of the ``etl/ingest_<source>.py`` spark-submit jobs: the same options as ``ehrfm ingest <source>``."""
    module_name, help_text = SOURCES[source]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"etl/ingest_{source}.py", description=help_text)
    module.add_arguments(parser)
    add_common_arguments(parser)
    args = parser.parse_args(list(argv))
    args.source = source
    return int(module.run(args) or 0)
