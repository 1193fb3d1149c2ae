"""Write a synthetic population: FHIR R4 NDJSON per resource type, the truth table and a summary.

Layout of ``<output>/`` (a pipeline's ``Layout.synthetic_dir``)::

    Patient.ndjson Encounter.ndjson Condition.ndjson Observation.ndjson
    MedicationRequest.ndjson Procedure.ndjson Medication.ndjson     (``.ndjson.gz`` with gzip=True)
    truth/index_events.parquet   truth/summary.yaml     (ehrfm.layout.SYNTH_TRUTH, SYNTH_SUMMARY)

Patient ``i`` (0-based) depends only on (seed, i), so the files of N patients are a byte prefix of the
files of M > N patients with the same seed (uncompressed; with gzip the decompressed text is).
"""

from __future__ import annotations

import gzip
import io
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq

from ehrfm.config.synth import SynthConfig, SynthSummary
from ehrfm.layout import SYNTH_SUMMARY
from ehrfm.synth.fhir import RESOURCE_TYPES, medication_lines, patient_lines
from ehrfm.synth.record import MORTALITY_TASK, READMISSION_TASK, TruthRow
from ehrfm.synth.timeline import simulate
from ehrfm.synth.truth import TRUTH_FILE, auroc, truth_table

# not .json: FHIR readers given the population folder search it recursively for *.json Bundles
SUMMARY_FILE = Path(SYNTH_SUMMARY)


def _open(path: Path, compress: bool) -> IO[str]:
    if compress:
        # mtime=0 and no file name in the header: identical bytes on every run
        raw = open(path.with_name(path.name + ".gz"), "wb")  # noqa: SIM115 (closed by the caller)
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
        return io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
    return open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115


def population_files(folder: str | Path) -> list[Path]:
    """The NDJSON files (plain or .gz) of a population folder, sorted (truth/ excluded)."""
    out = Path(folder)
    files = [p for rt in RESOURCE_TYPES for p in out.glob(f"{rt}.*") if _is_ours(p.name, rt)]
    return sorted(files)


def _is_ours(name: str, rt: str) -> bool:
    """``<rt>.ndjson[.gz]`` or a shard ``<rt>.<digits>.ndjson[.gz]``."""
    rest = name[len(rt) + 1:].removesuffix(".gz").removesuffix("ndjson")
    return name.startswith(rt + ".") and name.removesuffix(".gz").endswith(".ndjson") and (
        rest == "" or (rest.endswith(".") and rest[:-1].isdigit()))


class _Sink:
    """One output stream per resource type; with ``per_file`` a new shard every ``per_file`` patients
    (like a FHIR bulk export's several files per type), so readers can split the work by file."""

    def __init__(self, out: Path, compress: bool, per_file: int) -> None:
        self.out, self.compress, self.per_file = out, compress, per_file
        self.files: dict[str, IO[str]] = {}
        self.shard = -1

    def for_patient(self, index: int) -> dict[str, IO[str]]:
        shard = index // self.per_file if self.per_file else 0
        if shard != self.shard:
            self.close(keep=("Medication",))
            suffix = f".{shard:03d}.ndjson" if self.per_file else ".ndjson"
            for rt in RESOURCE_TYPES:
                if rt != "Medication":
                    self.files[rt] = _open(self.out / f"{rt}{suffix}", self.compress)
            self.shard = shard
        return self.files

    def close(self, keep: tuple[str, ...] = ()) -> None:
        for rt in [r for r in self.files if r not in keep]:
            self.files.pop(rt).close()


def generate(cfg: SynthConfig, output: str | Path) -> SynthSummary:
    """Generate the population ``cfg`` into the folder ``output``; returns (and saves) its summary.

    ``cfg.patients_per_file`` > 0 writes shards ``<Type>.000.ndjson``, ``<Type>.001.ndjson``, ... of that
    many patients each (``Medication.ndjson`` stays one file). The folder is created; existing
    population files in it are removed first.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    n_patients, compress = cfg.n_patients, cfg.gzip
    out = Path(output)
    (out / TRUTH_FILE).parent.mkdir(parents=True, exist_ok=True)
    for stale in population_files(out):  # no file of an earlier layout or compression may remain
        stale.unlink()
    sink = _Sink(out, compress, cfg.patients_per_file)
    counts: Counter[str] = Counter()
    enc_classes: Counter[str] = Counter()
    truth_rows: list[tuple[str, TruthRow]] = []
    deaths = in_hospital = 0
    try:
        meds = medication_lines()
        sink.files["Medication"] = _open(out / "Medication.ndjson", compress)
        sink.files["Medication"].write("\n".join(meds) + "\n")
        counts["Medication"] = len(meds)
        bar = _progress(n_patients, cfg.progress)
        for i in range(n_patients):
            rec = simulate(cfg, i)
            files = sink.for_patient(i)
            for rt, lines in patient_lines(rec).items():
                if lines:
                    files[rt].write("\n".join(lines))
                    files[rt].write("\n")
                    counts[rt] += len(lines)
            enc_classes.update(e.cls for e in rec.encounters)
            truth_rows.extend((rec.id, t) for t in rec.truth)
            deaths += rec.death is not None
            in_hospital += any(e.disposition == "exp" for e in rec.encounters)
            if bar is not None and (i + 1) % 100 == 0:
                bar.update(100)
        if bar is not None:
            bar.update(n_patients % 100)
            bar.close()
    finally:
        sink.close()
    table = truth_table(truth_rows)
    pq.write_table(table, out / TRUTH_FILE)
    summary = SynthSummary(
        config=cfg, output=str(out), truth=str(out / TRUTH_FILE), deaths=deaths,
        in_hospital_deaths=in_hospital,
        encounters=dict(sorted(enc_classes.items())),
        resources={rt: counts[rt] for rt in RESOURCE_TYPES},
        tasks={task: _task_summary(truth_rows, task) for task in (READMISSION_TASK, MORTALITY_TASK)},
        seconds=round(time.perf_counter() - t0, 3), cpu_seconds=round(time.process_time() - c0, 3),
    )
    summary.save(out / SUMMARY_FILE)
    return summary


def _task_summary(rows: list[tuple[str, TruthRow]], task: str) -> dict[str, float]:
    import numpy as np

    p = np.array([t.true_prob for _, t in rows if t.task == task], dtype=np.float64)
    y = np.array([t.outcome for _, t in rows if t.task == task], dtype=np.int8)
    if p.size == 0:
        return {"index_events": 0}
    return {"index_events": int(p.size), "prevalence": float(y.mean()), "mean_true_prob": float(p.mean()),
            "oracle_auroc": auroc(y, p)}


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="patient", desc="synth", mininterval=0.5)


def format_summary(summary: SynthSummary) -> str:
    """A printable multi-line summary of :func:`generate`'s result."""
    cfg = summary.config
    site = "" if cfg.site == "A" else f"site {cfg.site}, "  # site A's line reads as before sites existed
    lines = [f"patients {cfg.n_patients}  ({site}seed {cfg.seed}, {cfg.start_year}-"
             f"{cfg.start_year + cfg.years}; deaths {summary.deaths}, in hospital "
             f"{summary.in_hospital_deaths})"]
    lines.append("encounters  " + "  ".join(f"{k} {v}" for k, v in summary.encounters.items()))
    lines.append("resources   " + "  ".join(f"{k} {v}" for k, v in summary.resources.items()))
    for task, s in summary.tasks.items():
        if s.get("index_events"):
            lines.append(f"{task:<22} index events {s['index_events']:>7}  prevalence {s['prevalence']:.3f}"
                         f"  mean true_prob {s['mean_true_prob']:.3f}  oracle AUROC {s['oracle_auroc']:.3f}")
        else:
            lines.append(f"{task:<22} no index events")
    return "\n".join(lines)
