"""``ehrfm pretrain --config configs/pretrain/tiny.yaml --data <tokens dir> --output <run dir> [--set k=v ...]``."""

from __future__ import annotations

import argparse
import json

from ehrfm.models.config import config_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the pretrain options."""
    parser.add_argument("--config", default=str(config_dir() / "pretrain" / "tiny.yaml"),
                        help="pretraining YAML (default: configs/pretrain/tiny.yaml)")
    parser.add_argument("--data", required=True, help="tokens directory: vocab.json + pretrain/*.parquet")
    parser.add_argument("--output", required=True, help="run directory (model/, checkpoints/, mlflow.db)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set trainer.max_steps=500 --set model.backbone=mamba2")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue from CKPT, or from <output>/checkpoints/last.ckpt when given without a value")
    parser.add_argument("--standin", action="store_true",
                        help="first write a stand-in token dataset into --data (until real tokens exist)")


def run(args: argparse.Namespace) -> int:
    """Train and print a summary."""
    from ehrfm.train.config import load_pretrain_config

    try:
        cfg = load_pretrain_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"ehrfm pretrain: {exc}") from None
    if args.standin:
        from ehrfm.data.standin import write_standin

        write_standin(args.data)
    from ehrfm.train.pretrain_run import run_pretraining

    summary = run_pretraining(cfg, args.data, args.output, resume=args.resume)
    if summary["global_rank"] != 0:  # under DDP only rank zero reports
        return 0
    print(json.dumps(summary, indent=2))
    print(f"model: {args.output}/model  checkpoints: {args.output}/checkpoints")
    return 0
