"""Mamba-3 reference twin: the recurrence one token at a time, the definition of correct for the chunked
path (:mod:`ehrfm.ops.mamba3`) and the recurrent step used for generation.

Per head, with ``lam_t = sigmoid(trap_t)``, ``alpha_t = exp(adt_t)`` (adt = A dt, A data-dependent) and the
exponential-trapezoidal rule of Mamba-3 (Lahoti et al., 2026; mamba-ssm >= 2.3)::

    theta_t = theta_{t-1} + pi * tanh(angles_t) * dt_t                    (data-dependent rotation)
    k_t = R(theta_t) (B_t + k_bias),  q_t = R(theta_t) (C_t + q_bias)       (complex state as RoPE on B/C)
    H_t = alpha_t H_{t-1} + (1 - lam_t) dt_t alpha_t v_{t-1} k_{t-1}^T + lam_t dt_t v_t k_t^T
    y_t = H_t q_t + D v_t,  then * silu(z_t)

With MIMO rank r > 1, v and z are up-projected per rank (``mimo_v``, ``mimo_z``), the state sums the r
outer products ``v_{t,i} k_{t,i}^T``, every rank reads its own q, and ``mimo_o`` sums the r outputs back.
Computation in fp32 (fp64 stays fp64), output in v's dtype. Slow by design: tests and small checks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ehrfm.ops._checks import compute_dtype
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

Mimo = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def zero_states(b: int, r: int, h: int, p: int, n: int, a: int, dtype: torch.dtype,
                device: torch.device | str = "cpu") -> Mamba3States:
    """All-zero :class:`Mamba3States` (the state before the first token)."""
    return Mamba3States(
        angle=torch.zeros(b, h, a, dtype=dtype, device=device),
        ssm=torch.zeros(b, h, p, n, dtype=dtype, device=device),
        k=torch.zeros(b, r, h, n, dtype=dtype, device=device),
        v=torch.zeros(b, h, p, dtype=dtype, device=device),
    )


def _opt(t: torch.Tensor | None, ct: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(ct)


def _step(
    st: Mamba3States, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, adt: torch.Tensor, dt: torch.Tensor,
    trap: torch.Tensor, q_bias: torch.Tensor, k_bias: torch.Tensor, angles: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, mimo: Mimo, rope: str,
) -> tuple[torch.Tensor, Mamba3States]:
    """One token, all tensors already in the compute dtype. q, k (b, r, g, n); v, z (b, h, p); adt, dt, trap
    (b, h); biases (h, r, n); angles (b, h, a). Returns y (b, h, p) and the new state (not in place)."""
    h, r = v.shape[1], q.shape[1]
    mimo_v, mimo_z, mimo_o = mimo
    theta = wrap_angle(st.angle + angle_increment(angles, dt))
    qr = rotate(expand_heads(q, h) + rank_bias(q_bias), theta.unsqueeze(1), rope)  # (b, r, h, n)
    kr = rotate(expand_heads(k, h) + rank_bias(k_bias), theta.unsqueeze(1), rope)
    lam = torch.sigmoid(trap)
    alpha = torch.exp(adt)
    beta = ((1 - lam) * dt * alpha)[..., None, None]  # weight of the previous input (trapezoid's left end)
    gamma = (lam * dt)[..., None, None]  # weight of the current input (right end)
    vr = mimo_up(v, mimo_v, r)
    prev = torch.einsum("brhn,brhp->bhpn", st.k, mimo_up(st.v, mimo_v, r))
    ssm = alpha[..., None, None] * st.ssm + beta * prev + gamma * torch.einsum("brhn,brhp->bhpn", kr, vr)
    y = torch.einsum("bhpn,brhn->brhp", ssm, qr)
    if D is not None:
        y = y + D[:, None] * vr
    if z is not None:
        y = y * F.silu(mimo_up(z, mimo_z, r))
    return mimo_down(y, mimo_o), Mamba3States(theta, ssm, kr, v)


def mamba3_ref(
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
    chunk_size: int = 64,
    initial_states: Mamba3States | None = None,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Mamba3States]:
    """Mamba-3 scan as a loop over time (``chunk_size`` is accepted for signature parity and ignored).

    Layouts in :mod:`ehrfm.ops.mamba3_common`. Returns y (b, l, h, p) in v's dtype
    [, final :class:`Mamba3States` in the compute dtype]."""
    del chunk_size
    mimo = (mimo_v, mimo_z, mimo_o)
    check_mamba3("mamba3_ref", q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, mimo, rope,
                 initial_states)
    ct = compute_dtype(v.dtype)
    b, length, h, p = v.shape
    r, n, a = q.shape[2], q.shape[-1], angles.shape[-1]
    if initial_states is None:
        st = zero_states(b, r, h, p, n, a, ct, v.device)
    else:
        st = Mamba3States(*(s.to(ct) for s in initial_states))
    qf, kf, vf, anf = q.to(ct), k.to(ct), v.to(ct), angles.to(ct)
    adtf, dtf, trf = adt.to(ct), dt.to(ct), trap.to(ct)
    zf = _opt(z, ct)
    params = (q_bias.to(ct), k_bias.to(ct))
    m: Mimo = (_opt(mimo_v, ct), _opt(mimo_z, ct), _opt(mimo_o, ct))
    ys = []
    for t in range(length):
        y_t, st = _step(st, qf[:, t], kf[:, t], vf[:, t], adtf[..., t], dtf[..., t], trf[..., t], *params,
                        anf[:, t], _opt(D, ct), None if zf is None else zf[:, t], m, rope)
        ys.append(y_t)
    y = torch.stack(ys, dim=1).to(v.dtype)
    # fresh tensors: a step updates them in place, and views would write through into the inputs
    return (y, Mamba3States(*(s.clone() for s in st))) if return_final_states else y


def mamba3_state_update_ref(
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
    """One Mamba-3 recurrent step (generation); ``states`` is updated in place.

    q, k: (b, r, g, n); v, z: (b, h, p); adt, dt, trap: (b, h); angles: (b, h, a); other layouts as the
    scan. Returns y (b, h, p) in v's dtype; same maths as one step of :func:`mamba3_ref`."""
    mimo = (mimo_v, mimo_z, mimo_o)
    check_mamba3("mamba3_state_update", q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, mimo, rope,
                 states, step=True)
    ct = compute_dtype(states.ssm.dtype)
    st = Mamba3States(*(s.to(ct) for s in states))
    y, new = _step(st, q.to(ct), k.to(ct), v.to(ct), adt.to(ct), dt.to(ct), trap.to(ct), q_bias.to(ct),
                   k_bias.to(ct), angles.to(ct), _opt(D, ct), _opt(z, ct),
                   (_opt(mimo_v, ct), _opt(mimo_z, ct), _opt(mimo_o, ct)), rope)
    for old, value in zip(states, new, strict=True):
        old.copy_(value)
    return y.to(v.dtype)
