"""sparse24 (ELAS 2:4 activation sparsity): the tie rule by hand and against a sort-based brute force,
the NaN / inf policy, Triton (interpreted on CPU, compiled on CUDA) == torch reference bit for bit,
the selector's algebra (idempotence, scale equivariance, fused == unfused, padding), statistics by
hand, the compact form, sparse24_mm's fallback and the semi-structured GEMM on CUDA."""

import pytest
import torch

from layerwise_kernels import (
    Sparse24Stats,
    compress_24,
    decompress_24,
    mask_24,
    relu2_sparsify_24,
    semi_structured_supported,
    sparse24_mm,
    sparse24_stats,
    sparsify_24,
)
from layerwise_kernels.sparse24.naive import mask_24_naive, relu2_sparsify_24_naive

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ("torch", "triton")
INF, NAN = float("inf"), float("nan")
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(BITS[t.dtype]).cpu()


def _randn(shape, seed=0, dtype=torch.float32, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(DEVICE, dtype)


def _tied(shape, seed=0, dtype=torch.float32):
    """Values with few mantissa bits (k * 2^e, |k| < 16): many ties, relu^2 exact even in bf16."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(-15, 16, shape, generator=gen).float()
    e = torch.randint(-3, 4, shape, generator=gen).float()
    return (k * 2.0**e).to(DEVICE, dtype)


def _brute_force_mask(y: torch.Tensor) -> torch.Tensor:
    """Stable sort of each group by (NaN first, |v| descending, index): keep the first two."""
    groups = y.detach().double().cpu().reshape(-1, 4).tolist()
    keep = []
    for g in groups:
        order = sorted(range(4), key=lambda i: (g[i] == g[i], -abs(g[i]) if g[i] == g[i] else 0))
        keep.append([i in order[:2] for i in range(4)])
    return torch.tensor(keep).reshape(y.shape)


def _check_two_per_group(mask: torch.Tensor, s: torch.Tensor) -> None:
    per_group = mask.reshape(-1, 4).sum(-1)
    assert bool((per_group == 2).all())
    assert bool(((s.reshape(-1, 4) != 0).sum(-1) <= 2).all())


# Hand cases of the tie rule (|v| desc, index asc): (input row, kept slots).
HAND_CASES = [
    ([3.0, 3.0, 3.0, 1.0], (0, 1)),  # the dev repo's kernel kept all three tied maxima
    ([2.0, 1.0, 1.0, 0.0], (0, 1)),  # tie for second place: the lower index
    ([0.0, 0.0, 0.0, 0.0], (0, 1)),
    ([5.0, 5.0, 5.0, 5.0], (0, 1)),
    ([0.0, 0.0, 7.0, 0.0], (0, 2)),  # one non-zero + the lowest zero
    ([-1.0, -4.0, 2.0, -3.0], (1, 3)),  # by magnitude, sign ignored
    ([-2.0, 2.0, -2.0, 1.0], (0, 1)),
    ([1.0, -INF, 2.0, INF], (1, 3)),
    ([INF, INF, INF, 0.0], (0, 1)),
    ([-0.0, 0.0, -0.0, 1e-45], (0, 3)),  # -0 == +0; a denormal beats both
]
# NaN policy: NaN ranks above every number (+inf included), NaNs among themselves by index.
NAN_CASES = [
    ([1.0, NAN, 2.0, 3.0], (1, 3)),
    ([INF, 1.0, NAN, NAN], (2, 3)),
    ([NAN, NAN, NAN, NAN], (0, 1)),
    ([NAN, -INF, INF, 5.0], (0, 1)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cases", [HAND_CASES, NAN_CASES], ids=["ties-inf", "nan"])
def test_hand_cases_of_the_tie_rule_and_nan_policy(backend, cases):
    y = torch.tensor([row for row, _ in cases]).to(DEVICE)
    want = torch.zeros(len(cases), 4, dtype=torch.bool)
    for r, (_, kept) in enumerate(cases):
        want[r, list(kept)] = True
    mask = mask_24(y, backend=backend)
    assert torch.equal(mask.cpu(), want)
    s, m2 = sparsify_24(y, backend=backend)
    assert torch.equal(m2, mask)
    _check_two_per_group(mask, s)
    # Kept entries are the input's bits (NaN payloads and -0.0 included), the rest +0.
    assert torch.equal(_bits(s)[want], _bits(y)[want])
    assert torch.equal(_bits(s)[~want], torch.zeros(int((~want).sum()), dtype=torch.int32))
    assert torch.equal(_brute_force_mask(y), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nans_tie_whatever_their_payload_and_sign(backend):
    # Quiet NaNs with growing payloads and a negative NaN: all equal in rank, so by index.
    bits = torch.tensor([0x3F800000, 0x7FC00000, 0x7FC00123, -0x00400000, 0x7FFFFFFF, 0x40000000])
    y = bits.to(torch.int32).view(torch.float32)[[0, 1, 3, 4, 1, 5, 2, 4]].reshape(2, 4)
    assert int(y.isnan().sum()) == 6
    want = [[False, True, True, False], [True, False, True, False]]
    assert mask_24(y.to(DEVICE), backend=backend).cpu().tolist() == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu2_keeps_nan_and_inf(backend):
    y1 = torch.tensor([[NAN, 1.0, -INF, 2.0], [INF, 3.0, -5.0, 4.0], [-1.0, -2.0, -0.0, -INF]])
    res = relu2_sparsify_24(y1.to(DEVICE), backend=backend)
    # relu(NaN) = NaN ranks first; relu(-inf) = 0; inf^2 = inf; all-negative -> zeros, slots 0, 1.
    want_mask = torch.tensor([[1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(res.mask.cpu(), want_mask)
    want = torch.tensor([[NAN, 0.0, 0.0, 4.0], [INF, 0.0, 0.0, 16.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(res.values.cpu(), want, rtol=0, atol=0, equal_nan=True)


def test_reference_equals_sort_based_brute_force_with_many_ties():
    y = _tied((64, 32), seed=1)
    y[0, :8] = torch.tensor([NAN, 1.0, NAN, INF, -INF, 0.0, -0.0, NAN])
    assert torch.equal(mask_24_naive(y).cpu(), _brute_force_mask(y))


@pytest.mark.parametrize(
    "shape, dtype",
    [((37, 96), torch.float32), ((2, 3, 20), torch.float32), ((1, 4), torch.float32),
     ((19, 40), torch.bfloat16), ((19, 40), torch.float16)],
)  # fmt: skip
def test_triton_select_equals_reference_bitwise(shape, dtype):
    for y in (_randn(shape, seed=2, dtype=dtype), _tied(shape, seed=3, dtype=dtype)):
        s_ref, m_ref = sparsify_24(y, backend="torch")
        s, m = sparsify_24(y, backend="triton")
        assert torch.equal(m, m_ref) and m.dtype == torch.bool and m.shape == y.shape
        assert torch.equal(_bits(s), _bits(s_ref)) and s.dtype == dtype
        _check_two_per_group(m, s)
        assert torch.equal(_bits(s)[m.cpu()], _bits(y)[m.cpu()])  # kept bits unchanged


def test_select_along_another_dim_and_strided_rows():
    y = _randn((8, 12, 5), seed=4)
    for backend in BACKENDS:
        m = mask_24(y, dim=1, backend=backend)
        assert torch.equal(m, mask_24_naive(y.transpose(1, 2)).transpose(1, 2))
    wide = _tied((21, 50), seed=5)
    strided = wide[:, 3:43]  # row stride 50, not the row length
    assert torch.equal(
        _bits(sparsify_24(strided, backend="triton")[0]),
        _bits(sparsify_24(strided.contiguous(), backend="torch")[0]),
    )
    res = relu2_sparsify_24(strided, backend="triton", stats=True)
    ref = relu2_sparsify_24_naive(strided.contiguous(), stats=True)
    assert torch.equal(_bits(res.values), _bits(ref.values))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_one_dimensional_inputs(backend):
    assert mask_24(torch.zeros(0, 8, device=DEVICE), backend=backend).shape == (0, 8)
    s, m = sparsify_24(torch.tensor([1.0, -2.0, 3.0, -4.0], device=DEVICE), backend=backend)
    assert s.cpu().tolist() == [0.0, 0.0, 3.0, -4.0] and m.shape == (4,)
    y1 = torch.zeros(0, 3, 8, device=DEVICE)
    st = relu2_sparsify_24(y1, out="compact", stats=True, backend=backend).stats
    assert [int(t) for t in st[:3]] == [0, 0, 0] and float(st.dropped_mass_fraction) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_idempotent_and_scale_equivariant(backend):
    y = torch.cat([_tied((16, 24), seed=6), _randn((16, 24), seed=7)])
    s, m = sparsify_24(y, backend=backend)
    s2, m2 = sparsify_24(s, backend=backend)
    assert torch.equal(_bits(s2), _bits(s)) and torch.equal(m2, m)
    for c in (2.0, 0.5, 8.0, 2.0**-5):  # powers of two: c * y is exact, so S(c y) = c S(y) exactly
        sc, mc = sparsify_24(c * y, backend=backend)
        assert torch.equal(mc, m)
        assert torch.equal(_bits(sc), _bits(c * s))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_relu2_equals_relu2_then_select(backend):
    y1 = torch.cat([_tied((12, 32), seed=8), _randn((12, 32), seed=9, scale=2.0)])
    v = torch.relu(y1) ** 2
    s_ref, m_ref = sparsify_24(v, backend="torch")
    masked = relu2_sparsify_24(y1, out="masked", backend=backend)
    assert masked.indices is None and masked.stats is None
    assert torch.equal(masked.mask, m_ref)
    assert torch.equal(_bits(masked.values), _bits(s_ref))
    compact = relu2_sparsify_24(y1, out="compact", backend=backend)
    assert compact.mask is None and compact.values.shape == (24, 16)
    assert compact.indices.shape == (24, 8) and compact.indices.dtype == torch.uint8
    values, indices = compress_24(s_ref)
    assert torch.equal(compact.indices, indices)
    assert torch.equal(_bits(compact.values), _bits(values))
    assert torch.equal(_bits(decompress_24(compact.values, compact.indices)), _bits(s_ref))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_relu2_in_fp32_for_16_bit_inputs(dtype):
    # Few mantissa bits: relu^2 is exact in the 16-bit dtype, so both backends must agree bitwise.
    y1 = _tied((10, 24), seed=10, dtype=dtype)
    want_fp32 = relu2_sparsify_24(y1.float(), backend="torch")
    for backend in BACKENDS:
        res = relu2_sparsify_24(y1, backend=backend)
        assert res.values.dtype == dtype
        assert torch.equal(res.mask, want_fp32.mask)
        assert torch.equal(_bits(res.values), _bits(want_fp32.values.to(dtype)))
    # Random values: the mask is exact (fp32 ranking of exact squares); the one cast to the
    # 16-bit dtype is torch's round-to-nearest on CUDA, within one ulp under the interpreter.
    y1 = _randn((10, 24), seed=11, dtype=dtype, scale=3.0)
    ref = relu2_sparsify_24(y1, backend="torch")
    got = relu2_sparsify_24(y1, backend="triton")
    assert torch.equal(got.mask, ref.mask)
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(got.values.float(), ref.values.float(), rtol=ulp, atol=0)
    if DEVICE == "cuda":
        assert torch.equal(_bits(got.values), _bits(ref.values))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # interpreter
@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_ranks_the_fp32_squares(backend):
    # 300^2, 260^2, 400^2 all overflow fp16; ranked in fp16 they would tie (inf) and keep 0, 1.
    y1 = torch.tensor([[300.0, 260.0, 400.0, 0.0]], dtype=torch.float16).to(DEVICE)
    res = relu2_sparsify_24(y1, backend=backend)
    assert res.mask.cpu().tolist() == [[True, False, True, False]]
    assert res.values.cpu().tolist() == [[INF, 0.0, INF, 0.0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_with_zero_features_and_rows_changes_nothing(backend):
    y1 = _randn((9, 20), seed=12)
    padded = torch.nn.functional.pad(y1, (0, 12, 0, 7))  # zero groups and zero rows
    a = relu2_sparsify_24(y1, backend=backend, stats=True)
    b = relu2_sparsify_24(padded, backend=backend, stats=True)
    assert torch.equal(_bits(b.values[:9, :20]), _bits(a.values))
    assert not b.values[9:].any() and not b.values[:, 20:].any()
    assert torch.equal(b.mask[:9, :20], a.mask)
    for name in ("nonzero_before", "nonzero_after", "mass_before", "mass_after"):
        torch.testing.assert_close(getattr(b.stats, name), getattr(a.stats, name))
    assert int(b.stats.count) == 16 * 32 and int(a.stats.count) == 9 * 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_stats_by_hand(backend):
    y1 = torch.tensor([[1.0, -1.0, 2.0, 0.0, 3.0, 3.0, 3.0, 1.0], [-1.0] * 8]).to(DEVICE)
    # relu^2: [1, 0, 4, 0 | 9, 9, 9, 1] and zeros; kept: {0, 2} and {0, 1}.
    st = relu2_sparsify_24(y1, backend=backend, stats=True).stats
    assert isinstance(st, Sparse24Stats)
    assert [int(t) for t in st[:3]] == [16, 6, 4]
    assert float(st.mass_before) == 33.0 and float(st.mass_after) == 23.0
    assert st.count.dtype == torch.int64 and st.mass_before.dtype == torch.float32
    assert st.count.device.type == DEVICE
    assert abs(float(st.activation_sparsity) - (1 - 6 / 16)) < 1e-7
    assert abs(float(st.dropped_nonzero_fraction) - 1 / 3) < 1e-7
    assert abs(float(st.dropped_mass_fraction) - 10 / 33) < 1e-7
    twice = st + st
    assert [int(t) for t in twice[:3]] == [32, 12, 8] and float(twice.mass_after) == 46.0
    zero = sparse24_stats(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.bool))
    assert float(zero.dropped_nonzero_fraction) == 0.0 and float(zero.dropped_mass_fraction) == 0.0
    assert float(zero.activation_sparsity) == 1.0


def test_triton_stats_equal_reference_on_random_input():
    y1 = _randn((40, 72), seed=13)
    a = relu2_sparsify_24(y1, backend="triton", stats=True, out="compact").stats
    b = relu2_sparsify_24_naive(y1, stats=True).stats
    assert [int(t) for t in a[:3]] == [int(t) for t in b[:3]]
    torch.testing.assert_close(a.mass_before, b.mass_before, rtol=1e-5, atol=0)
    torch.testing.assert_close(a.mass_after, b.mass_after, rtol=1e-5, atol=0)
    # sparse24_stats on an already computed relu^2 and its mask is the same accounting.
    v = torch.relu(y1) ** 2
    c = sparse24_stats(v, mask_24(v))
    assert [int(t) for t in c[:3]] == [int(t) for t in b[:3]]
    torch.testing.assert_close(c.mass_after, b.mass_after)


def test_compress_decompress_round_trip():
    s = sparsify_24(_tied((30, 64), seed=14), backend="torch")[0]
    s[0, :4] = torch.tensor([0.0, 5.0, 0.0, 7.0])
    s[0, 4:8] = 0.0
    s[1, :4] = torch.tensor([-0.0, 0.0, 0.0, 2.0])  # a kept -0.0 keeps its sign bit
    values, indices = compress_24(s)
    assert values.shape == (30, 32) and indices.shape == (30, 16)
    assert indices[0, 0] == 1 | (3 << 2) and indices[0, 1] == 0 | (1 << 2)
    assert indices[1, 0] == 0 | (3 << 2) and values[0, :2].tolist() == [5.0, 7.0]
    assert torch.equal(_bits(decompress_24(values, indices)), _bits(s))
    s[2, :4] = torch.tensor([0.0, 0.0, -0.0, 2.0])  # a dropped -0.0 comes back as +0.0
    assert torch.equal(decompress_24(*compress_24(s)), s)
    dense = _randn((6, 16), seed=15)  # not 2:4: the round trip is S(dense)
    assert torch.equal(decompress_24(*compress_24(dense)), sparsify_24(dense)[0])
    with pytest.raises(ValueError, match="uint8"):
        decompress_24(values, indices.to(torch.int64))


def test_sparse24_mm_dense_fallback_and_support():
    s = sparsify_24(_randn((10, 24), seed=16))[0]
    w = _randn((24, 7), seed=17)
    assert torch.equal(sparse24_mm(s, w, backend="dense"), s @ w)
    if DEVICE == "cpu":
        for backend in ("auto", "cutlass", "cusparselt"):
            assert not semi_structured_supported("cpu", torch.float32, backend)
            assert torch.equal(sparse24_mm(s, w, backend=backend), s @ w)  # falls back
    x = s.clone().requires_grad_(True)
    assert not sparse24_mm(x, w).requires_grad  # not differentiable


def test_sparse24_mm_pads_to_the_backend_tile_and_slices(monkeypatch):
    # A stand-in "sparse" class with CUTLASS bf16's tile (32 rows, 64 columns): the padding and the
    # slicing run on CPU; the product itself is then the dense one on the padded operands.
    from collections import namedtuple
    from types import SimpleNamespace

    from layerwise_kernels.sparse24 import mm

    limits = namedtuple("limits", "sparse_min_rows sparse_min_cols dense_min_rows dense_min_cols")
    seen = []

    def from_dense(x):
        seen.append(x)
        return x

    tile = SimpleNamespace(
        _DTYPE_SHAPE_CONSTRAINTS={torch.float32: limits(32, 64, 8, 8)}, from_dense=from_dense
    )
    monkeypatch.setattr(mm, "_pick", lambda device, dtype, backend: "tile")
    monkeypatch.setattr(mm, "_subclass", lambda backend: tile)
    s = sparsify_24(_randn((50, 100), seed=18), backend="torch")[0].cpu()
    w = _randn((100, 7), seed=19).cpu()
    out = sparse24_mm(s, w)
    assert seen[0].shape == (64, 128) and seen[0].is_contiguous()
    assert (
        torch.equal(seen[0][:50, :100], s) and not seen[0][50:].any() and not seen[0][:, 100:].any()
    )
    assert out.shape == (50, 7)
    torch.testing.assert_close(out, s @ w, rtol=1e-6, atol=1e-6)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="multiple of 4"):
        mask_24(torch.randn(3, 6))
    with pytest.raises(ValueError, match="multiple of 4"):
        relu2_sparsify_24(torch.randn(3, 10), backend="triton")
    with pytest.raises(ValueError, match="multiple of 4"):
        compress_24(torch.randn(2, 5))
    with pytest.raises(ValueError, match="out must be"):
        relu2_sparsify_24(torch.randn(3, 8), out="dense")
    with pytest.raises(ValueError, match="backend must be"):
        mask_24(torch.randn(3, 8), backend="cuda")
    with pytest.raises(TypeError, match="backend='torch'"):
        sparsify_24(torch.randn(3, 8, dtype=torch.float64).to(DEVICE), backend="triton")
    assert mask_24(torch.randn(3, 8, dtype=torch.float64)).dtype == torch.bool  # auto: torch
    with pytest.raises(ValueError, match="F % 4"):
        sparse24_mm(torch.randn(4, 6), torch.randn(6, 3))
    with pytest.raises(ValueError, match="backend must be"):
        sparse24_mm(torch.randn(4, 8), torch.randn(8, 3), backend="cublas")
    with pytest.raises(ValueError, match="s \\[T, F\\] and w \\[F, N\\]"):
        sparse24_mm(torch.randn(4, 8), torch.randn(4, 3))
    with pytest.raises(ValueError, match="one dtype"):
        sparse24_mm(torch.randn(4, 8), torch.randn(8, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="not 2:4"):
        sparse24_mm(torch.ones(4, 8), torch.randn(8, 3), check=True)


def test_kernel_compiles_for_hopper_without_a_gpu(compiles_for_hopper):
    compiles_for_hopper(
        """
        from layerwise_kernels.sparse24 import _triton as k

        for dt in ("fp32", "bf16", "fp16"):
            for relu2, compact, stats in ((True, False, True), (True, True, True), (False, False, False)):
                sig = {"X": f"*{dt}", "OUT": f"*{dt}", "MASK": "*u8", "IDX": "*u8",
                       "COUNTS": "*i32", "MASS": "*fp32", "n_rows": "i32", "n_groups": "i32",
                       "stride_x": "i64", "stride_out": "i64", "stride_mask": "i64",
                       "stride_idx": "i64"}
                consts = {"RELU2": relu2, "COMPACT": compact, "STATS": stats,
                          "BLOCK_T": 8, "BLOCK_G": 128}
                compile_sm90(k._select_24_kernel, sig, consts, 4)
        """
    )


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_cuda_equals_reference_at_ffn_sizes(dtype):
    y1 = _randn((2, 1000, 2064), seed=20, dtype=dtype, scale=2.0)  # ELAS 60M: F = 2064
    for out in ("masked", "compact"):
        got = relu2_sparsify_24(y1, out=out, stats=True)  # auto: Triton on CUDA
        ref = relu2_sparsify_24_naive(y1, out=out, stats=True)
        assert torch.equal(_bits(got.values), _bits(ref.values))
        assert (got.mask is None) or torch.equal(got.mask, ref.mask)
        assert (got.indices is None) or torch.equal(got.indices, ref.indices)
        assert [int(t) for t in got.stats[:3]] == [int(t) for t in ref.stats[:3]]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["cutlass", "cusparselt"])
def test_semi_structured_compress_round_trip_and_mm(backend):
    if not semi_structured_supported("cuda", torch.bfloat16, backend):
        pytest.skip(f"{backend} semi-structured sparsity does not run on this GPU / torch")
    from layerwise_kernels.sparse24.mm import _subclass

    s = relu2_sparsify_24(_randn((256, 512), seed=21, dtype=torch.bfloat16)).values
    assert torch.equal(_subclass(backend).from_dense(s).to_dense(), s)
    # ELAS shapes that need padding: T not a multiple of 32, F = 2064 not a multiple of 64.
    s = relu2_sparsify_24(_randn((1000, 2064), seed=22, dtype=torch.bfloat16)).values
    w = _randn((2064, 128), seed=23, dtype=torch.bfloat16, scale=0.05)
    got = sparse24_mm(s, w, backend=backend).float()
    want = sparse24_mm(s, w, backend="dense").float()
    assert got.shape == (1000, 128)
    # Spec target 5: rtol 2e-2, atol 1e-2 * max|out|.
    torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-2 * float(want.abs().max()))
