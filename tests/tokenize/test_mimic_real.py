"""Real data: the MIMIC-IV demo ingested by the project's own ingest, labelled by the label engine,
prepared and tokenized (Spark), then checked against the token-stream invariants."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ehrfm.cli import main
from ehrfm.layout import TokenPaths
from ehrfm.schema import PREDICTION_TIME, SPLITS, TokenType
from ehrfm.tokenize import read_tokenizer_config
from ehrfm.tokenize.direct import read_tokens
from ehrfm.vocab import Vocabulary

# a subset of tables keeps the ingest inside the test budget: encounters, demographics, diagnoses and
# numeric labs
TABLES = {"hosp": ["admissions", "patients", "diagnoses_icd", "labevents"]}
TASKS = ["mortality_inhospital", "readmission_30d", "death_1y_tte", "next_visit_codes"]
MAX_LEN = 512


@pytest.fixture(scope="module")
def tokens_dir(mimic_demo: Path, spark: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from ehrfm.ingest.mimic.ingest import ingest_mimic
    from ehrfm.labels import load_tasks
    from ehrfm.labels.dataset import label_dataset

    root = tmp_path_factory.mktemp("mimic_tok")
    for sub, tables in TABLES.items():
        (root / "raw" / sub).mkdir(parents=True)
        for t in tables:
            shutil.copy(mimic_demo / sub / f"{t}.csv.gz", root / "raw" / sub)
    ingest_mimic(spark, str(root / "raw"), str(root / "meds"))  # type: ignore[arg-type]
    label_dataset(spark, root / "meds", load_tasks(TASKS), root / "labels")  # type: ignore[arg-type]
    layout = ["--meds", str(root / "meds"), "--labels", str(root / "labels"),
              "--tokens", str(root / "tokens")]
    assert main(["prepare", *layout]) == 0  # prompt tokens of every packaged task
    assert main(["tokenize", *layout, "--tasks", f"[{','.join(TASKS)}]",
                 "--tokenizer.max_len", str(MAX_LEN)]) == 0
    yield root / "tokens"


def _check_row(r: dict[str, Any], vocab: Vocabulary) -> None:
    n = r["length"]
    assert 0 < n <= MAX_LEN
    for k in ("concept_ids", "type_ids", "ages", "times", "visit_orders", "visit_segments"):
        assert len(r[k]) == n, k
    toks = [vocab.token(i) for i in r["concept_ids"]]
    types = np.asarray(r["type_ids"])
    if r["task"] is None:
        assert toks[0] == "[CLS]"
    else:
        assert toks[0] == toks[-1] == f"[TASK:{r['task']}]"
        pt_days = (np.datetime64(r[PREDICTION_TIME], "us") - np.datetime64(0, "us")) / np.timedelta64(1, "D")
        assert max(r["times"]) <= pt_days + 1e-2  # nothing after the prediction time
    # visits balanced: [VS] ... [VE] [REG] with no nesting; only a task row's last visit may stay open
    open_visit = False
    for i, t in enumerate(toks):
        if t == "[VS]":
            assert not open_visit, (i, toks[max(0, i - 5) : i + 1])
            open_visit = True
        elif t == "[VE]":
            assert open_visit and toks[i + 1] == "[REG]"
            open_visit = False
        elif types[i] in (TokenType.CODE, TokenType.VALUE_BIN):
            assert open_visit
    assert not open_visit or r["task"] is not None
    dyn = np.flatnonzero(~np.isin(types, [TokenType.STATIC, TokenType.SPECIAL, TokenType.TASK]))
    if len(dyn):
        assert toks[dyn[0]] == "[VS]"  # truncation starts on a visit boundary
        assert np.all(np.diff(np.asarray(r["ages"])[dyn]) >= 0)
    assert np.all(np.diff(np.asarray(r["times"], dtype=np.float64)) >= 0)
    segs, orders = np.asarray(r["visit_segments"]), np.asarray(r["visit_orders"])
    assert np.all(np.diff(orders) >= 0) and set(np.unique(segs)) <= {0, 1, 2}


@pytest.mark.spark
@pytest.mark.slow
def test_mimic_demo_token_invariants(tokens_dir: Path) -> None:
    paths = TokenPaths(tokens_dir)
    vocab = Vocabulary.load(paths.vocab)
    assert read_tokenizer_config(tokens_dir).max_len == MAX_LEN
    pre = read_tokens(paths.pretrain)
    assert pre.num_rows == 100  # every demo patient has events
    tables: dict[str | None, pa.Table] = {None: pre}
    for t in TASKS:
        tables[t] = read_tokens(paths.task(t))
        assert tables[t].num_rows > 0, t
    assert tables["death_1y_tte"].column("duration_days").null_count == 0
    assert any(len(x) for x in tables["next_visit_codes"].column("target_ids").to_pylist() if x)
    for task, table in tables.items():
        assert set(table.column("split").to_pylist()) <= set(SPLITS), task
        for r in table.to_pylist():
            _check_row(r, vocab)
    lengths = np.asarray(pre.column("length").to_pylist())
    assert lengths.max() == MAX_LEN or lengths.max() > MAX_LEN - 50  # long records were truncated
