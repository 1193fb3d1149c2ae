"""``ehrfm score``: batch-score a population with a registered model on Spark.

    ehrfm score --model models:/ehrfm@champion --tokens <tokens dir> --output <parquet dir> [--splits held_out]
    ehrfm score --model models:/ehrfm@champion --meds <MEDS dir> --output <parquet dir> [--prediction-time ...]

Output: parquet in the evaluation predictions contract (see :mod:`ehrfm.evaluate`); ``ehrfm evaluate``
reads it directly. Same code under ``spark-submit etl/score.py ...``.
"""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ehrfm score``."""
    parser.add_argument("--model", required=True,
                        help="MLflow model URI (models:/ehrfm@champion, runs:/...) or a local serving/model folder")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="tokens folder: scores the task rows of tasks/<task>/ (their prediction_time)")
    src.add_argument("--meds", help="MEDS dataset folder (data/*.parquet): scores every subject at --prediction-time")
    parser.add_argument("--output", required=True, help="output parquet folder (overwritten)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task of the model)")
    parser.add_argument("--splits", default=None, help="--tokens: comma-separated splits to score (default all)")
    parser.add_argument("--prediction-time", default=None,
                        help="--meds: one ISO time for everyone (default: each subject's last event, as served)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store of a models:/ URI (default $MLFLOW_TRACKING_URI)")


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def run(args: argparse.Namespace) -> int:
    """Resolve the model, score with Spark, write parquet, print per-task counts."""
    if args.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
    from ehrfm.serve.score import local_serving_dir, score_meds, score_tokens, write_predictions
    from ehrfm.spark import get_spark

    t0 = time.time()
    folder = local_serving_dir(args.model)
    print(f"model {args.model} -> {folder}")
    spark = get_spark("ehrfm-score")
    if args.tokens:
        df = score_tokens(spark, folder, args.tokens, _split(args.tasks), _split(args.splits))
    else:
        df = score_meds(spark, folder, args.meds, args.prediction_time, _split(args.tasks))
    summary = write_predictions(df, args.output)
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"{int(summary['rows'].sum())} predictions in {time.time() - t0:.1f} s -> {args.output}")
    return 0
