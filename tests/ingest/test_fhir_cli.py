"""``ehrfm ingest fhir`` option handling (no Spark): config file, flag precedence, clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ehrfm.ingest.fhir.cli import add_arguments, resolve_options


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


def test_config_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "fhir.yaml"
    cfg.write_text("input: [a.ndjson]\noutput: out\nvalidate: none\nmax_time: '2030-01-01'\n")
    opts = resolve_options(_parse(["--config", str(cfg), "--validate", "full", "-i", "b.json", "c.json"]))
    assert opts["input"] == ["b.json", "c.json"] and opts["output"] == "out" and opts["validate"] == "full"
    assert opts["max_time_us"] == 1_893_456_000_000_000 and opts["sample_every"] == 50


@pytest.mark.parametrize(
    ("argv", "config", "message"),
    [(["--output", "o"], None, "--input is required"),
     (["-i", "x"], None, "--output is required"),
     (["-i", "x", "-o", "o", "--max-time", "soon"], None, "--max-time"),
     ([], "inputs: [x]\n", "unknown option"),
     ([], "validate: sometimes\ninput: x\noutput: o\n", "validate must be")],
)
def test_bad_options_are_named(tmp_path: Path, argv: list[str], config: str | None, message: str) -> None:
    if config is not None:
        (tmp_path / "c.yaml").write_text(config)
        argv = [*argv, "--config", str(tmp_path / "c.yaml")]
    with pytest.raises(ValueError, match=message):
        resolve_options(_parse(argv))
