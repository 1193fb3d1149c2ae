"""DESIGN.md separations: ingest/prepare/labels/tokenize know no torch; ops/models/train know no Spark;
only tracking/serve (and the demo/CLI glue) import MLflow."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ehrfm"

FORBIDDEN = {
    "torch": ["ingest", "prepare", "labels", "tokenize", "schema.py", "vocab.py", "spark.py", "synth", "evaluate"],
    "pyspark": ["ops", "models", "train", "data"],
    "mlflow": ["ingest", "prepare", "labels", "tokenize", "ops", "models", "data", "synth", "evaluate"],
    "lightning": ["ingest", "prepare", "labels", "tokenize", "ops", "models", "synth"],
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layers_do_not_import_forbidden_packages() -> None:
    bad = []
    for lib, parts in FORBIDDEN.items():
        for part in parts:
            target = PKG / part
            files = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
            for f in files:
                if f.exists() and lib in _imports(f):
                    bad.append(f"{f.relative_to(PKG.parent)} imports {lib}")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_cli_help_lists_stages() -> None:
    from ehrfm.cli import build_parser

    text = build_parser().format_help()
    assert "ehrfm" in text
