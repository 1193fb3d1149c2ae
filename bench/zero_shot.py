"""Zero-shot risk by simulated futures (``ehrfm simulate``, the pretraining-only model) at M = 8, 32, 128 vs
the MTF-finetuned heads, the count baselines and the oracle, on one synthetic population, in one run.

Pipeline (each stage skipped when its output exists under ``--root``; the data stages are
``bench/finetune_oracle.py``'s)::

    ehrfm synth -> ingest fhir -> label -> prepare -> tokenize -> pretrain (tiny)
    -> ehrfm finetune (MTF on --tasks)              -> <root>/runs/finetune/predictions.parquet
    -> ehrfm simulate --samples M (held-out rows)   -> <root>/runs/simulate/zero_shot_m<M>/, for each M
    -> ehrfm evaluate --report.baselines [lr,hgb]   (picks up the finetuned and every zero-shot model)

Prints one table per task (held-out AUROC with its 95% subject-bootstrap CI, AUROC ÷ the oracle's, ECE, and
for the zero-shot rows seconds per prediction row and the share of truncated futures) and writes
``bench/results/zero_shot.json``.

    .venv/bin/python bench/zero_shot.py --root /tmp/zs_bench --n-patients 2500
    .venv/bin/python bench/zero_shot.py --root /tmp/zs_smoke --n-patients 300 --ms 2,4 --bootstrap 0 \\
        --pretrain-set trainer.max_steps=20 --finetune-set trainer.max_steps=20   # a smoke run

Timings on a shared CPU are noisy; the JSON records the load average before and after each simulation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_oracle import _ehrfm, _overrides, prepare_data  # noqa: E402

from ehrfm.layout import Layout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ["readmission_30d", "mortality_inhospital", "mortality_30d_post_discharge", "los_gt_7d"]


def finetune(root: Path, tasks: list[str], sets: list[str]) -> float:
    """``ehrfm finetune`` into ``<root>/runs/finetune`` unless its predictions exist; returns seconds."""
    if Layout(root=str(root)).finetune_run.predictions.exists():
        return 0.0
    t = time.time()
    _ehrfm("finetune", "--root", str(root), "--tasks", f"[{','.join(tasks)}]", "--model_name", "ehrfm_mtf",
           "--trainer.progress_bar", "false", *_overrides(sets))
    return time.time() - t


def model_name(m: int, seed: int) -> str:
    """The zero-shot model of M futures and a simulation seed (seed 0: ``zero_shot_m<M>``)."""
    return f"zero_shot_m{m}" + (f"_seed{seed}" if seed else "")


def simulate(root: Path, m: int, seed: int, tasks: list[str], extra: list[str]) -> dict[str, Any]:
    """``ehrfm simulate --samples m --seed seed`` on the held-out rows unless that run exists; returns its
    summary with the wall time and the load average around it."""
    name = model_name(m, seed)
    run = Layout(root=str(root)).simulate_run(name)
    load0, t = os.getloadavg(), time.time()
    if not run.summary.exists():
        _ehrfm("simulate", "--root", str(root), "--samples", str(m), "--seed", str(seed), "--model_name",
               name, "--tasks", f"[{','.join(tasks)}]", "--splits", "[held_out]", "--progress", "false",
               *extra)
    summary: dict[str, Any] = json.loads(run.summary.read_text())
    summary["bench"] = {"wall_s": round(time.time() - t, 1), "loadavg_before": load0,
                        "loadavg_after": os.getloadavg(), "cached": time.time() - t < 1.0}
    return summary


def table(report: dict[str, Any], sims: dict[str, dict[str, Any]], tasks: list[str]) -> list[dict[str, Any]]:
    """One row per (task, model): AUROC and CI, ÷ oracle, ECE and CI, n; zero-shot rows (``sims``: model name
    -> simulate summary) also s/row and the truncated share."""
    rows = []
    zs = sims
    for task in tasks:
        res = report["tasks"][task]
        oracle = (res.get("oracle") or {}).get("auroc", {})
        if oracle:
            rows.append({"task": task, "model": "oracle (true prob)", "n": res["oracle"]["n"],
                         "auroc": oracle.get("value"), "over_oracle": 1.0,
                         "auroc_ci": [oracle.get("ci_low"), oracle.get("ci_high")]})
        for model, info in res["models"].items():
            met = info.get("metrics", {})
            a, e = met.get("auroc") or {}, met.get("ece") or {}
            row = {"task": task, "model": model, "n": info.get("n"), "auroc": a.get("value"),
                   "auroc_ci": [a.get("ci_low"), a.get("ci_high")],
                   "over_oracle": info.get("auroc_over_oracle"),
                   "ece": e.get("value"), "ece_ci": [e.get("ci_low"), e.get("ci_high")]}
            if model in zs and task in zs[model]["tasks"]:
                st = zs[model]["tasks"][task]
                row |= {"seconds_per_row": st["seconds_per_row"], "mean_steps": st["mean_steps"],
                        "truncated_share": st["truncated"] / st["futures"]}
            rows.append(row)
    return rows


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def print_table(rows: list[dict[str, Any]]) -> None:
    """The table, one block per task."""
    print(f"\n{'task':<30}{'model':<22}{'n':>6}{'AUROC':>8}  {'95% CI':<16}{'/oracle':>8}{'ECE':>7}"
          f"{'s/row':>8}{'trunc':>7}")
    for r in rows:
        ci = r["auroc_ci"]
        ci_s = "" if ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
        print(f"{r['task']:<30}{r['model']:<22}{r['n'] or 0:>6}{_f(r['auroc']):>8}  {ci_s:<16}"
              f"{_f(r['over_oracle']):>8}{_f(r.get('ece')):>7}{_f(r.get('seconds_per_row'), '.3f'):>8}"
              f"{_f(r.get('truncated_share'), '.1%'):>7}")


def evaluate(root: Path, tasks: list[str], n_boot: int) -> tuple[dict[str, Any], float]:
    """``ehrfm evaluate`` with the lr/hgb count baselines (every model under ``root``); returns the report
    and the seconds."""
    t = time.time()
    _ehrfm("evaluate", "--root", str(root), "--tasks", f"[{','.join(tasks)}]", "--report.baselines",
           "[lr,hgb]", "--report.n_boot", str(n_boot), "--progress", "false")
    report = json.loads((Layout(root=str(root)).evaluation_dir / "report.json").read_text())
    return report, round(time.time() - t, 1)


def common_args(ap: argparse.ArgumentParser) -> None:
    """The flags of the data, finetune and simulate stages (shared with ``bench/query_zero_shot.py``)."""
    ap.add_argument("--root", type=Path, required=True, help="working folder (reused between runs)")
    ap.add_argument("--n-patients", type=int, default=2500)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--ms", default="8,32,128", help="futures per row, comma-separated")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                    help="default: trainer.max_steps=2000 trainer.val_check_interval=500")
    ap.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE",
                    help="default: trainer.max_steps=1000 trainer.val_check_interval=250 patience=0")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the missing stages, evaluate, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_args(ap)
    ap.add_argument("--seeds", default="0", help="simulation seeds, comma-separated (the spread across seeds "
                    "is the Monte-Carlo noise of the metrics at each M)")
    ap.add_argument("--simulate-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "zero_shot.json")
    args = ap.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    ms = [int(m) for m in args.ms.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    pre = args.pretrain_set or ["trainer.max_steps=2000", "trainer.val_check_interval=500"]
    fin = args.finetune_set or ["trainer.max_steps=1000", "trainer.val_check_interval=250", "patience=0"]
    load0, t0 = os.getloadavg(), time.time()
    prepare_data(args.root, args.n_patients, args.master, pre, args.max_len)
    timings: dict[str, float] = {"data_and_pretrain_s": round(time.time() - t0, 1)}
    timings["finetune_s"] = round(finetune(args.root, tasks, fin), 1)
    sims = {model_name(m, s): simulate(args.root, m, s, tasks, _overrides(args.simulate_set))
            for s in seeds for m in ms}
    report, timings["evaluate_with_baselines_s"] = evaluate(args.root, tasks, args.bootstrap)
    lay = Layout(root=str(args.root))
    rows = table(report, sims, tasks)
    print_table(rows)
    result = {"n_patients": args.n_patients, "tasks": tasks, "ms": ms, "seeds": seeds, "rows": rows,
              "timings": timings, "simulate_summaries": sims,
              "pretrain_summary": json.loads(lay.pretrain_run.summary.read_text()),
              "finetune_summary": {k: v for k, v in json.loads(lay.finetune_run.summary.read_text()).items()
                                   if k in ("global_step", "seconds", "train_rows", "tuning", "calibration")},
              "note": "zero-shot rows: held-out split only (their decision threshold is the fixed 0.5); "
                      "stages found cached under --root are not re-timed (see the summaries' seconds)"}
    write_result(args.output, result, load0, lay)
    return 0


def write_result(output: Path, result: dict[str, Any], load0: tuple[float, float, float],
                 lay: Layout) -> None:
    """Add the machine (CPUs, load average before and now, thread setting) and write the JSON."""
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
                         "shared": True, "torch_threads_env": os.environ.get("OMP_NUM_THREADS")}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {output}; full report: {lay.evaluation_dir / 'report.md'}")


if __name__ == "__main__":
    sys.exit(main())
