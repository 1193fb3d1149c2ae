"""Mamba-2 SSD (state-space duality), chunked: the algorithm of Dao & Gu (2024), in plain PyTorch.

Mamba-2's decay is a scalar per (head, step), so inside a chunk of T steps the scan is a masked,
decay-weighted attention ``Y = (C B^T o exp(segsum(dt A))) X`` computed with matmuls; chunk-final
states carry information across chunks through a short recurrence (one step per chunk), and each
chunk reads the state it inherits through ``C exp(cumsum(dt A))``. Cost O(L T) instead of a loop over L;
autograd differentiates it directly. ``segsum`` is built by a masked cumsum (not a difference of
cumsums) so that decays near 1 keep full precision, and the upper triangle is masked to -inf *before*
the exponential so nothing overflows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ehrfm.ops._checks import check_ssd, compute_dtype, process_delta

DEFAULT_CHUNK = 64


def segsum(x: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = x[..., j+1] + ... + x[..., i]`` for i >= j, ``-inf`` above the diagonal.

    x: (..., T) -> (..., T, T)."""
    T = x.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=x.device)
    rep = x.unsqueeze(-1).expand(*x.shape, T).masked_fill(~torch.tril(ones, -1), 0.0)  # [k, j] = x_k, k > j
    return torch.cumsum(rep, dim=-2).masked_fill(~torch.tril(ones), float("-inf"))


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    dt_softplus: bool = False,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD scan by chunks (same semantics as :func:`ehrfm.ops.reference.ssd_ref`).

    x: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); D: (h,) or (h, p); z: (b, l, h, p);
    dt_bias: (h,); initial_states: (b, h, p, n). Returns y (b, l, h, p) in x's dtype
    [, final_states (b, h, p, n) in fp32 (fp64 for fp64 input)].
    """
    check_ssd(x, dt, A, B, C, D, z, dt_bias, initial_states)
    if chunk_size < 1:
        raise ValueError(f"ssd_chunked: chunk_size must be >= 1, got {chunk_size}")
    ct = compute_dtype(x.dtype)
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    hg = h // g
    T = min(chunk_size, max(length, 1))
    nc = -(-length // T)
    pad = nc * T - length
    xf = x.to(ct)
    dl = process_delta(dt.to(ct), None if dt_bias is None else dt_bias.to(ct), dt_softplus)
    # zero-padded steps have dt = 0: decay 1 and no input, so they change neither outputs nor state
    X = F.pad(xf * dl.unsqueeze(-1), (0, 0, 0, 0, 0, pad))
    dA = F.pad(dl * A.to(ct), (0, 0, 0, pad))
    Bp = F.pad(B.to(ct), (0, 0, 0, 0, 0, pad))
    Cp = F.pad(C.to(ct), (0, 0, 0, 0, 0, pad))
    # layouts: X (b, c, g, hg, T, p); dA (b, c, g, hg, T); B, C (b, c, g, T, n)
    X = X.reshape(b, nc, T, g, hg, p).permute(0, 1, 3, 4, 2, 5)
    dA = dA.reshape(b, nc, T, g, hg).permute(0, 1, 3, 4, 2)
    Bc = Bp.reshape(b, nc, T, g, n).permute(0, 1, 3, 2, 4)
    Cc = Cp.reshape(b, nc, T, g, n).permute(0, 1, 3, 2, 4)
    a_cum = torch.cumsum(dA, dim=-1)

    # 1. within chunks: decay-masked "attention", shared C B^T per group
    CB = torch.matmul(Cc, Bc.transpose(-1, -2)).unsqueeze(3)  # (b, c, g, 1, T, T)
    y = torch.matmul(CB * torch.exp(segsum(dA)), X)  # (b, c, g, hg, T, p)

    # 2. state each chunk adds, decayed to the chunk end: (b, c, g, hg, p, n)
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)
    chunk_states = torch.matmul((X * decay_to_end.unsqueeze(-1)).transpose(-1, -2), Bc.unsqueeze(3))

    # 3. across chunks: one recurrence step per chunk
    s = (xf.new_zeros(b, h, p, n) if initial_states is None else initial_states.to(ct)).reshape(
        b, g, hg, p, n
    )
    chunk_decay = torch.exp(a_cum[..., -1])  # (b, c, g, hg)
    entering = []
    for k in range(nc):
        entering.append(s)
        s = chunk_decay[:, k, ..., None, None] * s + chunk_states[:, k]
    prev = torch.stack(entering, dim=1)  # (b, c, g, hg, p, n)

    # 4. each chunk reads its inherited state: C_t exp(a_cum_t) S_prev
    y = y + torch.matmul(Cc.unsqueeze(3), prev.transpose(-1, -2)) * torch.exp(a_cum).unsqueeze(-1)
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, nc * T, h, p)[:, :length]
    if D is not None:
        Df = D.to(ct)
        y = y + xf * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(x.dtype)
    return (y, s.reshape(b, h, p, n)) if return_final_states else y
