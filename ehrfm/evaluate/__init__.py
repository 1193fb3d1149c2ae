"""Evaluation: metrics with subject-cluster bootstrap CIs, calibration, time-to-event metrics, forecasting,
subgroups, supervised baselines and reports (no torch, no MLflow: the caller logs the report files).

Predictions contract (a parquet file or DataFrame; one row per (model, task, subject_id, prediction_time)):

==================  ====================  ====================================================================
column              type                  meaning
==================  ====================  ====================================================================
subject_id          int64                 as in the labels
prediction_time     timestamp[us]         as in the labels (rows are joined to labels on these two columns)
task                string                task name = labels file stem (``<labels>/<task>.parquet``)
split               string                train / tuning / held_out (informative; the split used is the
                                          subject's split from ``metadata/subject_splits.parquet``)
model               string                model name, e.g. ``ehrfm-mamba``; baselines use ``baseline_*``
prob                float64               binary tasks: P(label = 1) in [0, 1]
prob_raw            float64               optional: ``prob`` before post-hoc calibration (the report then
                                          shows Brier/ECE and reliability before and after)
risk                float64               time-to-event: higher = earlier event (used for concordance)
risk_raw            float64               optional: ``risk`` before post-hoc calibration (informative)
survival            list<float64>         time-to-event: S(t) at each of ``times_days`` (non-increasing)
times_days          list<float64>         time-to-event: the increasing grid of ``survival``, same for a model
topk_codes          list<string>          forecasting: predicted codes, most likely first
topk_probs          list<float64>         forecasting: their probabilities (optional)
==================  ====================  ====================================================================

A time-to-event model gives ``risk`` and/or ``survival``+``times_days``; without ``risk`` the risk score is
minus the restricted mean survival over the grid. Predictions for the TUNING split are used to choose the
binary decision threshold (``youden`` or ``max_f1``); metrics are reported on the held-out split.
"""

from __future__ import annotations

from ehrfm.evaluate.baselines import BaselineConfig, run_baselines
from ehrfm.evaluate.binary import (
    auprc,
    auroc,
    binary_metrics,
    brier,
    choose_threshold,
    ece,
    reliability_curve,
)
from ehrfm.evaluate.bootstrap import MetricValue, bootstrap_metrics, cluster_resample_indices
from ehrfm.evaluate.features import CountFeaturizer
from ehrfm.evaluate.forecast import forecast_metrics, frequency_baseline, precision_recall_at_k
from ehrfm.evaluate.report import ModelResult, Report, ReportConfig, TaskResult, build_report
from ehrfm.evaluate.subgroups import subgroup_attributes, subgroup_table
from ehrfm.evaluate.survival import harrell_c, kaplan_meier, tte_metrics

__all__ = [
    "BaselineConfig", "CountFeaturizer", "MetricValue", "ModelResult", "Report", "ReportConfig", "TaskResult",
    "auprc", "auroc", "binary_metrics", "bootstrap_metrics", "brier", "build_report", "choose_threshold",
    "cluster_resample_indices", "ece", "forecast_metrics", "frequency_baseline", "harrell_c", "kaplan_meier",
    "precision_recall_at_k", "reliability_curve", "run_baselines", "subgroup_attributes", "subgroup_table",
    "tte_metrics",
]
