"""Benchmark the selective scan (Mamba-1) and SSD (Mamba-2) implementations side by side.

Columns per (op, implementation, L, mode): median wall time, error vs the reference loop (or vs our
chunked path in float64 where the reference was not run at that length: the ``vs`` column says which),
peak extra memory, and the memory-traffic floor (scan input + output bytes / copy bandwidth measured in
this same run) with the time/floor ratio. Implementations: ours (chunked), the reference loop, mambapy's
parallel scan (``pscan``, when ``mambapy`` is installed), and with ``--gpu`` mamba-ssm's CUDA kernels.

    python bench/scan.py                      # CPU: L = 512, 2048, 8192, B=8, D=128, N=16
    python bench/scan.py --lengths 512 --repeats 1
    python bench/scan.py --gpu                # on a CUDA machine, kernels when mamba-ssm imports
"""

# ruff: noqa: E402  (sys.path is cleaned before the imports, see below)
from __future__ import annotations

import os
import sys

# a script's folder goes first on sys.path, and bench/ holds scripts named like stdlib modules
# (tokenize.py): drop it before anything imports the stdlib module of the same name
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse
import json
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from ehrfm.ops import (
    ops_path,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
    ssd_chunked,
    ssd_ref,
)
from ehrfm.ops.scan_chunked import DEFAULT_CHUNK

OUT = Path(__file__).resolve().parent / "results" / "scan.json"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak extra memory during a block: CUDA allocator stats on a GPU, sampled process RSS on a CPU."""

    def __init__(self, device: str) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = psutil.Process().memory_info().rss
            self.peak = self.base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()

    @property
    def extra_mb(self) -> float:
        return max(self.peak - self.base, 0) / 2**20


def copy_bandwidth(device: str, mb: int = 512) -> float:
    """Bytes/s of a large tensor copy (read + write counted), best of 5."""
    src = torch.randn(mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best


def exp_rate(device: str, numel: int = 2**20) -> float:
    """exp() evaluations per second on a cache-sized tensor (the scan's compute floor: one exp per
    (batch, dim, dstate, step) for Mamba-1, per (batch, head, step) for SSD), best of 20."""
    x = -torch.rand(numel, device=device)
    out = torch.empty_like(x)
    best = float("inf")
    for _ in range(20):
        sync(device)
        t = time.perf_counter()
        torch.exp(x, out=out)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return numel / best


def timed(fn: Callable[[], Any], device: str, repeats: int) -> tuple[float, float, Any, float]:
    """(median wall s, median process CPU s, last result, peak extra MB) over ``repeats`` runs after a
    warm-up run. CPU time is the steadier number on a shared machine (it excludes time spent waiting
    for a core) and equals wall time on an idle one with one thread."""
    fn()
    times, cpu, result = [], [], None
    with PeakMemory(device) as mem:
        for _ in range(repeats):
            sync(device)
            t, c = time.perf_counter(), time.process_time()
            result = fn()
            sync(device)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return statistics.median(times), statistics.median(cpu), result, mem.extra_mb


def errors(got: list[torch.Tensor], want: list[torch.Tensor]) -> tuple[float, float]:
    """(max abs error, max relative error = max abs / max |want|) over a list of tensors."""
    ab = max(float((g.double() - w.double()).abs().max()) for g, w in zip(got, want, strict=True))
    rel = max(
        float((g.double() - w.double()).abs().max() / w.double().abs().max().clamp_min(1e-30))
        for g, w in zip(got, want, strict=True)
    )
    return ab, rel


def scan_problem(b: int, d: int, n: int, length: int, device: str) -> dict[str, torch.Tensor]:
    """Mamba-1-like inputs: softplus-range deltas, S4D-real A = -(1..N)."""
    g = torch.Generator().manual_seed(length)
    return {
        "u": torch.randn(b, d, length, generator=g).to(device),
        "delta": (torch.rand(b, d, length, generator=g) * 0.1 + 1e-3).to(device),
        "A": (-torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)).to(device),
        "B": torch.randn(b, n, length, generator=g).to(device),
        "C": torch.randn(b, n, length, generator=g).to(device),
        "D": torch.randn(d, generator=g).to(device),
    }


def pscan_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor
) -> torch.Tensor:
    """mambapy's selective scan around its ``pscan`` in its native (B, L, D) layout."""
    from mambapy.pscan import pscan

    dA = torch.exp(delta.unsqueeze(-1) * A)
    bx = delta.unsqueeze(-1) * B.unsqueeze(2) * u.unsqueeze(-1)
    return (pscan(dA, bx) @ C.unsqueeze(-1)).squeeze(3) + D * u


def run_scan(args: argparse.Namespace, device: str, bw: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    b, d, n = args.batch, args.dim, args.dstate
    try:
        import mambapy.pscan  # noqa: F401

        have_pscan = True
    except Exception:
        have_pscan = False
    for length in args.lengths:
        prob = scan_problem(b, d, n, length, device)
        names = ["u", "delta", "A", "B", "C", "D"]
        impls: dict[str, Callable[..., torch.Tensor] | None] = {
            "chunked": lambda **kw: selective_scan_chunked(**kw, chunk_size=args.chunk,
                                                           segment_size=args.segment),
            "ref": selective_scan_ref if length <= args.ref_max_len else None,
            "pscan": None,
        }
        if have_pscan and length <= args.pscan_max_len:
            impls["pscan"] = lambda **kw: pscan_scan(
                **{k: (v.transpose(1, 2) if k in ("u", "delta", "B", "C") else v) for k, v in kw.items()}
            ).transpose(1, 2)
        if args.gpu:
            impls["cuda"] = lambda **kw: _forced_cuda(**kw)
        # accuracy yardstick: the reference loop where run, else our chunked path in float64
        vs = "ref" if impls["ref"] is not None else "chunked-fp64"
        yard = {k: v.double().requires_grad_() for k, v in prob.items()}
        fn_y = selective_scan_ref if vs == "ref" else selective_scan_chunked
        y_ref = fn_y(**yard)
        g_ref = list(torch.autograd.grad((y_ref * 1.0).sum(), [yard[k] for k in names]))
        in_bytes = sum(prob[k].numel() * 4 for k in ("u", "delta", "B", "C"))
        out_bytes = prob["u"].numel() * 4
        floors = {"fwd": (in_bytes + out_bytes) / bw, "fwd+bwd": 2 * (in_bytes + out_bytes) / bw}
        exp_floor = b * d * n * length / args.exp_rate
        for impl, fn in impls.items():
            for mode in ("fwd", "fwd+bwd"):
                row: dict[str, Any] = {
                    "op": "selective_scan",
                    "impl": impl,
                    "L": length,
                    "mode": mode,
                    "vs": vs,
                }
                if fn is None:
                    row["status"] = "not run" if impl != "pscan" or have_pscan else "mambapy not installed"
                    rows.append(row)
                    continue
                if impl == "pscan" and device == "cpu":
                    # pscan materialises ~12 (batch, L, dim, dstate) fp32 tensors in fwd+bwd
                    need = 12 * b * d * n * length * 4
                    free = psutil.virtual_memory().available
                    if need > 0.6 * free:
                        row["status"] = f"not run (needs ~{need / 2**30:.1f} GB, {free / 2**30:.1f} GB free)"
                        rows.append(row)
                        continue
                inp = {k: v.clone().requires_grad_(mode != "fwd") for k, v in prob.items()}

                def call(
                    fn: Callable[..., torch.Tensor] = fn,
                    inp: dict = inp,
                    mode: str = mode,
                    names: list = names,
                ) -> Any:
                    if mode == "fwd":
                        with torch.no_grad():
                            return [fn(**inp)]
                    y = fn(**inp)
                    return list(torch.autograd.grad(y.sum(), [inp[k] for k in names]))

                reps = 1 if (impl == "ref" or length >= 8192) else args.repeats
                secs, cpu_s, res, mb = timed(call, device, reps)
                ab, rel = errors(res, [y_ref.detach()] if mode == "fwd" else g_ref)
                row.update(
                    status="ok",
                    seconds=secs,
                    cpu_seconds=cpu_s,
                    max_abs_err=ab,
                    rel_err=rel,
                    peak_mb=mb,
                    floor_s=floors[mode],
                    x_floor=secs / floors[mode],
                    exp_floor_s=exp_floor,
                    x_exp_floor=secs / exp_floor,
                )
                rows.append(row)
                print(_fmt(row), flush=True)
    return rows


def _forced_cuda(**kw: torch.Tensor) -> torch.Tensor:
    with ops_path("cuda"):
        out = selective_scan(**kw)
    assert isinstance(out, torch.Tensor)
    return out


def run_ssd(args: argparse.Namespace, device: str, bw: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    b, h, n = args.batch, args.heads, args.dstate
    p = args.dim // h
    for length in args.lengths:
        g = torch.Generator().manual_seed(length)
        prob = {
            "x": torch.randn(b, length, h, p, generator=g).to(device),
            "dt": (torch.rand(b, length, h, generator=g) * 0.1 + 1e-3).to(device),
            "A": -torch.arange(1, h + 1, dtype=torch.float32).to(device),
            "B": torch.randn(b, length, 1, n, generator=g).to(device),
            "C": torch.randn(b, length, 1, n, generator=g).to(device),
        }
        names = list(prob)
        impls: dict[str, Callable[..., torch.Tensor] | None] = {
            "chunked": lambda **kw: ssd_chunked(**kw, chunk_size=args.ssd_chunk),
            "ref": ssd_ref if length <= args.ref_max_len else None,
        }
        if args.gpu:
            from ehrfm.ops import ssd_chunk_scan

            def cuda_ssd(**kw: torch.Tensor) -> torch.Tensor:
                with ops_path("cuda"):
                    return ssd_chunk_scan(**kw, chunk_size=args.ssd_chunk)  # type: ignore[return-value]

            impls["cuda"] = cuda_ssd
        vs = "ref" if impls["ref"] is not None else "chunked-fp64"
        yard = {k: v.double().requires_grad_() for k, v in prob.items()}
        y_ref = (ssd_ref if vs == "ref" else ssd_chunked)(**yard)
        g_ref = list(torch.autograd.grad(y_ref.sum(), [yard[k] for k in names]))  # type: ignore[union-attr]
        io = sum(prob[k].numel() * 4 for k in ("x", "dt", "B", "C")) + prob["x"].numel() * 4
        for impl, fn in impls.items():
            for mode in ("fwd", "fwd+bwd"):
                row: dict[str, Any] = {"op": "ssd", "impl": impl, "L": length, "mode": mode, "vs": vs}
                if fn is None:
                    rows.append({**row, "status": "not run"})
                    continue
                inp = {k: v.clone().requires_grad_(mode != "fwd") for k, v in prob.items()}

                def call(
                    fn: Callable[..., torch.Tensor] = fn,
                    inp: dict = inp,
                    mode: str = mode,
                    names: list = names,
                ) -> Any:
                    if mode == "fwd":
                        with torch.no_grad():
                            return [fn(**inp)]
                    return list(torch.autograd.grad(fn(**inp).sum(), [inp[k] for k in names]))

                secs, cpu_s, res, mb = timed(call, device, 1 if impl == "ref" else args.repeats)
                ab, rel = errors(res, [y_ref.detach()] if mode == "fwd" else g_ref)  # type: ignore[union-attr]
                floor = (1 if mode == "fwd" else 2) * io / bw
                row.update(
                    status="ok",
                    seconds=secs,
                    cpu_seconds=cpu_s,
                    max_abs_err=ab,
                    rel_err=rel,
                    peak_mb=mb,
                    floor_s=floor,
                    x_floor=secs / floor,
                    exp_floor_s=None,  # SSD is matmul-bound: one exp per (batch, head, step) is no floor
                    x_exp_floor=None,
                )
                rows.append(row)
                print(_fmt(row), flush=True)
    return rows


def _fmt(r: dict[str, Any]) -> str:
    head = f"{r['op']:<15} {r['impl']:<8} L={r['L']:<6} {r['mode']:<8}"
    if r.get("status") != "ok":
        return f"{head} {r.get('status')}"
    return (
        f"{head} {r['seconds']:8.3f} s (cpu {r['cpu_seconds']:8.3f} s)  err abs {r['max_abs_err']:.1e} rel "
        f"{r['rel_err']:.1e} (vs {r['vs']})  peak +{r['peak_mb']:6.0f} MB  traffic floor "
        f"{r['floor_s'] * 1e3:6.2f} ms x{r['x_floor']:6.1f}  "
        + (f"exp floor {r['exp_floor_s'] * 1e3:7.2f} ms x{r['x_exp_floor']:6.1f}" if r["exp_floor_s"] else "")
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--heads", type=int, default=2, help="SSD heads (headdim = dim / heads)")
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                    help="steps per chunk of our Mamba-1 chunked scan (default: chosen from the shape)")
    ap.add_argument("--segment", type=int, default=None,
                    help="steps per segment inside a chunk (default: chosen from the shape)")
    ap.add_argument("--ssd-chunk", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-max-len", type=int, default=512, help="run the reference loop up to this L")
    ap.add_argument("--pscan-max-len", type=int, default=8192)
    ap.add_argument("--skip-ssd", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="run on CUDA, adding mamba-ssm's kernels")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    device = "cuda" if args.gpu else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu and not torch.cuda.is_available():
        ap.error("--gpu needs a CUDA device")
    bw = copy_bandwidth(device)
    args.exp_rate = exp_rate(device)
    machine = torch.cuda.get_device_name() if args.gpu else f"{platform.processor() or platform.machine()}"
    print(
        f"device {device} ({machine}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"copy bandwidth {bw / 1e9:.1f} GB/s"
    )
    rows = run_scan(args, device, bw)
    if not args.skip_ssd:
        rows += run_ssd(args, device, bw)
    print("\n" + "\n".join(_fmt(r) for r in rows))
    result = {
        "device": device,
        "machine": machine,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": psutil.cpu_count(),
        "copy_bandwidth_GBps": bw / 1e9,
        "exp_per_s": args.exp_rate,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "note": "shared machine: timings are noisy",
        "rows": rows,
    }
    out = args.out if not args.gpu or args.out != OUT else OUT.with_name("scan_gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
