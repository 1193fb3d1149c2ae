"""Mamba-3 scan: the chunked PyTorch path and the dispatcher (mamba-ssm kernels / chunked / reference).

Why a chunked form exists: unrolled, the trapezoidal recurrence of :mod:`ehrfm.ops.mamba3_ref` gives the
input ``v_s k_s^T`` the weight ``gamma_s = lam_s dt_s`` at step s and, through the next step's "previous
input" term, ``(1 - lam_{s+1}) dt_{s+1}`` more, decayed like the state from s on. So, with the rotations
applied to q and k up front (RoPE: the complex decay becomes a real one on rotated vectors), Mamba-3 is an
SSD with a scalar data-dependent decay per (head, step)::

    y_t = sum_{s<t} q_t.k_s exp(A_t - A_s) (gamma_s + shifted_s) v_s + q_t.k_t gamma_t v_t,
    A_t = sum_{u<=t} adt_u,   shifted_s = (1 - lam_{s+1}) dt_{s+1}

computed as in :mod:`ehrfm.ops.ssd`: a decay-masked "attention" inside chunks of T steps (matmuls) and one
recurrence step per chunk for the state. The diagonal gets ``gamma_t`` alone (``torch.where``, not a
subtraction) so that y_t never reads step t+1, even in the last bit. MIMO rank r flattens (step, rank) to
T*r rows with no decay between the ranks of one step, as mamba-ssm's MIMO reference does. Autograd
differentiates it; memory O(L T r^2) per head.

Dispatch (DESIGN principle 2, rules in :mod:`ehrfm.ops.dispatch`): on CUDA tensors with mamba-ssm >= 2.3
importable, SISO (r = 1) goes to ``mamba3_siso_combined`` (Triton) and MIMO to ``mamba3_mimo`` (TileLang);
both are imported lazily, never required. The kernels fix the rotary pairing (SISO interleaved, MIMO
halves, a in {n/4, n/2}) and the MIMO kernel takes no initial state: other inputs run the chunked path
(announced once). The recurrent step (:func:`mamba3_state_update`) is PyTorch on every device: one token
is a handful of small ops, and mamba-ssm's decode kernel needs the CuTe DSL stack (tested on H100 only)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from ehrfm.ops._checks import compute_dtype
from ehrfm.ops.dispatch import KERNELS, choose
from ehrfm.ops.mamba3_common import (
    Mamba3States,
    angle_increment,
    check_mamba3,
    expand_heads,
    mimo_down,
    mimo_up,
    rank_bias,
    rotate,
    wrap_angle,
)
from ehrfm.ops.mamba3_ref import mamba3_ref, mamba3_state_update_ref
from ehrfm.ops.ssd import segsum

log = logging.getLogger("ehrfm.ops")

DEFAULT_CHUNK = 64
# Registered here (not in dispatch.py) so that the Mamba-3 ops stay one optional unit.
KERNELS.setdefault("mamba3_scan", ("mamba_ssm.ops.triton.mamba3.mamba3_siso_combined",
                                   "mamba3_siso_combined"))
KERNELS.setdefault("mamba3_scan_mimo", ("mamba_ssm.ops.tilelang.mamba3.mamba3_mimo", "mamba3_mimo"))
_fallbacks: set[str] = set()


def _time_major(t: torch.Tensor, nc: int, T: int) -> torch.Tensor:
    """(b, l, r, h, x) -> (b, h, c, T*r, x) with (step, rank) flattened step-major; l = nc * T."""
    b, _, r, h, x = t.shape
    return t.reshape(b, nc, T, r, h, x).permute(0, 4, 1, 2, 3, 5).reshape(b, h, nc, T * r, x)


def mamba3_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    adt: torch.Tensor,
    dt: torch.Tensor,
    trap: torch.Tensor,
    q_bias: torch.Tensor,
    k_bias: torch.Tensor,
    angles: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    mimo_v: torch.Tensor | None = None,
    mimo_z: torch.Tensor | None = None,
    mimo_o: torch.Tensor | None = None,
    rope: str = "interleaved",
    chunk_size: int = DEFAULT_CHUNK,
    initial_states: Mamba3States | None = None,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Mamba3States]:
    """Mamba-3 scan by chunks (same signature and semantics as :func:`ehrfm.ops.mamba3_ref.mamba3_ref`).

    Layouts in :mod:`ehrfm.ops.mamba3_common`. Returns y (b, l, h, p) in v's dtype [, final
    :class:`Mamba3States` in the compute dtype]; differentiable in every input, the initial state too."""
    mimo = (mimo_v, mimo_z, mimo_o)
    check_mamba3("mamba3_chunked", q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, mimo, rope,
                 initial_states)
    if chunk_size < 1:
        raise ValueError(f"mamba3_chunked: chunk_size must be >= 1, got {chunk_size}")
    ct = compute_dtype(v.dtype)
    b, length, h, p = v.shape
    r, n = q.shape[2], q.shape[-1]
    mv = None if mimo_v is None else mimo_v.to(ct)
    dtf, adtf = dt.to(ct).transpose(1, 2), adt.to(ct).transpose(1, 2)  # (b, l, h)
    lam = torch.sigmoid(trap.to(ct)).transpose(1, 2)

    # rotations: cumulative angle per (head, step), applied to the biased q and k
    theta = torch.cumsum(angle_increment(angles.to(ct), dtf), dim=1)
    if initial_states is not None:
        theta = theta + initial_states.angle.to(ct).unsqueeze(1)
    theta = wrap_angle(theta)
    rot = theta.unsqueeze(2)  # (b, l, 1, h, a)
    qr = rotate(expand_heads(q.to(ct), h) + rank_bias(q_bias.to(ct)), rot, rope)  # (b, l, r, h, n)
    kr = rotate(expand_heads(k.to(ct), h) + rank_bias(k_bias.to(ct)), rot, rope)
    vr = mimo_up(v.to(ct), mv, r)  # (b, l, r, h, p)

    # trapezoid weights: gamma_s now, shifted_s = what step s+1 adds for input s (0 after the last step)
    gamma = dtf * lam
    shifted = F.pad(dtf[:, 1:] * (1 - lam[:, 1:]), (0, 0, 0, 1))
    scale = gamma + shifted
    # state entering step 0: H_{-1} plus the previous input's share, which step 0 decays with the state
    s0 = qr.new_zeros(b, h, n, p)
    if initial_states is not None:
        k0 = initial_states.k.to(ct)
        v0 = mimo_up(initial_states.v.to(ct), mv, r)
        first = (dtf[:, 0] * (1 - lam[:, 0]))[..., None, None]
        s0 = (initial_states.ssm.to(ct) + first * torch.einsum("brhn,brhp->bhpn", k0, v0)).transpose(-1, -2)

    T = min(chunk_size, length)
    nc = -(-length // T)
    pad = nc * T - length
    # zero-padded steps: decay 1 (adt 0) and weight 0, so they change neither outputs nor the state
    Q, K, V = (_time_major(F.pad(t, (0, 0, 0, 0, 0, 0, 0, pad)), nc, T) for t in (qr, kr, vr))
    dA, g, sc = (F.pad(t, (0, 0, 0, pad)).reshape(b, nc, T, h).permute(0, 3, 1, 2)
                 for t in (adtf, gamma, scale))
    a_cum = torch.cumsum(dA, dim=-1)  # (b, h, c, T)

    # 1. within chunks: W[t, s] = exp(A_t - A_s) scale_s below the diagonal, gamma_t on it
    eye = torch.eye(T, dtype=torch.bool, device=v.device)
    W = torch.where(eye, g.unsqueeze(-2), torch.exp(segsum(dA)) * sc.unsqueeze(-2))
    W = W.repeat_interleave(r, dim=-1).repeat_interleave(r, dim=-2)  # no decay between ranks of a step
    y = torch.matmul(torch.matmul(Q, K.transpose(-1, -2)) * W, V)  # (b, h, c, T*r, p)

    # 2. what each chunk adds to the state, decayed to its end: (b, h, c, n, p)
    w_end = (torch.exp(a_cum[..., -1:] - a_cum) * sc).repeat_interleave(r, dim=-1)
    chunk_states = torch.matmul((K * w_end.unsqueeze(-1)).transpose(-1, -2), V)

    # 3. across chunks: one recurrence step per chunk
    s = s0
    chunk_decay = torch.exp(a_cum[..., -1])  # (b, h, c)
    entering = []
    for c in range(nc):
        entering.append(s)
        s = chunk_decay[:, :, c, None, None] * s + chunk_states[:, :, c]
    prev = torch.stack(entering, dim=2)  # (b, h, c, n, p)

    # 4. each chunk reads the state it inherits, decayed to each step
    y = y + torch.matmul(Q * torch.exp(a_cum).repeat_interleave(r, dim=-1).unsqueeze(-1), prev)
    y = y.reshape(b, h, nc * T, r, p).permute(0, 2, 3, 1, 4)[:, :length]  # (b, l, r, h, p)
    if D is not None:
        y = y + D.to(ct)[:, None] * vr
    if z is not None:
        y = y * F.silu(mimo_up(z.to(ct), None if mimo_z is None else mimo_z.to(ct), r))
    out = mimo_down(y, None if mimo_o is None else mimo_o.to(ct)).to(v.dtype)
    if not return_final_states:
        return out
    # fresh tensors: a step updates them in place, and views would write through into the inputs
    final = Mamba3States(angle=theta[:, -1].clone(), ssm=s.transpose(-1, -2).contiguous(),
                         k=kr[:, -1].clone(), v=v[:, -1].to(ct, copy=True))
    return out, final


def _fallback(why: str) -> None:
    """Announce once that a CUDA call runs the chunked path instead of a kernel, and why."""
    if why in _fallbacks:
        return
    _fallbacks.add(why)
    msg = f"ehrfm.ops.mamba3_scan: the mamba-ssm kernel does not take {why}; using the chunked PyTorch path"
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _kernel_call(kernel: Any, mimo: bool, args: dict[str, Any]) -> torch.Tensor | tuple[torch.Tensor,
                                                                                       Mamba3States]:
    """Call mamba-ssm's SISO or MIMO kernel with our layouts; final states mapped back to ours."""
    q, k, v = args["q"], args["k"], args["v"]
    f32 = {name: args[name].float() for name in ("adt", "dt", "q_bias", "k_bias", "angles")}
    D = None if args["D"] is None else args["D"].float()
    want = args["return_final_states"]
    init = args["initial_states"]
    if mimo:
        h, r, p = v.shape[2], q.shape[2], v.shape[3]
        ones = v.new_ones(h, r, p, dtype=torch.float32)
        mv, mz, mo = (ones if args[name] is None else args[name].float()
                      for name in ("mimo_v", "mimo_z", "mimo_o"))
        res = kernel(q, k, v, f32["adt"], f32["dt"], args["trap"], f32["q_bias"], f32["k_bias"], mv, mz, mo,
                     f32["angles"], D, args["z"], args["chunk_size"], q.shape[-1] // args["angles"].shape[-1],
                     v.dtype, return_state=want)
    else:
        states = None if init is None else (init.angle, init.ssm, init.k[:, 0], init.v)
        res = kernel(q[:, :, 0], k[:, :, 0], v, f32["adt"], f32["dt"], args["trap"], f32["q_bias"][:, 0],
                     f32["k_bias"][:, 0], f32["angles"], D, args["z"], states, args["chunk_size"], want)
    if not want:
        return res  # type: ignore[no-any-return]
    if len(res) == 2 and isinstance(res[1], tuple):  # (y, states) rather than flat, as documented for MIMO
        res = (res[0], *res[1])
    y, angle, ssm, k_last, v_last = res[:5]
    k_last = k_last.unsqueeze(1) if k_last.dim() == 3 else k_last
    return y, Mamba3States(angle.float(), ssm.float(), k_last.float(), v_last.float())


def mamba3_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    adt: torch.Tensor,
    dt: torch.Tensor,
    trap: torch.Tensor,
    q_bias: torch.Tensor,
    k_bias: torch.Tensor,
    angles: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    mimo_v: torch.Tensor | None = None,
    mimo_z: torch.Tensor | None = None,
    mimo_o: torch.Tensor | None = None,
    rope: str = "interleaved",
    chunk_size: int = DEFAULT_CHUNK,
    initial_states: Mamba3States | None = None,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Mamba3States]:
    """Mamba-3 scan (dispatcher): mamba-ssm kernel on CUDA when it imports, else chunked (or the reference
    when forced). Layouts in :mod:`ehrfm.ops.mamba3_common`; returns y (b, l, h, p) [, final states]."""
    args = dict(q=q, k=k, v=v, adt=adt, dt=dt, trap=trap, q_bias=q_bias, k_bias=k_bias, angles=angles, D=D,
                z=z, mimo_v=mimo_v, mimo_z=mimo_z, mimo_o=mimo_o, rope=rope, chunk_size=chunk_size,
                initial_states=initial_states, return_final_states=return_final_states)
    is_mimo = q.shape[2] > 1 if q.dim() == 5 else False
    path, kernel = choose("mamba3_scan_mimo" if is_mimo else "mamba3_scan", v, q)
    if path == "cuda" and kernel is not None:
        check_mamba3("mamba3_scan", q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z,
                     (mimo_v, mimo_z, mimo_o), rope, initial_states)
        n, a = q.shape[-1], angles.shape[-1]
        if rope != ("halves" if is_mimo else "interleaved"):
            _fallback(f"rope={rope!r} with MIMO rank {q.shape[2]}")
        elif is_mimo and (n % a or n // a not in (2, 4)):
            _fallback(f"{a} rotary angles for dstate {n} (MIMO needs dstate/4 or dstate/2)")
        elif is_mimo and initial_states is not None:
            _fallback("an initial state with MIMO")
        else:
            return _kernel_call(kernel, is_mimo, args)
    fn = mamba3_ref if path == "ref" else mamba3_chunked
    return fn(**args)  # type: ignore[arg-type]


def mamba3_state_update(
    states: Mamba3States,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    adt: torch.Tensor,
    dt: torch.Tensor,
    trap: torch.Tensor,
    q_bias: torch.Tensor,
    k_bias: torch.Tensor,
    angles: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    mimo_v: torch.Tensor | None = None,
    mimo_z: torch.Tensor | None = None,
    mimo_o: torch.Tensor | None = None,
    rope: str = "interleaved",
) -> torch.Tensor:
    """One Mamba-3 generation step; ``states`` (the scan's final states) is updated in place.
    q, k: (b, r, g, n); v, z: (b, h, p); adt, dt, trap: (b, h); angles: (b, h, a). Returns y (b, h, p).
    PyTorch on every device (see the module docstring); a step has no time loop to chunk."""
    return mamba3_state_update_ref(states, q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, mimo_v,
                                   mimo_z, mimo_o, rope)
