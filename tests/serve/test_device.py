"""Where serving runs the model: the CPU unless ``$EHRFM_SERVE_DEVICE`` (or the caller) names another device;
a GPU that is not there is a clear error, never a silent CPU run. On a GPU machine (``-m gpu``) the served
predictions and explanations equal the CPU's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ehrfm.config.base import ConfigError
from ehrfm.devices import resolve_device, to_device
from ehrfm.serve.core import DEVICE_ENV, Scorer
from ehrfm.serve.pyfunc import predict_frame


def test_the_cpu_unless_told(serving_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    s = Scorer(serving_dir)
    assert s.device == torch.device("cpu")
    assert {p.device for p in [*s.fm.model.parameters(), *s.fm.heads.parameters()]} == {torch.device("cpu")}
    monkeypatch.setenv(DEVICE_ENV, "auto")
    assert Scorer(serving_dir).device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_a_missing_gpu_is_an_error_naming_where_it_was_asked(serving_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(ConfigError, match=r"\$EHRFM_SERVE_DEVICE='cuda': no CUDA GPU is visible"):
        Scorer(serving_dir)
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    with pytest.raises(ConfigError, match=r"device='gpu': expected cpu, cuda, cuda:<n> or auto"):
        Scorer(serving_dir, device="gpu")


def test_resolve_device_and_to_device() -> None:
    assert resolve_device(" CPU ", "x") == torch.device("cpu")
    for bad in ("tpu", "", "cuda:x"):
        with pytest.raises(ConfigError, match="x="):
            resolve_device(bad, "x")
    batch = {"concept_ids": torch.zeros(2, 3, dtype=torch.long), "task": "t", "n": 3}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["concept_ids"] is batch["concept_ids"] and moved["task"] == "t" and moved["n"] == 3


@pytest.mark.gpu
def test_served_on_a_gpu_as_on_the_cpu(serving_dir: Path, bundle_texts: list[str]) -> None:
    """Predictions and explanations of the same requests on CUDA and on the CPU (float tolerance)."""
    request = pd.DataFrame({"bundle": bundle_texts[:2], "explain": ["true", "true"]})
    cpu = predict_frame(Scorer(serving_dir, device="cpu"), request)
    gpu_scorer = Scorer(serving_dir, device="cuda")
    assert next(gpu_scorer.fm.model.parameters()).is_cuda
    gpu = predict_frame(gpu_scorer, request)
    assert list(cpu["task"]) == list(gpu["task"])
    for col in ("prob", "risk"):
        a, b = cpu[col].astype(float).to_numpy(), gpu[col].astype(float).to_numpy()
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, equal_nan=True)
    for a_text, b_text in zip(cpu["explanation"], gpu["explanation"], strict=True):
        if not isinstance(a_text, str):
            assert not isinstance(b_text, str)
            continue
        a, b = json.loads(a_text), json.loads(b_text)
        assert b["converged"] and abs(a["f_input"] - b["f_input"]) < 1e-3
        assert abs(a["sum_attributions"] - b["sum_attributions"]) < 1e-3 + 0.01 * abs(a["sum_attributions"])
        # the same events (by token positions) carry the same attribution; near-ties may swap in the top-k
        on_a = {tuple(e["positions"]): e["attribution"] for e in a["events"]}
        on_b = {tuple(e["positions"]): e["attribution"] for e in b["events"]}
        common = on_a.keys() & on_b.keys()
        assert common and all(abs(on_a[k] - on_b[k]) < 1e-3 + 0.01 * abs(on_a[k]) for k in common)
