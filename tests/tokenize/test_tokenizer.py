"""Layout, streams, cut, truncation and label columns of the per-patient tokenizer (hand-made frames)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tok_helpers import frame, patient, tokens

from ehrfm.config.base import ConfigError
from ehrfm.prepare.bins import Bins
from ehrfm.schema import TOKENS_SCHEMA, TokenType
from ehrfm.tokenize import TokenizerConfig, interval_token, tokenize_for_prediction, tokenize_subject
from ehrfm.tokenize.direct import rows_to_table, tokens_equal
from ehrfm.vocab import Vocabulary

CFG = TokenizerConfig()
VISIT1 = ["[VS]", "LAB//A", "[Q0]", "[VE]", "[REG]"]
VISIT2 = ["[VS]", "ENCOUNTER//INPATIENT//START", "DIAGNOSIS//X", "LAB//A", "[Q2]",
          "ENCOUNTER//INPATIENT//END", "[VE]", "[REG]"]
VISIT3 = ["[VS]", "ENCOUNTER//INPATIENT//START", "LAB//A", "[Q3]", "DIAGNOSIS//Y",
          "ENCOUNTER//INPATIENT//END", "[VE]", "[REG]"]


def labels(*times: str, task: str = "t1", **cols: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": 1, "task": task, "prediction_time": pd.to_datetime(list(times)),
                         **cols})


def test_pretrain_row_layout_and_streams(vocab: Vocabulary, bins: Bins) -> None:
    [row] = tokenize_subject(patient(), vocab, bins, CFG, split="train")
    assert tokens(row, vocab) == ["[CLS]", "GENDER//F", *VISIT1, "[W0]", *VISIT2, "[M1]", *VISIT3]
    assert row["task"] is None and row["prediction_time"] is None and row["split"] == "train"
    n = row["length"]
    for k in ("concept_ids", "type_ids", "ages", "times", "visit_orders", "visit_segments", "values"):
        assert len(row[k]) == n, k
    types = row["type_ids"].tolist()
    assert types[:2] == [TokenType.SPECIAL, TokenType.STATIC]
    assert types[2:7] == [TokenType.VISIT_START, TokenType.CODE, TokenType.VALUE_BIN, TokenType.VISIT_END,
                          TokenType.REGISTER]
    assert types[7] == TokenType.INTERVAL
    assert row["visit_orders"].tolist()[:8] == [0, 0, 1, 1, 1, 1, 1, 1]
    assert row["visit_segments"].tolist()[:9] == [0, 0, 1, 1, 1, 1, 1, 0, 2]
    assert row["visit_segments"].tolist()[-1] == 1  # third visit
    # times: days since 1970 of each token's event; ages in years from MEDS_BIRTH
    lab_day = (pd.Timestamp("2020-01-01 08:00") - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)
    assert row["times"][3] == pytest.approx(lab_day, abs=0.01)
    assert row["times"][0] == row["times"][2]  # leading tokens take the first visit's time
    assert row["ages"][3] == pytest.approx(60.0, abs=0.01)
    assert np.all(np.diff(row["times"]) >= 0) and np.all(np.diff(row["ages"]) >= 0)


def test_exact_values_ride_on_their_bin_tokens(vocab: Vocabulary, bins: Bins) -> None:
    # LAB//A cut at 2, 4, 6: centre 4, spread 6 - 2 = 4, so 1.0 -> -0.75, 5.0 -> 0.25, 9.0 -> 1.25
    [row] = tokenize_subject(patient(), vocab, bins, CFG, split="train")
    is_bin = row["type_ids"] == TokenType.VALUE_BIN
    np.testing.assert_allclose(row["values"][is_bin], [-0.75, 0.25, 1.25])
    assert np.isnan(row["values"][~is_bin]).all()  # codes (incl. LAB//A itself) and specials carry no value
    # the bin stays coarse, the value does not: 5.0 and 5.9 share [Q2] but not their values
    moved = patient().assign(numeric_value=lambda d: d["numeric_value"].where(d["numeric_value"] != 5.0, 5.9))
    [row2] = tokenize_subject(moved, vocab, bins, CFG, split="train")
    assert row2["concept_ids"].tolist() == row["concept_ids"].tolist()
    assert row2["values"][is_bin][1] == pytest.approx(0.475)
    assert not tokens_equal(rows_to_table([row]), rows_to_table([row2]))
    assert tokens_equal(rows_to_table([row]), rows_to_table([dict(row)]))  # NaN == NaN for this comparison


def test_interval_tokens() -> None:
    assert [interval_token(d) for d in (0, 6.9, 7, 27.9, 28, 59, 60, 364, 365, 4000)] == [
        "[W0]", "[W0]", "[W1]", "[W3]", "[M0]", "[M1]", "[M2]", "[M12]", "[LT]", "[LT]"
    ]


def test_task_row_cut_is_inclusive_and_open_visit_has_no_end(vocab: Vocabulary, bins: Bins) -> None:
    lab = labels("2020-02-15 12:00", "2020-01-06 09:00", "2020-01-02 00:00", "2020-01-03 12:00")
    rows = tokenize_subject(patient(), vocab, bins, CFG, labels=lab, pretrain=False)
    by_time = {str(r["prediction_time"]): tokens(r, vocab) for r in rows}
    # event at exactly prediction_time is seen; the third visit is still open (no END yet)
    assert by_time["2020-02-15 12:00:00"] == ["[TASK:t1]", "GENDER//F", *VISIT1, "[W0]", *VISIT2, "[M1]",
                                              "[VS]", "ENCOUNTER//INPATIENT//START", "LAB//A", "[Q3]",
                                              "[TASK:t1]"]
    # the END at prediction_time closes the visit
    assert by_time["2020-01-06 09:00:00"] == ["[TASK:t1]", "GENDER//F", *VISIT1, "[W0]", *VISIT2, "[TASK:t1]"]
    # an encounter-less visit is open within visit_gap_hours of its last event, closed after
    assert by_time["2020-01-02 00:00:00"] == ["[TASK:t1]", "GENDER//F", "[VS]", "LAB//A", "[Q0]", "[TASK:t1]"]
    assert by_time["2020-01-03 12:00:00"] == ["[TASK:t1]", "GENDER//F", *VISIT1, "[TASK:t1]"]
    for r in rows:
        assert r["type_ids"][0] == TokenType.TASK and r["type_ids"][-1] == TokenType.TASK
        pt_days = (r["prediction_time"] - pd.Timestamp(0)) / pd.Timedelta(days=1)
        assert r["times"][-1] == pytest.approx(pt_days, abs=0.01)


def test_label_columns(vocab: Vocabulary, bins: Bins) -> None:
    lab = pd.concat(
        [
            labels("2020-01-06 09:00", boolean_value=[True]),
            labels("2020-01-06 09:00", task="t2", duration_days=[40.5], event=[1],
                   target_codes=[["DIAGNOSIS//Y", "NOPE", "DIAGNOSIS//Y"]]),
        ]
    )
    r1, r2 = tokenize_subject(patient(), vocab, bins, CFG, labels=lab, pretrain=False)
    assert (r1["task"], r1["label"], r1["duration_days"], r1["target_ids"]) == ("t1", 1.0, None, None)
    assert r2["task"] == "t2" and r2["label"] is None and r2["duration_days"] == 40.5 and r2["event"] == 1
    assert r2["target_ids"].tolist() == [vocab.id("DIAGNOSIS//Y")]  # unknown code dropped, duplicates once
    table = rows_to_table([r1, r2])
    assert table.schema == TOKENS_SCHEMA and table.num_rows == 2


def test_input_row_order_does_not_matter(vocab: Vocabulary, bins: Bins) -> None:
    ev = patient()
    lab = labels("2020-02-15 12:00")
    a = tokenize_subject(ev, vocab, bins, CFG, labels=lab)
    b = tokenize_subject(ev.sample(frac=1.0, random_state=3), vocab, bins, CFG, labels=lab)
    assert tokens_equal(rows_to_table(a), rows_to_table(b))


def test_serving_path_equals_task_rows(vocab: Vocabulary, bins: Bins) -> None:
    pt = pd.Timestamp("2020-02-16 00:00")
    served = tokenize_for_prediction(patient(), vocab, bins, CFG, pt, ["t2", "t1"])
    assert [r["task"] for r in served] == ["t2", "t1"]
    batch = tokenize_subject(patient(), vocab, bins, CFG, labels=labels(str(pt), task="t1"), pretrain=False)
    assert tokens_equal(rows_to_table(served[1:]), rows_to_table(batch))


def test_truncation_keeps_lead_and_starts_at_a_visit(vocab: Vocabulary, bins: Bins) -> None:
    [full] = tokenize_subject(patient(), vocab, bins, CFG)
    [cut] = tokenize_subject(patient(), vocab, bins, TokenizerConfig(max_len=12))
    assert tokens(cut, vocab) == ["[CLS]", "GENDER//F", *VISIT3]  # [M1] before it would not start on [VS]
    assert cut["length"] <= 12 and full["length"] > 12
    assert cut["visit_orders"].tolist()[2:] == [1] * 8  # renumbered from 1 inside the row
    assert cut["times"][0] == cut["times"][2]
    # one visit longer than the budget: start inside it behind a re-inserted [VS], never on a value-bin token
    [tiny] = tokenize_subject(patient(), vocab, bins, TokenizerConfig(max_len=8))
    assert tokens(tiny, vocab) == ["[CLS]", "GENDER//F", "[VS]", "DIAGNOSIS//Y", "ENCOUNTER//INPATIENT//END",
                                   "[VE]", "[REG]"]
    [tiny] = tokenize_subject(patient(), vocab, bins, TokenizerConfig(max_len=9))
    assert tokens(tiny, vocab) == ["[CLS]", "GENDER//F", "[VS]", "LAB//A", "[Q3]", "DIAGNOSIS//Y",
                                   "ENCOUNTER//INPATIENT//END", "[VE]", "[REG]"]
    assert tiny["visit_orders"].tolist() == [0, 0] + [1] * 7 and tiny["visit_segments"].tolist()[2] == 1
    assert tiny["times"][2] == tiny["times"][3]  # the re-inserted [VS] takes the first kept event's time


def test_long_rows_work_at_8192(vocab: Vocabulary, bins: Bins) -> None:
    n = 6000
    times = pd.date_range("2010-01-01", periods=n, freq="3D")
    ev = frame(5, [("1950-01-01", "MEDS_BIRTH")] + [(t, "LAB//A", float(i % 8)) for i, t in enumerate(times)])
    [row] = tokenize_subject(ev, vocab, bins, TokenizerConfig(max_len=8192))
    assert row["length"] <= 8192 and row["length"] > 8000
    assert tokens(row, vocab)[1] == "[VS]"
    assert np.all(np.diff(row["times"]) >= 0)


def test_visit_grouping_without_encounter_ids(vocab: Vocabulary, bins: Bins) -> None:
    ev = frame(2, [("2020-01-01 00:00", "LAB//A", 1.0), ("2020-01-01 20:00", "LAB//A", 3.0),
                   ("2020-01-02 19:00", "LAB//A", 5.0), ("2020-01-10", "DIAGNOSIS//X")])
    [row] = tokenize_subject(ev, vocab, bins, CFG)
    assert tokens(row, vocab) == ["[CLS]", "[VS]", "LAB//A", "[Q0]", "LAB//A", "[Q1]", "LAB//A", "[Q2]",
                                  "[VE]", "[REG]", "[W1]", "[VS]", "DIAGNOSIS//X", "[VE]", "[REG]"]
    assert row["ages"].tolist() == [0.0] * row["length"]  # no MEDS_BIRTH: ages are 0


def test_unknown_codes_and_timed_demographics(vocab: Vocabulary, bins: Bins) -> None:
    ev = frame(3, [("2020-01-01", "RACE//WHITE"), ("2020-01-01", "WEIRD//CODE", 3.0),
                   ("2021-01-01", "RACE//OTHER")])
    lab = pd.DataFrame({"subject_id": [3], "task": ["t1"], "prediction_time": [pd.Timestamp("2020-06-01")]})
    [pre, task] = tokenize_subject(ev, vocab, bins, CFG, labels=lab)
    # race codes are not in the vocabulary
    assert tokens(pre, vocab) == ["[CLS]", "[UNK]", "[UNK]", "[VS]", "[UNK]", "[VE]", "[REG]"]
    # the later RACE event is not hoisted
    assert task["type_ids"].tolist() == [TokenType.TASK, TokenType.STATIC, TokenType.VISIT_START,
                                         TokenType.CODE, TokenType.VISIT_END, TokenType.REGISTER,
                                         TokenType.TASK]


def test_bad_input_names_field_and_subject(vocab: Vocabulary, bins: Bins) -> None:
    ev = patient()
    ev.loc[3, "code"] = None
    with pytest.raises(ValueError, match="code is null for subject_id=1"):
        tokenize_subject(ev, vocab, bins, CFG)
    with pytest.raises(ValueError, match="subject_id must hold exactly one subject"):
        tokenize_subject(pd.concat([patient(1), patient(2)]), vocab, bins, CFG)
    with pytest.raises(ValueError, match="max_len"):
        TokenizerConfig(max_len=2)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['max_length'\]"):
        TokenizerConfig.from_dict({"max_length": 5})


@pytest.mark.parametrize("nan", [float("nan"), np.float32("nan"), np.float64("nan"), None, pd.NA])
def test_label_fields_treat_every_missing_float_as_null(nan: object) -> None:
    """A label file's ``float_value`` arrives as numpy float32: its NaN is a missing label, not NaN."""
    from ehrfm.tokenize.tokenizer import _label_fields
    from ehrfm.vocab import Vocabulary

    vocab = Vocabulary.build(["A"])
    row = pd.Series({"boolean_value": None, "float_value": nan, "integer_value": None, "duration_days": nan,
                     "event": None})
    fields = _label_fields(row, vocab)
    assert fields["label"] is None and fields["duration_days"] is None
    assert _label_fields(pd.Series({"float_value": np.float32(2.5)}), vocab)["label"] == 2.5
