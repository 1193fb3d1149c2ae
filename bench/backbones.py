"""Backbone benchmark: forward+backward tokens/s and peak memory of the mamba, mamba2, mamba3 (SISO, and
``mamba3_mimo``: MIMO rank 2 as in the mamba3 preset) and transformer backbones at (about) equal parameter
count, for L = 512, 2048, 8192 at a fixed token budget per batch (B = budget / L), on the CPU (or
``--device cuda``).

Each (backbone, L) point runs in its own subprocess so the peak RSS (``ru_maxrss``) belongs to that point
alone; memory is reported as peak RSS and as the growth over the RSS after building the model (what the
activations cost). Prints a table, writes ``bench/results/backbones.json`` and the ratio t(8192)/t(2048)
per backbone (1.0 = linear in L at a fixed token budget; attention is quadratic, so it should grow).
Times are wall seconds and process CPU seconds (``time.process_time``) per step, min over repeats; on a
shared, oversubscribed CPU the CPU seconds are the steadier comparison, and ``--threads 1`` avoids OpenMP
threads spinning against other jobs (the torch default uses every core).

    .venv/bin/python bench/backbones.py                      # defaults: d_model 64, 16k tokens
    .venv/bin/python bench/backbones.py --lengths 512 2048 --tokens 8192 --repeats 1
    .venv/bin/python bench/backbones.py --tokens 8192 --threads 1 # as in bench/results/backbones.json
    .venv/bin/python bench/backbones.py --backbones mamba2 mamba3 mamba3_mimo --cpu-chunks 64 32 16 \
        --tokens 8192 --threads 1 --output bench/results/backbones_cpu_chunk.json   # the CPU scan chunk
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running ``python bench/backbones.py`` puts bench/ first on sys.path, where bench/tokenize.py would shadow
# the stdlib ``tokenize`` module (inspect -> linecache -> tokenize) once torch is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from typing import Any  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "backbones.json"
# Layers per backbone for ~equal parameters: a Mamba block is ~6 d^2 (in/out projections, expand 2),
# a transformer layer ~12 d^2 (4 d^2 attention + 8 d^2 MLP), so the transformer gets half the layers.
# Mamba-3 has no conv and a slightly wider in_proj than Mamba-2 (dt, A, trap per head, angles): ~6 d^2 too.
LAYERS = {"mamba": 4, "mamba2": 4, "mamba3": 4, "mamba3_mimo": 4, "transformer": 2}
# table names that are a backbone with non-default settings
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"mamba3_mimo": ("mamba3", {"mimo_rank": 2})}


def _config(backbone: str, d_model: int, max_len: int, cpu_chunk: int = 32, headdim: int = 32) -> Any:
    from ehrfm.models import ModelConfig

    name, extra = VARIANTS.get(backbone, (backbone, {}))
    return ModelConfig(vocab_size=1000, backbone=name, d_model=d_model, n_layers=LAYERS[backbone],
                       dropout=0.0, max_len=max_len, headdim=headdim, chunk_size=64, cpu_chunk_size=cpu_chunk,
                       n_heads=max(1, d_model // 32), **extra)


def measure(backbone: str, length: int, tokens: int, d_model: int, repeats: int, device: str,
            threads: int = 0, cpu_chunk: int = 32, headdim: int = 32) -> dict[str, Any]:
    """One point (run inside the child process): seconds per fwd+bwd step, tokens/s, memory.
    ``threads`` > 0 sets torch's intra-op threads (0 keeps torch's default); ``cpu_chunk``: the model's
    ``cpu_chunk_size`` (the Mamba-2 / Mamba-3 scan chunk on the CPU); ``headdim``: SSM head width."""
    import psutil
    import torch

    from ehrfm.models import EHRFoundationModel

    warnings.filterwarnings("ignore")
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch = max(1, tokens // length)
    model = EHRFoundationModel(_config(backbone, d_model, length, cpu_chunk, headdim)).to(device)
    ids = torch.randint(7, 1000, (batch, length), device=device)
    ages = torch.rand(batch, length, device=device) * 80
    rss0 = psutil.Process().memory_info().rss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        out = model(concept_ids=ids, ages=ages, times=ages * 365)
        assert out.logits is not None
        out.logits.float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (allocations, kernel selection)
    times, cpu_times = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    from ehrfm.ops import current_ops_path

    sec = min(times)  # least-disturbed repeat: the CPU is shared
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "backbone": backbone, "L": length, "B": batch, "tokens": batch * length, "d_model": d_model,
        "n_layers": LAYERS[backbone], "parameters": model.num_parameters(), "seconds": round(sec, 4),
        "cpu_seconds": round(min(cpu_times), 4),
        "tokens_per_s": round(batch * length / sec, 1), "peak_rss_mb": round(peak / 2**20, 1),
        "rss_growth_mb": round((peak - rss0) / 2**20, 1),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
        "ops_path": current_ops_path() or "none", "device": device, "threads": torch.get_num_threads(),
        "cpu_chunk": cpu_chunk, "headdim": headdim,
    }


def main(argv: list[str] | None = None) -> int:
    """Run every point in a subprocess, print the table, write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=list(LAYERS))
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 2048, 8192])
    p.add_argument("--tokens", type=int, default=16384, help="tokens per batch (B = tokens / L)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads in each point (0 = torch default)")
    p.add_argument("--timeout", type=float, default=900,
                   help="seconds per point before it is recorded as timed out")
    p.add_argument("--cpu-chunks", nargs="+", type=int, default=[32],
                   help="the models' cpu_chunk_size (Mamba-2 / Mamba-3 scan chunk on the CPU); several "
                        "values time every point once per chunk, side by side (the ratios use the first)")
    p.add_argument("--headdim", type=int, default=32,
                   help="Mamba-2 / Mamba-3 head width (the tiny preset's is 16: twice the heads)")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--_child", nargs=3, metavar=("BACKBONE", "L", "CPU_CHUNK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        print(json.dumps(measure(args._child[0], int(args._child[1]), args.tokens, args.d_model, args.repeats,
                                 args.device, args.threads, int(args._child[2]), args.headdim)))
        return 0

    rows: list[dict[str, Any]] = []
    print(
        f"{'backbone':<12}{'L':>6}{'chunk':>6}{'B':>5}{'params':>10}{'s/step':>9}{'cpu s':>8}{'tok/s':>10}"
        f"{'peak MB':>9}{'+MB':>8}  ops")
    points = [(b, n, c) for b in args.backbones for n in args.lengths for c in args.cpu_chunks]
    for backbone, length, chunk in points:
        cmd = [sys.executable, __file__, "--_child", backbone, str(length), str(chunk),
               "--tokens", str(args.tokens),
               "--d-model", str(args.d_model), "--repeats", str(args.repeats), "--device", args.device,
               "--threads", str(args.threads), "--headdim", str(args.headdim)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            row = {"backbone": backbone, "L": length, "cpu_chunk": chunk,
                   "error": f"timed out after {args.timeout:.0f} s"}
        except subprocess.CalledProcessError as exc:
            row = {"backbone": backbone, "L": length, "cpu_chunk": chunk,
                   "error": exc.stderr.strip().splitlines()[-1][:200]}
        rows.append(row)
        if "error" in row:
            print(f"{backbone:<12}{length:>6}{chunk:>6}  {row['error']}")
        else:
            print(f"{backbone:<12}{length:>6}{chunk:>6}{row['B']:>5}{row['parameters']:>10}{row['seconds']:>9.3f}"
                  f"{row['cpu_seconds']:>8.3f}{row['tokens_per_s']:>10.0f}{row['peak_rss_mb']:>9.0f}"
                  f"{row['rss_growth_mb']:>8.0f}  {row['ops_path']}")
        sys.stdout.flush()
    ratios: dict[str, float | None] = {}
    cpu_ratios: dict[str, float | None] = {}
    for backbone in args.backbones:
        for key, out in (("seconds", ratios), ("cpu_seconds", cpu_ratios)):
            t = {r["L"]: r.get(key) for r in rows
                 if r["backbone"] == backbone and r["cpu_chunk"] == args.cpu_chunks[0]}
            out[backbone] = round(t[8192] / t[2048], 2) if t.get(8192) and t.get(2048) else None
    print("t(8192)/t(2048) at a fixed token budget, wall:", json.dumps(ratios), "cpu:",
          json.dumps(cpu_ratios))
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "python": platform.python_version()},
              "settings": {k: v for k, v in vars(args).items() if k not in ("_child", "output")},
              "note": "CPU shared with other jobs while measured: timings are noisy (min over repeats)",
              "rows": rows, "t8192_over_t2048": ratios, "cpu_t8192_over_t2048": cpu_ratios}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
