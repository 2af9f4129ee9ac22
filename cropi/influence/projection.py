"""Random projection of sampled-coordinate gradients, generated block by block, never stored.

    y = x @ R * scale,   x: [B, D] sampled gradients,  R: [D, k] random,  y: [B, k]

R has i.i.d. entries: `rademacher` (+1/-1, scale 1/sqrt(k)) or `gaussian` (N(0,1) by inverse
CDF on 65536 equiprobable quantiles, discretised to steps of 1/16, so entries are integers
t = round(16 * Phi^-1(u)) and scale = 1/sqrt(k * E[t^2]), giving E[(R*scale)^2] = 1/k exactly).
Row block b (global rows b*BLOCK_ROWS ... +BLOCK_ROWS) is drawn from
torch.Generator(device).manual_seed(seed + b), so entry (i, c) depends on (seed, i, c, device
type) only: not on D, on how many rows are projected at once, on the order pieces arrive, or on
the process. The CPU (mt19937) and CUDA (Philox) generators give different matrices: every
actor of a run must use one device type.

Why integers: R is generated straight into int8 (random bits -> 8 signs per byte via a
lookup table), and x is quantised per (row, block) to fixed point with a power-of-two scale
2^e (q = round(x * 2^e), |q| < 2^30, error <= 2^-e/2 <= max|x_block| * 2^-31). q is split into
four int8 digits (q = sum_i d_i 256^i, d_i in [-128, 127]) stacked as 4B rows, and one
int8 x int8 -> int32 matmul (AMX/VNNI on CPU, tensor cores on GPU) applies R to all of them.
Integer sums are exact, so y_b = 2^-e * sum_i 256^i (d_i @ R) is exact in float64 and the
result does not depend on how the work is split. The only rounding after quantisation is the
float64 sum over blocks, taken in the order blocks complete. Generating int8 moves 4x fewer
bytes than float32 and the int8 GEMM runs faster than the float32 one; still, making R costs
more than applying it when few rows are projected at once (benchmarks/influence_engine.py
measures the rate by row count). Within a block, R is made and applied SUB_ROWS rows at a time
(consecutive pieces of the block's generator stream, laid out as R^T) so each piece is still
in cache when the GEMM reads it.

Non-finite inputs: a row whose block holds NaN/inf is quantised as zeros and its output set to
NaN; `bad_rows` says which.

`sjlt` (SparseProjector) replaces R by a sparse JL map: each input coordinate is added, with a
seeded sign, into 4 seeded output buckets; no matrix is generated, so its cost is linear in D
and does not grow with k. `make_projector` picks the class for a kind.

Over 300 lines by design: both kinds share the seeded sources and the int8 quantisation that
make a projection bit-identical however the rows are split; apart, that argument would be too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cropi.errors import CropiError

BLOCK_ROWS = 16384
SUB_ROWS = 2048
FRAC_BITS = 30
KINDS = ("rademacher", "gaussian")  # dense R, applied by the exact int8 GEMM (Projector)
SPARSE_KINDS = ("sjlt",)  # sparse JL: no matrix at all (SparseProjector)
SJLT_NONZEROS = 4


def _sign_table() -> torch.Tensor:
    """Byte v -> its 8 bits as int8 signs (+1 set, -1 clear), stored as float32 [256, 2] bit
    patterns so that index_select (a plain row copy, the fastest gather torch has) expands one
    random byte into 8 entries."""
    v = torch.arange(256)[:, None]
    signs = ((v >> torch.arange(8)) & 1).to(torch.int8) * 2 - 1  # [256, 8]
    return signs.contiguous().view(torch.float32)  # [256, 2]


def _gauss_table() -> torch.Tensor:
    """16-bit uniform -> round(16 * Phi^-1((u + 0.5) / 65536)), as float32 [65536, 1]."""
    u = (torch.arange(65536, dtype=torch.float64) + 0.5) / 65536
    return torch.round(16 * torch.special.ndtri(u)).to(torch.float32)[:, None]  # [65536, 1], |t| <= 67


_TABLES: dict[tuple[str, str], torch.Tensor] = {}


def _table(kind: str, device: torch.device) -> torch.Tensor:
    key = (kind, str(device))
    if key not in _TABLES:
        _TABLES[key] = (_sign_table() if kind == "rademacher" else _gauss_table()).to(device)
    return _TABLES[key]


def entry_scale(kind: str, proj_dim: int) -> float:
    """The factor applied to the integer entries of R: 1/sqrt(k * E[t^2])."""
    if kind == "rademacher":
        return 1.0 / math.sqrt(proj_dim)
    second_moment = float((_gauss_table().double() ** 2).mean())
    return 1.0 / math.sqrt(proj_dim * second_moment)


def _check_piece(x: torch.Tensor, offset: int, num_rows: int, dim: int) -> int:
    """A piece of x must be [num_rows, n] inside the input dim; returns n."""
    if x.dim() != 2 or x.shape[0] != num_rows:
        raise CropiError(f"projection piece must be [{num_rows}, n], got {tuple(x.shape)}")
    n = x.shape[1]
    if offset < 0 or offset + n > dim:
        raise CropiError(f"projection piece [{offset}, {offset + n}) lies outside the input dim {dim}")
    return n


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise CropiError(f"projection kind must be one of {KINDS}, got {kind!r}")


class _Source:
    """Makes the pieces of R^T for one (proj_dim, kind, seed, device) into reused buffers.

    Block b: generator seeded with seed + b; piece s (rows s*SUB_ROWS ...) holds the s-th
    SUB_ROWS * k entries of that stream, entry (c, r) at position c * SUB_ROWS + r, whatever the
    block's row count. R^T is the layout the int8 GEMM runs fastest with (big operand on the
    left), and the piece is still in cache when the GEMM reads it.
    """

    def __init__(self, proj_dim: int, kind: str, seed: int, device: torch.device):
        _check_kind(kind)
        self.k, self.kind, self.seed = proj_dim, kind, int(seed)
        self.table = _table(kind, device)
        rademacher = kind == "rademacher"
        n = SUB_ROWS * proj_dim  # entries per piece
        self.words = torch.empty(n // (64 if rademacher else 4), dtype=torch.int64, device=device)
        self.index = torch.empty(n // 8 if rademacher else n, dtype=torch.int32, device=device)
        self.rows = torch.empty(self.index.numel(), self.table.shape[1], dtype=torch.float32, device=device)
        self.generator = torch.Generator(device=device)

    def pieces(self, b: int, rows: int):
        """Yield (start, int8 [k, n]) covering rows [0, rows) of block b. Each piece is a view of
        a buffer the next one overwrites."""
        self.generator.manual_seed(self.seed + int(b))
        for start in range(0, rows, SUB_ROWS):
            self.words.random_(-2**63, None, generator=self.generator)  # all 64 bits random
            if self.kind == "rademacher":
                self.index.copy_(self.words.view(torch.uint8))
                piece = torch.index_select(self.table, 0, self.index, out=self.rows).view(torch.int8)  # [SUB*k/8, 8]
            else:
                self.index.copy_(self.words.view(torch.uint16))
                piece = torch.index_select(self.table, 0, self.index, out=self.rows).to(torch.int8)  # [SUB*k, 1]
            yield start, piece.view(self.k, SUB_ROWS)[:, :min(SUB_ROWS, rows - start)]


def _int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int8 [M, K] @ int8 [K, N] -> int32 [M, N]. (The CUDA branch is not exercised by
    the CPU test suite.)"""
    if a.device.type == "cpu":
        return torch._int_mm(a, b)
    m, k = a.shape
    n = b.shape[1]
    mp, kp, np_ = max(17, -(-m // 8) * 8), -(-k // 8) * 8, -(-n // 8) * 8  # cuBLASLt int8 shape rules
    try:
        out = torch._int_mm(F.pad(a, (0, kp - k, 0, mp - m)), F.pad(b, (0, np_ - n, 0, kp - k)))
        return out[:m, :n]
    except RuntimeError:  # no int8 GEMM here: float64 is exact for these magnitudes (< 2^53)
        return (a.double() @ b.double()).to(torch.int32)


def quantise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row fixed point: x ~= q * 2^-e with |q| < 2^30, q as 4 balanced int8 digits.

    x [B, r] -> digits int8 [4, B, r] (q = sum_i digits[i] * 256^i), e [B] int, finite [B] bool.
    Rows with NaN/inf are quantised as zeros and flagged.
    """
    x = x.float()
    peak = x.abs().amax(dim=1)  # [B] max |x|, exact (NaN propagates)
    finite = torch.isfinite(peak)
    if not bool(finite.all()):
        x = torch.where(finite[:, None], x, torch.zeros_like(x))
        peak = torch.where(finite, peak, torch.zeros_like(peak))
    e = FRAC_BITS - torch.frexp(peak).exponent  # [B] int32: peak < 2^(30 - e)
    if int(e.max()) > 120:  # tiny rows: 2^e would overflow float32, scale in float64 (still exact)
        q = torch.round(x.double() * torch.pow(2.0, e.double())[:, None]).to(torch.int32)  # [B, r]
    else:
        q = torch.round(x * torch.pow(2.0, e.float())[:, None]).to(torch.int32)  # [B, r], exact scaling
    # Balanced digits in two in-place int32 ops: with u = q + 0x808080 = c0 + 256 c1 + 65536 c2 +
    # 2^24 c3 (bytes c0..c2 unsigned, c3 signed), q = sum_{i<3} (c_i - 128) 256^i + c3 2^24, and
    # c_i - 128 is byte c_i with its top bit flipped, read as int8.
    q += 0x808080  # |q| < 2^30: no overflow
    q ^= 0x808080
    digits = q.view(torch.int8).view(*x.shape, 4).permute(2, 0, 1).contiguous()  # [4, B, r]
    return digits, e, finite


class Projector:
    """Accumulates y = x @ R * scale for B rows while pieces of x arrive in any order.

    `add(piece, offset)` gives columns [offset, offset + n) of x; a block of R is generated and
    applied as soon as its rows are covered. `result()` -> float32 [B, k].
    """

    def __init__(self, num_rows: int, dim: int, proj_dim: int, kind: str = "rademacher", seed: int = 0,
                 device="cpu"):
        _check_kind(kind)
        if proj_dim < 1 or dim < 1 or num_rows < 1:
            raise CropiError(f"projection needs rows, input dim and proj_dim >= 1, got {num_rows}, {dim}, {proj_dim}")
        self.num_rows, self.dim, self.proj_dim, self.kind, self.seed = num_rows, dim, proj_dim, kind, seed
        self.device = torch.device(device)
        self.num_blocks = -(-dim // BLOCK_ROWS)
        self._acc = torch.zeros(num_rows, proj_dim, dtype=torch.float64, device=self.device)  # [B, k]
        self._bad = torch.zeros(num_rows, dtype=torch.bool, device=self.device)  # [B]
        self._pending: dict[int, list[tuple[int, torch.Tensor]]] = {}
        self._filled: dict[int, int] = {}
        self._done: set[int] = set()
        self._source = _Source(proj_dim, kind, seed, self.device)

    def _rows_in(self, b: int) -> int:
        return min(BLOCK_ROWS, self.dim - b * BLOCK_ROWS)

    def add(self, x: torch.Tensor, offset: int) -> None:
        n = _check_piece(x, offset, self.num_rows, self.dim)
        pos = offset
        while pos < offset + n:
            b = pos // BLOCK_ROWS
            end = min((b + 1) * BLOCK_ROWS, offset + n)
            if b in self._done:
                raise CropiError(f"projection block {b} was given twice (piece at offset {offset})")
            piece = x[:, pos - offset:end - offset]  # [B, end - pos]
            lo, hi = pos - b * BLOCK_ROWS, end - b * BLOCK_ROWS
            if any(s < hi and lo < s + p.shape[1] for s, p in self._pending.get(b, ())):
                raise CropiError(f"projection block {b} was given overlapping pieces (offset {offset})")
            self._filled[b] = self._filled.get(b, 0) + end - pos
            if self._filled[b] == self._rows_in(b) and b not in self._pending:
                self._apply(b, piece)
            else:  # keep a copy, not a view that would pin the caller's whole tensor
                self._pending.setdefault(b, []).append((lo, piece.clone()))
                if self._filled[b] == self._rows_in(b):
                    parts = sorted(self._pending.pop(b), key=lambda t: t[0])
                    self._apply(b, torch.cat([p for _, p in parts], dim=1))
            pos = end

    def _apply(self, b: int, x: torch.Tensor) -> None:
        rows = x.shape[1]
        digits, e, finite = quantise(x.to(self.device))  # [4, B, r]
        self._bad |= ~finite
        digits = digits.view(4 * self.num_rows, rows).t()  # [r, 4B]
        acc = torch.zeros(self.proj_dim, 4 * self.num_rows, dtype=torch.int32, device=self.device)  # [k, 4B]
        for start, piece in self._source.pieces(b, rows):
            acc += _int_matmul(piece, digits[start:start + piece.shape[1]])  # exact; |acc| < 128 * 67 * 2^14 < 2^31
        y = acc.t().reshape(4, self.num_rows, self.proj_dim).long()
        total = y[0] + (y[1] << 8) + (y[2] << 16) + (y[3] << 24)  # [B, k] sum_r q_r R_rc, exact (< 2^53)
        self._acc += total.double() * torch.pow(2.0, -e.double())[:, None]  # exact per block
        self._done.add(b)

    @property
    def bad_rows(self) -> torch.Tensor:
        return self._bad.clone()

    def result(self) -> torch.Tensor:
        if len(self._done) != self.num_blocks:
            missing = sorted(set(range(self.num_blocks)) - self._done)
            raise CropiError(f"projection input incomplete: blocks {missing[:8]} (of {self.num_blocks}) not fully given")
        out = (self._acc * entry_scale(self.kind, self.proj_dim)).float()  # [B, k]
        out[self._bad] = float("nan")
        return out


SJLT_CACHE_MB = 256  # per process: folded sjlt hashes kept for the next pass (blocks past the cap are redrawn)
_SJLT_CACHE: dict[tuple[int, int, str], dict[int, torch.Tensor]] = {}
_SJLT_CACHED_BYTES = [0]


def _sjlt_hash(seed: int, proj_dim: int, b: int, device: torch.device) -> torch.Tensor:
    """Block b's sjlt map, folded: int64 [BLOCK_ROWS, s], entry (i, j) = the output bucket of
    coordinate b*BLOCK_ROWS + i in slice j, plus proj_dim where its sign is -1 (so one scatter
    into [B, 2k] applies bucket and sign together, with no signed copy of the input).
    Drawn from torch.Generator(device).manual_seed(seed + b): uniform u -> bucket lo_j + floor(u * width_j),
    then a fair bit per entry for the sign. Cached per process up to SJLT_CACHE_MB."""
    key = (int(seed), int(proj_dim), str(device))
    blocks = _SJLT_CACHE.setdefault(key, {})
    if b in blocks:
        return blocks[b]
    edges = [j * proj_dim // SJLT_NONZEROS for j in range(SJLT_NONZEROS + 1)]
    lo = torch.tensor(edges[:-1], device=device)  # [s] slice starts
    width = torch.tensor([hi - a for a, hi in zip(edges, edges[1:])], device=device)  # [s]
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) + int(b))
    u = torch.rand(BLOCK_ROWS, SJLT_NONZEROS, generator=gen, device=device, dtype=torch.float64)
    buckets = lo + (u * width).long().clamp(max=width - 1)  # [R, s]
    negative = torch.randint(0, 2, (BLOCK_ROWS, SJLT_NONZEROS), generator=gen, device=device) == 0  # [R, s]
    folded = (buckets + negative.long() * proj_dim).t().contiguous()  # [s, R]: slice j's buckets contiguous
    if _SJLT_CACHED_BYTES[0] + folded.numel() * folded.element_size() <= SJLT_CACHE_MB * 2 ** 20:
        blocks[b] = folded
        _SJLT_CACHED_BYTES[0] += folded.numel() * folded.element_size()
    return folded


def clear_sjlt_cache() -> None:
    """Drop the cached sjlt hashes (a gradient actor releasing its device memory between phases)."""
    _SJLT_CACHE.clear()
    _SJLT_CACHED_BYTES[0] = 0


class SparseProjector:
    """Sparse Johnson-Lindenstrauss projection (`sjlt`, Kane & Nelson 2014, block construction):
    input coordinate i goes to s = SJLT_NONZEROS output buckets, one in each of s equal slices of
    the k outputs, with random signs and weight 1/sqrt(s); E[<y, y'>] = <x, x'>. Buckets and signs
    of rows b*BLOCK_ROWS ... come from torch.Generator(device).manual_seed(seed + b), so, like the
    dense kinds, entry (i, c) depends on (seed, i, c, device type) only. Cost: s scatter-adds per
    input coordinate, linear in D and independent of k; no matrix is ever formed.

    Same interface as Projector. Each piece (one layer's [B, S_l] sampled gradient, as the
    engine hands it over) is applied at once: s index_add_ calls per block of rows straight from
    the piece into a float32 [B, 2k] sum (positive-sign and negative-sign halves, so the input is
    never copied or multiplied), folded to [B, k] and added into float64 once per piece. Float32
    sums within a piece: errors ~1e-7 of the output's scale, the precision of the float32 result;
    they depend on where pieces are cut only in that last rounding."""

    def __init__(self, num_rows: int, dim: int, proj_dim: int, kind: str = "sjlt", seed: int = 0, device="cpu"):
        if proj_dim < SJLT_NONZEROS or dim < 1 or num_rows < 1:
            raise CropiError(f"sjlt projection needs rows and input dim >= 1 and proj_dim >= {SJLT_NONZEROS}, "
                             f"got {num_rows}, {dim}, {proj_dim}")
        self.num_rows, self.dim, self.proj_dim, self.seed = num_rows, dim, proj_dim, int(seed)
        self.device = torch.device(device)
        self._acc = torch.zeros(num_rows, proj_dim, dtype=torch.float64, device=self.device)  # [B, k]
        self._part = torch.empty(num_rows, 2 * proj_dim, device=self.device)  # [B, 2k] float32, reused per piece
        self._bad = torch.zeros(num_rows, dtype=torch.bool, device=self.device)  # [B]
        self._covered = torch.zeros(dim, dtype=torch.bool)

    def add(self, x: torch.Tensor, offset: int) -> None:
        n = _check_piece(x, offset, self.num_rows, self.dim)
        if bool(self._covered[offset:offset + n].any()):
            raise CropiError(f"projection input columns [{offset}, {offset + n}) overlap a piece given before")
        self._covered[offset:offset + n] = True
        x = x.to(device=self.device, dtype=torch.float32)  # [B, n]; no copy for a float32 gradient
        finite = torch.isfinite(x).all(1)  # [B]
        if not bool(finite.all()):
            self._bad |= ~finite
            x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        part = self._part.zero_()
        pos = offset
        while pos < offset + n:
            b = pos // BLOCK_ROWS
            end = min((b + 1) * BLOCK_ROWS, offset + n)
            folded = _sjlt_hash(self.seed, self.proj_dim, b, self.device)  # [s, R]
            rows = slice(pos - b * BLOCK_ROWS, end - b * BLOCK_ROWS)
            piece = x[:, pos - offset:end - offset]  # [B, r] view
            for j in range(SJLT_NONZEROS):
                part.index_add_(1, folded[j, rows], piece)
            pos = end
        k = self.proj_dim
        self._acc += (part[:, :k] - part[:, k:]).double()

    @property
    def bad_rows(self) -> torch.Tensor:
        return self._bad.clone()

    def result(self) -> torch.Tensor:
        if not bool(self._covered.all()):
            missing = int((~self._covered).sum())
            raise CropiError(f"projection input incomplete: {missing} of {self.dim} columns not given")
        out = (self._acc / math.sqrt(SJLT_NONZEROS)).float()  # [B, k]
        out[self._bad] = float("nan")
        return out


def make_projector(num_rows: int, dim: int, proj_dim: int, kind: str = "rademacher", seed: int = 0, device="cpu"):
    """The projector of a kind: dense (Projector) or sparse (SparseProjector)."""
    if kind in SPARSE_KINDS:
        return SparseProjector(num_rows, dim, proj_dim, kind, seed, device)
    return Projector(num_rows, dim, proj_dim, kind, seed, device)


def project(x: torch.Tensor, proj_dim: int, kind: str = "rademacher", seed: int = 0) -> torch.Tensor:
    """One-shot projection of full rows. [B, D] -> [B, k] float32"""
    proj = make_projector(x.shape[0], x.shape[1], proj_dim, kind, seed, x.device)
    proj.add(x, 0)
    return proj.result()
