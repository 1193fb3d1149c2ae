"""Mamba-3 ops: chunked vs reference (forward, final states and every gradient), recurrent steps,
initial-state carry, the trapezoid reducing to Mamba-2's SSD, the rotation, the dispatcher and validation."""

from __future__ import annotations

import pytest
import torch

from ehrfm.ops import current_ops_path, ops_path, ssd_ref
from ehrfm.ops.mamba3 import mamba3_chunked, mamba3_scan, mamba3_state_update
from ehrfm.ops.mamba3_common import Mamba3States, rotate
from ehrfm.ops.mamba3_ref import mamba3_ref

from .helpers import rel_err

TIME_ARGS = ("q", "k", "v", "z", "angles")  # (b, l, ...)
HEAD_TIME_ARGS = ("adt", "dt", "trap")  # (b, h, l)


def mamba3_inputs(
    b: int, length: int, r: int, g: int, h: int, n: int, p: int, a: int, *, mimo: bool = True,
    opts: tuple[bool, bool, bool] = (True, True, True), dtype: torch.dtype = torch.float64,
    device: str = "cpu", seed: int = 0,
) -> tuple[dict[str, torch.Tensor | None], Mamba3States | None]:
    """Random Mamba-3 inputs (leaf tensors requiring grad) and initial states; opts: D, z, initial states.
    ``mimo``: give mimo_v/z/o (else None = rank copies summed)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        t = torch.randn(*shape, generator=gen) * scale + shift
        return t.to(device=device, dtype=dtype).requires_grad_()

    with_d, with_z, with_init = opts
    inp: dict[str, torch.Tensor | None] = {
        "q": rnd(b, length, r, g, n), "k": rnd(b, length, r, g, n), "v": rnd(b, length, h, p),
        # log decays in about [-1, 0), steps in (0, 1): decays neither vanish nor blow up over a chunk
        "adt": (-torch.rand(b, h, length, generator=gen) - 0.01).to(device=device, dtype=dtype)
        .requires_grad_(),
        "dt": (torch.rand(b, h, length, generator=gen) * 0.9 + 0.05).to(device=device, dtype=dtype)
        .requires_grad_(),
        "trap": rnd(b, h, length), "q_bias": rnd(h, r, n, shift=1.0), "k_bias": rnd(h, r, n, shift=1.0),
        "angles": rnd(b, length, h, a, scale=2.0), "D": rnd(h) if with_d else None,
        "z": rnd(b, length, h, p) if with_z else None,
        "mimo_v": rnd(h, r, p) if mimo else None, "mimo_z": rnd(h, r, p) if mimo and with_z else None,
        "mimo_o": rnd(h, r, p) if mimo else None,
    }
    states = None
    if with_init:
        states = Mamba3States(angle=(torch.rand(b, h, a, generator=gen) * 6).to(device=device, dtype=dtype)
                              .requires_grad_(), ssm=rnd(b, h, p, n), k=rnd(b, r, h, n), v=rnd(b, h, p))
    return inp, states


def all_grads(outs: list[torch.Tensor], leaves: dict[str, torch.Tensor | None], seed: int = 1
              ) -> dict[str, torch.Tensor]:
    """Gradients of a fixed random projection of ``outs`` w.r.t. every non-None leaf."""
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen).to(o)).sum() for o in outs)
    names = [k for k, v in leaves.items() if v is not None]
    gs = torch.autograd.grad(loss, [leaves[k] for k in names])  # type: ignore[arg-type,misc]
    return dict(zip(names, gs, strict=True))


def _leaves(inp: dict[str, torch.Tensor | None], st: Mamba3States | None) -> dict[str, torch.Tensor | None]:
    return {**inp, **({} if st is None else {f"state.{k}": v for k, v in st._asdict().items()})}


def _state_outs(st: Mamba3States) -> list[torch.Tensor]:
    # the angle enters through cos/sin: compare those (a wrap by 2 pi is the same rotation)
    return [st.angle.cos(), st.angle.sin(), st.ssm, st.k, st.v]


CASES = [
    # b, L, r, g, h, n, p, a, chunk, mimo, (D, z, init), rope
    (2, 1, 1, 1, 2, 4, 3, 1, 8, False, (True, True, True), "interleaved"),
    (2, 19, 1, 1, 4, 8, 3, 2, 4, False, (True, True, False), "interleaved"),
    (1, 23, 1, 2, 4, 6, 2, 3, 5, False, (False, False, True), "interleaved"),
    (2, 17, 4, 1, 2, 8, 3, 2, 3, True, (True, True, True), "halves"),
    (1, 13, 2, 2, 2, 4, 2, 2, 64, True, (True, False, False), "halves"),
    (2, 21, 3, 1, 3, 8, 2, 4, 8, False, (False, True, True), "interleaved"),
]


@pytest.mark.parametrize("b,length,r,g,h,n,p,a,chunk,mimo,opts,rope", CASES)
def test_chunked_matches_reference_forward_states_and_all_gradients(
    b: int, length: int, r: int, g: int, h: int, n: int, p: int, a: int, chunk: int, mimo: bool,
    opts: tuple[bool, bool, bool], rope: str,
) -> None:
    inp, st = mamba3_inputs(b, length, r, g, h, n, p, a, mimo=mimo, opts=opts, seed=length + r)
    y_r, f_r = mamba3_ref(**inp, rope=rope, initial_states=st, return_final_states=True)  # type: ignore[arg-type]
    y_c, f_c = mamba3_chunked(**inp, rope=rope, chunk_size=chunk, initial_states=st,  # type: ignore[arg-type]
                              return_final_states=True)
    assert y_c.shape == (b, length, h, p) and y_c.dtype == torch.float64
    assert rel_err(y_c, y_r) < 1e-12
    names = ("cos", "sin", "ssm", "k", "v")
    for name, x_c, x_r in zip(names, _state_outs(f_c), _state_outs(f_r), strict=True):
        assert rel_err(x_c, x_r) < 1e-12, name
    leaves = _leaves(inp, st)
    g_r = all_grads([y_r, *_state_outs(f_r)], leaves)
    g_c = all_grads([y_c, *_state_outs(f_c)], leaves)
    assert set(g_r) == {k for k, v in leaves.items() if v is not None}
    for name in g_r:
        assert g_r[name].abs().max() > 0, name  # every input does reach the outputs
        assert rel_err(g_c[name], g_r[name]) < 1e-11, name


def test_float32_and_bfloat16() -> None:
    inp, st = mamba3_inputs(2, 37, 2, 1, 2, 8, 4, 2, dtype=torch.float32, seed=3)
    y_r = mamba3_ref(**inp, rope="halves", initial_states=st)  # type: ignore[arg-type]
    y_c = mamba3_chunked(**inp, rope="halves", chunk_size=16, initial_states=st)  # type: ignore[arg-type]
    assert isinstance(y_c, torch.Tensor) and isinstance(y_r, torch.Tensor)
    assert y_c.dtype == torch.float32 and rel_err(y_c, y_r) < 1e-5
    half, _ = mamba3_inputs(2, 37, 1, 1, 2, 8, 4, 2, mimo=False, dtype=torch.bfloat16, seed=3,
                            opts=(True, True, False))
    y_h, f_h = mamba3_chunked(**half, chunk_size=16, return_final_states=True)  # type: ignore[arg-type]
    assert y_h.dtype == torch.bfloat16 and f_h.ssm.dtype == torch.float32
    assert rel_err(y_h, mamba3_ref(**half)) < 2e-2  # type: ignore[arg-type]


def _detached(inp: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    return {k: None if v is None else v.detach() for k, v in inp.items()}


def _part(inp: dict[str, torch.Tensor | None], sl: slice) -> dict[str, torch.Tensor | None]:
    def cut(key: str, v: torch.Tensor | None) -> torch.Tensor | None:
        if v is None:
            return None
        return v[:, sl] if key in TIME_ARGS else v[..., sl] if key in HEAD_TIME_ARGS else v

    return {key: cut(key, v) for key, v in inp.items()}


@pytest.mark.parametrize("r,rope", [(1, "interleaved"), (3, "halves")])
def test_full_scan_equals_prefix_then_recurrent_steps(r: int, rope: str) -> None:
    raw, _ = mamba3_inputs(2, 15, r, 1, 4, 8, 3, 2, seed=6, opts=(True, True, False))
    inp = _detached(raw)
    y = mamba3_chunked(**inp, rope=rope, chunk_size=4)  # type: ignore[arg-type]
    assert isinstance(y, torch.Tensor)
    k = 9
    _, state = mamba3_chunked(**_part(inp, slice(0, k)), rope=rope, chunk_size=4,  # type: ignore[arg-type]
                              return_final_states=True)
    for t in range(k, 15):
        tok = {key: v for key, v in _part(inp, slice(t, t + 1)).items()}
        one = {key: (None if v is None else v.squeeze(1) if key in TIME_ARGS else
                     v.squeeze(-1) if key in HEAD_TIME_ARGS else v) for key, v in tok.items()}
        y_t = mamba3_state_update(state, **one, rope=rope)  # type: ignore[arg-type]
        torch.testing.assert_close(y_t, y[:, t], rtol=1e-10, atol=1e-10)
    _, final = mamba3_ref(**inp, rope=rope, return_final_states=True)  # type: ignore[arg-type]
    for x_s, x_f in zip(_state_outs(state), _state_outs(final), strict=True):
        torch.testing.assert_close(x_s, x_f, rtol=1e-10, atol=1e-10)


def test_two_halves_with_initial_states_equal_the_whole() -> None:
    raw, st = mamba3_inputs(2, 30, 2, 2, 4, 8, 3, 3, seed=8, mimo=False)
    inp = _detached(raw)
    assert st is not None
    st = Mamba3States(*(s.detach() for s in st))
    y, final = mamba3_chunked(**inp, chunk_size=8, initial_states=st, return_final_states=True)  # type: ignore[arg-type]
    y1, s1 = mamba3_chunked(**_part(inp, slice(0, 13)), chunk_size=8, initial_states=st,  # type: ignore[arg-type]
                            return_final_states=True)
    y2, s2 = mamba3_chunked(**_part(inp, slice(13, None)), chunk_size=8, initial_states=s1,  # type: ignore[arg-type]
                            return_final_states=True)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, rtol=1e-10, atol=1e-10)
    for a, b in zip(_state_outs(s2), _state_outs(final), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_pure_right_endpoint_without_rotation_is_mamba2_ssd() -> None:
    """trap -> +inf (lam = 1) drops the previous-input term, angles 0 drop the rotation: with a per-head
    constant A this is exactly Mamba-2's recurrence, checked against the independent SSD reference."""
    inp, _ = mamba3_inputs(2, 18, 1, 1, 4, 6, 3, 2, mimo=False, opts=(True, False, False), seed=2)
    b, h, length = 2, 4, 18
    A = -torch.rand(h, dtype=torch.float64) - 0.1
    dt = torch.rand(b, h, length, dtype=torch.float64) + 0.05
    zero = torch.zeros(h, 1, 6, dtype=torch.float64)
    q, k, v, D = (inp[key].detach() for key in ("q", "k", "v", "D"))  # type: ignore[union-attr]
    y = mamba3_chunked(q, k, v, dt * A[:, None], dt, torch.full_like(dt, 60.0), zero, zero,
                       torch.zeros(b, length, h, 2, dtype=torch.float64), D=D, chunk_size=5)
    expected = ssd_ref(v, dt.transpose(1, 2), A, k[:, :, 0], q[:, :, 0], D=D)
    assert isinstance(y, torch.Tensor) and isinstance(expected, torch.Tensor)
    assert rel_err(y, expected) < 1e-12
    # and the trapezoid does matter: lam < 1 gives another answer
    other = mamba3_chunked(q, k, v, dt * A[:, None], dt, torch.zeros_like(dt), zero, zero,
                           torch.zeros(b, length, h, 2, dtype=torch.float64), D=D)
    assert isinstance(other, torch.Tensor) and rel_err(other, expected) > 1e-3


@pytest.mark.parametrize("rope", ["interleaved", "halves"])
def test_rotation_keeps_norms_composes_and_leaves_the_rest(rope: str) -> None:
    g = torch.Generator().manual_seed(0)
    x, t1, t2 = torch.randn(5, 8, generator=g), torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    rx = rotate(x, t1, rope)
    torch.testing.assert_close(rx.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotate(rx, t2, rope), rotate(x, t1 + t2, rope))
    # dot products see angle differences only (the complex-state view): R(a) q . R(b) k = q . R(b - a) k
    y = torch.randn(5, 8, generator=g)
    torch.testing.assert_close((rotate(x, t1, rope) * rotate(y, t2, rope)).sum(-1),
                               (x * rotate(y, t2 - t1, rope)).sum(-1))
    untouched = [2, 3, 6, 7] if rope == "halves" else [4, 5, 6, 7]  # 2 angles rotate 2 of the 4 pairs
    assert torch.equal(rx[:, untouched], x[:, untouched])


def test_dispatcher_takes_chunked_on_cpu_and_ref_when_forced() -> None:
    inp, st = mamba3_inputs(1, 11, 2, 1, 2, 4, 2, 1, seed=5)
    y = mamba3_scan(**inp, rope="halves", chunk_size=4, initial_states=st)  # type: ignore[arg-type]
    assert current_ops_path() == "chunked"
    with ops_path("ref"):
        y_ref = mamba3_scan(**inp, rope="halves", initial_states=st)  # type: ignore[arg-type]
        assert current_ops_path() == "ref"
    assert isinstance(y, torch.Tensor) and rel_err(y, y_ref) < 1e-12  # type: ignore[arg-type]
    with ops_path("cuda"), pytest.raises(RuntimeError, match="cuda"):
        mamba3_scan(**inp, rope="halves")  # type: ignore[arg-type]


def test_bad_shapes_name_the_argument() -> None:
    inp = _detached(mamba3_inputs(2, 8, 1, 2, 4, 8, 3, 2)[0])
    with pytest.raises(ValueError, match="dt must have shape"):
        mamba3_chunked(**{**inp, "dt": torch.rand(2, 4, 7)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="groups"):
        mamba3_ref(**{**inp, "q": torch.randn(2, 8, 1, 3, 8), "k": torch.randn(2, 8, 1, 3, 8)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rotary angles"):
        mamba3_chunked(**{**inp, "angles": torch.randn(2, 8, 4, 5)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rope"):
        mamba3_chunked(**inp, rope="spiral")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="states.ssm"):
        bad = Mamba3States(torch.zeros(2, 4, 2), torch.zeros(2, 4, 3, 7), torch.zeros(2, 1, 4, 8),
                           torch.zeros(2, 4, 3))
        mamba3_chunked(**inp, initial_states=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        mamba3_chunked(**inp, chunk_size=0)  # type: ignore[arg-type]
