"""End to end without Spark: the generated FHIR -> the one-patient FHIR mapper -> the label engine on
tasks/*.yaml gives back exactly the planted outcomes of the truth table."""

from __future__ import annotations

import pandas as pd

from ehrfm.synth import SynthConfig, simulate
from ehrfm.synth.fhir import medication_lines, patient_lines
from ehrfm.synth.record import MORTALITY_TASK, READMISSION_TASK
from ehrfm.synth.truth import truth_table

N, SEED = 150, 21


def test_label_engine_reproduces_the_truth() -> None:
    from ehrfm.ingest.fhir.bundle import bundle_to_events
    from ehrfm.labels.direct import label_events
    from ehrfm.labels.parse import load_tasks

    cfg = SynthConfig(seed=SEED)
    meds = medication_lines()
    frames, truth_rows = [], []
    for i in range(N):
        rec = simulate(cfg, i)
        truth_rows += [(rec.id, t) for t in rec.truth]
        text = "\n".join(meds + [line for lines in patient_lines(rec).values() for line in lines])
        result = bundle_to_events(text, validate="none", source_file=f"patient-{rec.id}.ndjson")
        assert result.rejects.num_rows == 0, result.rejects.to_pylist()[:3]
        frames.append(result.events_df())
    events = pd.concat(frames, ignore_index=True)
    labels = label_events(events, load_tasks([READMISSION_TASK, MORTALITY_TASK]))
    truth = truth_table(truth_rows).to_pandas()
    for task in (READMISSION_TASK, MORTALITY_TASK):
        lab = labels[task].to_pandas()
        tr = truth[truth.task == task]
        m = tr.merge(lab, on=["subject_id", "prediction_time"], how="outer", indicator=True)
        both = m[m["_merge"] == "both"]
        assert (m["_merge"] != "right_only").all(), f"{task}: labels at times the truth has no index event"
        assert (both["outcome"].astype(int) == both["boolean_value"].astype(int)).all(), task
        assert both["outcome"].sum() > 0 and len(both) >= 0.9 * len(tr), (task, len(both), len(tr))
        # the label engine censors follow-up at a patient's last event: only late negatives can be missing
        missing = m[m["_merge"] == "left_only"]
        assert (missing["outcome"] == 0).all(), task
