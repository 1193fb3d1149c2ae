"""Typed stage configurations (no torch, Spark, MLflow or sklearn imports anywhere in this package).

Every stage is ``run(cfg: <Stage>Config, layout: Layout) -> <Stage>Summary``; the configs here are what the
CLI (``ehrfm <stage> --help``), the etl/ jobs, the demo and the notebooks are built from, so a flag exists
once.
"""

from ehrfm.config.base import ConfigBase, ConfigError, build, parse_overrides, read_mapping

__all__ = ["ConfigBase", "ConfigError", "build", "parse_overrides", "read_mapping"]
