"""``ehrfm register``: package a finetuned model as an MLflow pyfunc, register a version, set an alias.

    ehrfm register --run <finetune output dir | model dir | MLflow run id> --name ehrfm --alias champion \
        [--tokens <tokens dir with bins.json>] [--tracking-uri sqlite:///runs/mlflow.db]

Then serve it: ``mlflow models serve -m models:/ehrfm@champion --env-manager local -p 5001``.
"""

from __future__ import annotations

import argparse
import time

from ehrfm.serve.core import Limits, ServeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ehrfm register``."""
    parser.add_argument("--run", required=True,
                        help="finetuned model folder, `ehrfm finetune` output folder, or an MLflow run id")
    parser.add_argument("--name", default="ehrfm", help="registered model name (default ehrfm)")
    parser.add_argument("--alias", default="champion", help="alias to point at the new version ('' for none)")
    parser.add_argument("--tokens", default=None, help="tokens folder with bins.json/tokenize.json (when the model "
                        "folder has no bins.json)")
    parser.add_argument("--bins", default=None, help="explicit bins.json")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///<--store-dir>/mlflow.db)")
    parser.add_argument("--store-dir", default=".", help="folder of the default sqlite store and mlartifacts/")
    parser.add_argument("--experiment", default="ehrfm-register", help="experiment of the packaging run (folder input)")
    parser.add_argument("--max-len", type=int, default=None, help="tokens kept per row at serving (default: the "
                        "finetuning data.max_len, else 512)")
    parser.add_argument("--max-request-bytes", type=int, default=Limits.max_request_bytes,
                        help="largest bundle/events JSON accepted per row")
    parser.add_argument("--max-events", type=int, default=Limits.max_events, help="most events per patient")
    parser.add_argument("--max-patients", type=int, default=Limits.max_patients, help="most rows per request")
    parser.add_argument("--no-validate", action="store_true", help="skip FHIR structural validation at serving")


def _config(args: argparse.Namespace) -> ServeConfig | None:
    custom = (args.max_len is not None or args.no_validate or args.max_request_bytes != Limits.max_request_bytes
              or args.max_events != Limits.max_events or args.max_patients != Limits.max_patients)
    if not custom:
        return None  # let build_serving_dir read max_len / tokenizer config from the run's files
    cfg = ServeConfig(limits=Limits(args.max_request_bytes, args.max_events, args.max_patients),
                      validate="none" if args.no_validate else "full")
    if args.max_len is not None:
        cfg.max_len = args.max_len
    return cfg


def run(args: argparse.Namespace) -> int:
    """Register and print the model URI to serve."""
    from ehrfm.serve.register import register

    t0 = time.time()
    reg = register(args.run, args.name, args.alias or None, tracking_uri=args.tracking_uri, store_dir=args.store_dir,
                   experiment=args.experiment, tokens_dir=args.tokens, bins=args.bins, config=_config(args))
    print(f"registered {reg.name} version {reg.version}" + (f", alias {reg.alias}" if reg.alias else ""))
    print(f"  logged model : {reg.model_uri} (run {reg.run_id})")
    print(f"  store        : {reg.tracking_uri}")
    print(f"  serve with   : MLFLOW_TRACKING_URI={reg.tracking_uri} mlflow models serve -m {reg.serve_uri} "
          f"--env-manager local -h 127.0.0.1 -p 5001")
    print(f"done in {time.time() - t0:.1f} s")
    return 0
