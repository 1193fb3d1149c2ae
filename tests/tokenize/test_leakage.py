"""No leakage by construction: events planted after each prediction time never reach the task rows."""

from __future__ import annotations

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tok_helpers import frame

from ehrfm.prepare.bins import Bins
from ehrfm.prepare.vocab import build_vocab
from ehrfm.tokenize import TokenizerConfig, tokenize_subject
from ehrfm.tokenize.direct import rows_to_table, tokens_equal

BASE = pd.Timestamp("2020-01-01")
# includes visit-end codes, demographics (hoisted to the static block when seen) and death
CODES = ["LAB//A", "LAB//B", "DIAGNOSIS//X", "ENCOUNTER//INPATIENT//START", "ENCOUNTER//INPATIENT//END",
         "RACE//WHITE", "GENDER//F", "MEDS_DEATH", "RARE//CODE"]
VOCAB = build_vocab({c: 10 for c in CODES[:-1]}, min_count=1, n_bins=4, tasks=["t1", "t2"])
BINS = Bins(n_bins=4, edges={"LAB//A": [2.0, 4.0, 6.0], "LAB//B": [0.0]})

event = st.tuples(
    st.integers(0, 24 * 120),  # hours after BASE
    st.sampled_from(CODES),
    st.one_of(st.none(), st.floats(-5, 10, allow_nan=False)),
    st.one_of(st.none(), st.sampled_from(["e1", "e2", "e3"])),
)


def _rows(events: list[tuple], pts: list[pd.Timestamp], cfg: TokenizerConfig) -> list[dict]:
    ev = frame(7, [("1970-05-05", "MEDS_BIRTH"), (None, "GENDER//F")]
               + [(BASE + pd.Timedelta(hours=h), c, v, e) for h, c, v, e in events])
    lab = pd.DataFrame({"subject_id": 7, "task": ["t1", "t2"] * len(pts),
                        "prediction_time": [p for p in pts for _ in (0, 1)],
                        "boolean_value": [True, False] * len(pts)})
    return tokenize_subject(ev, VOCAB, BINS, cfg, labels=lab, pretrain=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(event, min_size=0, max_size=40),
    planted=st.lists(event, min_size=1, max_size=15),
    pt_hours=st.lists(st.integers(0, 24 * 120), min_size=1, max_size=3),
    max_len=st.sampled_from([12, 40, 2048]),
)
def test_events_after_prediction_time_never_reach_task_rows(events, planted, pt_hours, max_len) -> None:
    cfg = TokenizerConfig(max_len=max_len)
    pts = [BASE + pd.Timedelta(hours=h, minutes=30) for h in pt_hours]
    clean = _rows(events, pts, cfg)
    for p in pts:
        # plant after THIS prediction time only (strictly later), then compare the rows cut at p
        after = [((p - BASE) / pd.Timedelta(hours=1) + 1 + h, c, v, e) for h, c, v, e in planted]
        dirty = _rows(events + after, pts, cfg)
        keep = [i for i, r in enumerate(clean) if r["prediction_time"] == p]
        assert tokens_equal(rows_to_table([clean[i] for i in keep]), rows_to_table([dirty[i] for i in keep]))
        for i in keep:  # the cut really is at p: no token is later than the prediction time
            assert clean[i]["times"].max() <= (p - pd.Timestamp(0)) / pd.Timedelta(days=1) + 1e-3


def test_planted_event_is_visible_without_the_cut() -> None:
    """Sanity check that the property test could fail: the pretraining row DOES see the planted event."""
    ev = frame(7, [("2020-01-01", "LAB//A", 1.0)])
    planted = pd.concat([ev, frame(7, [("2020-03-01", "DIAGNOSIS//X")])])
    lab = pd.DataFrame({"subject_id": [7], "task": ["t1"], "prediction_time": [pd.Timestamp("2020-02-01")]})
    a = tokenize_subject(ev, VOCAB, BINS, TokenizerConfig(), labels=lab)
    b = tokenize_subject(planted, VOCAB, BINS, TokenizerConfig(), labels=lab)
    assert not tokens_equal(rows_to_table(a[:1]), rows_to_table(b[:1]))  # pretraining rows differ
    assert tokens_equal(rows_to_table(a[1:]), rows_to_table(b[1:]))  # task rows do not
