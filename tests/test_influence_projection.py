"""The seeded block-wise projection: exact, reproducible anywhere, and a JL map."""

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cropi.errors import CropiError
from cropi.influence.projection import BLOCK_ROWS, Projector, entry_scale, project, quantise
from tests.support.projection_blocks import generate_block

ROOT = Path(__file__).resolve().parents[1]
D = 2 * BLOCK_ROWS + 1234  # three blocks, the last one partial


def _x(rows=4, dim=D, seed=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, dim, generator=g) * torch.rand(rows, dim, generator=g) ** 3  # heavy-ish tails


def _dense(kind, k, seed, dim=D):
    blocks = [generate_block(b, k, kind, seed).double() for b in range(math.ceil(dim / BLOCK_ROWS))]
    return torch.cat(blocks)[:dim] * entry_scale(kind, k)  # [D, k]


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_projection_equals_float64_matmul(kind):
    x = _x()
    y = project(x, 64, kind, seed=3)
    ref = x.double() @ _dense(kind, 64, 3)
    err = (y.double() - ref).norm(dim=1) / ref.norm(dim=1)
    assert float(err.max()) < 1e-6, err  # quantisation to 2^-31 of each block's max


def test_quantise_digits_reconstruct_fixed_point():
    x = _x(3, 1000)
    x[1] *= 1e-35  # tiny row: the float64 scaling branch
    digits, e, finite = quantise(x)
    q = sum(digits[i].long() * 256 ** i for i in range(4))  # [B, r]
    assert bool(finite.all()) and int(q.abs().max()) < 2 ** 30
    back = q.double() * torch.pow(2.0, -e.double())[:, None]
    rel = (back - x.double()).abs().amax(1) / x.double().abs().amax(1)
    assert float(rel.max()) <= 2.0 ** -30


def test_bitwise_identical_across_row_splits_piece_order_and_global_rng():
    x = _x(6)
    whole = project(x, 128, "rademacher", seed=11)
    torch.manual_seed(12345)  # global RNG state must not matter
    torch.rand(10)
    proj = Projector(2, D, 128, "rademacher", 11)  # rows 3..4 alone, pieces out of order, cut mid-block
    proj.add(x[3:5, 20000:], 20000)
    proj.add(x[3:5, :5], 0)
    proj.add(x[3:5, 5:20000], 5)
    assert torch.equal(proj.result(), whole[3:5])
    assert torch.equal(project(x[5:6], 128, "rademacher", seed=11), whole[5:6])


def test_rows_of_r_do_not_depend_on_the_input_dim():
    x = _x(2)
    padded = torch.cat([x, torch.zeros(2, BLOCK_ROWS + 5)], dim=1)  # more rows of R, multiplied by 0
    assert torch.equal(project(padded, 64, seed=1), project(x, 64, seed=1))


def test_identical_in_a_fresh_process():
    """Another actor, or this one after a restart: same seed, same bytes."""
    code = ("import hashlib, torch; from cropi.influence.projection import project; "
            "g = torch.Generator().manual_seed(7); x = torch.randn(3, 40000, generator=g); "
            "print(hashlib.sha256(project(x, 96, 'rademacher', seed=5).numpy().tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    x = torch.randn(3, 40000, generator=torch.Generator().manual_seed(7))
    here = hashlib.sha256(project(x, 96, "rademacher", seed=5).numpy().tobytes()).hexdigest()
    assert out.stdout.strip() == here


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_johnson_lindenstrauss_inner_products(kind):
    # n random unit vectors in D dims; for k = 1024 each <Pa, Pb> - <a, b> has std ~ 1/sqrt(k) ~ 0.031.
    # JL: all n^2 pairs within eps = 2 * sqrt(ln(n^2) / k) ~ 0.18. A wrong scale (e.g. no 1/sqrt(k),
    # or 1/k) fails the norm check below by orders of magnitude; sqrt(2) off fails it too.
    n, k, dim = 48, 1024, 20000
    a = torch.randn(n, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a[1] = a[0] + 0.8 * a[1]  # one correlated pair
    a = a / a.norm(dim=1, keepdim=True)
    y = project(a.float(), k, kind, seed=2).double()
    err = (y @ y.T - a @ a.T).abs()
    eps = 2 * math.sqrt(math.log(n * n) / k)
    assert float(err.max()) < eps, float(err.max())
    sq = (y * y).sum(1)  # E = 1, sd ~ sqrt(2/k) each; mean of 48 within 4 sd of it
    assert abs(float(sq.mean()) - 1) < 4 * math.sqrt(2 / k / n)


def test_rademacher_entries_are_balanced_signs():
    r = generate_block(0, 256, "rademacher", seed=0)  # [16384, 256]
    assert set(r.unique().tolist()) == {-1, 1}
    words = r.view(-1, 64).double()  # every bit position of the 64-bit random words
    sd = 1 / math.sqrt(words.shape[0])
    assert float(words.mean(0).abs().max()) < 5 * sd  # catches a stuck sign bit (random_ [0, 2^63))
    assert not torch.equal(generate_block(1, 256, "rademacher", seed=0), r)


def test_gaussian_entries_have_the_right_moments():
    t = generate_block(0, 128, "gaussian", seed=0).double() * entry_scale("gaussian", 128) * math.sqrt(128)
    assert abs(float(t.mean())) < 5 / math.sqrt(t.numel())
    assert abs(float((t ** 2).mean()) - 1) < 0.01
    assert abs(float((t ** 4).mean()) - 3) < 0.05  # Gaussian kurtosis, not Rademacher's 1


def test_non_finite_row_is_flagged_and_others_unchanged():
    x = _x(3)
    clean = project(x, 32, seed=4)
    x[1, 777] = float("nan")
    x[2, BLOCK_ROWS + 3] = float("inf")
    proj = Projector(3, D, 32, "rademacher", 4)
    proj.add(x, 0)
    out = proj.result()
    assert proj.bad_rows.tolist() == [False, True, True]
    assert torch.equal(out[0], clean[0]) and bool(out[1:].isnan().all())


def test_incomplete_or_overlapping_input_raises():
    proj = Projector(1, D, 16)
    proj.add(torch.ones(1, 100), 0)
    with pytest.raises(CropiError, match="incomplete"):
        proj.result()
    with pytest.raises(CropiError, match="overlapping"):
        proj.add(torch.ones(1, 10), 50)
    with pytest.raises(CropiError, match="kind"):
        Projector(1, 10, 4, kind="sparse")


def _sjlt_matrix(k, seed, dim=D):
    """The sjlt map as a dense [D, k] matrix, by projecting the identity (slow, obvious)."""
    cols = []
    for start in range(0, dim, 4096):
        eye = torch.zeros(min(4096, dim - start), dim)
        eye[torch.arange(eye.shape[0]), torch.arange(start, start + eye.shape[0])] = 1.0
        cols.append(project(eye, k, "sjlt", seed).double())
    return torch.cat(cols)  # [D, k]


def test_sjlt_is_a_sparse_sign_map_with_unit_columns_and_split_invariant():
    from cropi.influence.projection import SJLT_NONZEROS, make_projector

    k = 64
    r = _sjlt_matrix(k, seed=3, dim=BLOCK_ROWS + 100)  # [D, k]
    nz = (r != 0).sum(1)
    assert bool((nz <= SJLT_NONZEROS).all()) and float((nz == SJLT_NONZEROS).double().mean()) == 1.0
    assert torch.allclose(r.abs()[r != 0], torch.full_like(r[r != 0], 1 / math.sqrt(SJLT_NONZEROS)))
    assert torch.allclose((r * r).sum(1), torch.ones(r.shape[0], dtype=torch.float64))  # E||Rx||^2 = ||x||^2
    for j in range(SJLT_NONZEROS):  # one bucket in each of the s slices of the output
        lo, hi = j * k // SJLT_NONZEROS, (j + 1) * k // SJLT_NONZEROS
        assert bool(((r[:, lo:hi] != 0).sum(1) == 1).all())
    x = _x(dim=BLOCK_ROWS + 100)
    whole = project(x, k, "sjlt", seed=3)
    exact = x.double() @ r  # [B, k]
    scale = float(exact.abs().max())  # sums are float32 within a block: errors relative to the output's scale
    torch.testing.assert_close(whole.double(), exact, rtol=0, atol=1e-6 * scale)
    parts = make_projector(x.shape[0], x.shape[1], k, "sjlt", 3)
    for a, b in ((5000, 16384), (0, 5000), (16384, x.shape[1])):  # any order, across a block edge
        parts.add(x[:, a:b], a)
    torch.testing.assert_close(parts.result().double(), exact, rtol=0, atol=1e-6 * scale)
    assert not torch.equal(project(x, k, "sjlt", seed=4), whole)
    with pytest.raises(CropiError, match="incomplete"):
        p = make_projector(x.shape[0], x.shape[1], k, "sjlt", 3)
        p.add(x[:, :10], 0)
        p.result()


def test_sjlt_preserves_inner_products_like_jl():
    x = _x(rows=6, dim=40_000, seed=11)
    for kind in ("sjlt", "rademacher"):
        errs = []
        for seed in range(5):
            y = project(x, 1024, kind, seed).double()
            g_x, g_y = x.double() @ x.double().T, y @ y.T
            norms = torch.sqrt(torch.diag(g_x))
            errs.append(float(((g_y - g_x) / (norms[:, None] * norms[None, :])).abs().max()))
        # JL at k = 1024: cosine errors of order 1/sqrt(k) ~ 0.03; 0.15 is five of those
        assert max(errs) < 0.15, (kind, errs)


def test_sjlt_hash_cache_changes_no_bit_and_respects_its_cap(monkeypatch):
    """The folded hashes kept for later passes give the bits a fresh draw gives; past the cap a
    block is drawn again, not kept; a non-finite row is flagged without touching the others."""
    from cropi.influence import projection

    x = _x(rows=3, dim=BLOCK_ROWS + 777, seed=5)
    monkeypatch.setattr(projection, "_SJLT_CACHE", {})
    monkeypatch.setattr(projection, "_SJLT_CACHED_BYTES", [0])
    cold = project(x, 256, "sjlt", seed=2)
    assert len(projection._SJLT_CACHE[(2, 256, "cpu")]) == 2  # both blocks kept
    assert torch.equal(project(x, 256, "sjlt", seed=2), cold)  # warm: from the cache
    monkeypatch.setattr(projection, "_SJLT_CACHE", {})
    monkeypatch.setattr(projection, "_SJLT_CACHED_BYTES", [0])
    monkeypatch.setattr(projection, "SJLT_CACHE_MB", 0)
    assert torch.equal(project(x, 256, "sjlt", seed=2), cold)  # no cache at all: the same bits
    assert projection._SJLT_CACHE[(2, 256, "cpu")] == {} and projection._SJLT_CACHED_BYTES[0] == 0
    bad = x.clone()
    bad[1, 10] = float("nan")
    out = project(bad, 256, "sjlt", seed=2)
    assert bool(out[1].isnan().all()) and torch.equal(out[[0, 2]], cold[[0, 2]])
