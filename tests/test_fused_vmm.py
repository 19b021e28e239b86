"""The fused bit-serial kernel (sim_backend.bitserial) and its exact read noise (sim_backend.noise).

Noise off: codes, saturation, read-disturb dose and clock equal, bit for bit, to the unfused
pipeline the simulated chip used before (kept here as `reference_vmm`). Noise on: slot codes
follow the exact rounded-Gaussian law of the summed per-cell noise (chi-square), shift-added
codes have the exact per-column mean and variance, and the normals are standard and fresh.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from hil.geometry import YAO
from hil.ops.vmm import adc_lsb
from sim_backend.bitserial import bitserial_vmm
from sim_backend.chip import SimulatedCrossbar
from sim_backend.noise import TAIL_CUT_SIGMA, GaussianStream
from sim_backend.params import AdcParams, DeviceParams, LineParams, ReadNoiseParams

QUIET = ReadNoiseParams(rel=0.0, abs_us=0.0)


def reference_vmm(G: np.ndarray, x: np.ndarray, v_read: float, lsb: float, bits: int, chunk: int = 512):
    """The chip's noise-free bit-serial pipeline before the fused kernel: bit planes LSB first,
    one float32 matmul against [G v/lsb | 1] per chunk, rint, clip, shift-add; read pulses per row."""
    nrow, ncol = G.shape
    top = float(2 ** bits - 1)
    aug = np.empty((nrow, ncol + 1), np.float32)
    aug[:, :ncol] = G * (v_read / lsb)
    aug[:, ncol] = 1.0
    xu = x.astype(np.uint8)
    codes = np.empty((len(x), ncol), np.float32)
    sat = np.empty((len(x), ncol), bool)
    pulses = np.zeros(nrow)
    w = (2.0 ** np.arange(8)).astype(np.float32)
    for b0 in range(0, len(x), chunk):
        xc = xu[b0:b0 + chunk]
        c = len(xc)
        flat = np.stack([(xc >> k) & 1 for k in range(8)]).astype(np.float32).reshape(8 * c, nrow)
        out = flat @ aug
        pulses += np.ones(8 * c, np.float32) @ flat
        q = np.clip(np.rint(out[:, :ncol]), 0.0, top).reshape(8, c * ncol)
        sat[b0:b0 + c] = (q.max(axis=0) >= top).reshape(c, ncol)
        codes[b0:b0 + c] = (w @ q).reshape(c, ncol)
    return codes.astype(np.int64), sat, pulses


def quiet_chip(seed: int, r_segment_ohm: float = 0.0) -> SimulatedCrossbar:
    return SimulatedCrossbar(YAO, DeviceParams(read_noise=QUIET, lines=LineParams(r_segment_ohm=r_segment_ohm)),
                             seed=seed)


@pytest.mark.parametrize("seed, batch, rows, cols, fs, r_seg, zero_frac", [
    (0, 1, None, None, None, 0.0, 0.0),
    (1, 1100, None, None, None, 0.0, 0.3),           # default full scale: many slots saturate
    (2, 513, [0, 5, 9, 77, 127], [1, 2, 15], 20e-6, 0.0, 0.5),
    (3, 2000, list(range(9)), None, 8e-6, 0.0, 0.7),   # a c1-like 9-row tile, mostly zero vectors
    (4, 700, list(range(72)), list(range(8)), 60e-6, 2.0, 0.2),   # line resistance on
])
def test_noise_off_equals_unfused_path(seed, batch, rows, cols, fs, r_seg, zero_frac):
    chip = quiet_chip(seed, r_seg)
    rr = np.arange(YAO.rows) if rows is None else np.asarray(rows)
    cc = np.arange(YAO.cols) if cols is None else np.asarray(cols)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (batch, rr.size))
    x[rng.random(batch) < zero_frac] = 0
    _, G = chip._selected_conductance(1, rr, cc)
    lsb = adc_lsb(chip.params.adc.full_scale_a if fs is None else fs, chip.params.adc.bits)
    want_codes, want_sat, want_pulses = reference_vmm(G, x, chip.v_read_default, lsb, chip.params.adc.bits)
    dose0 = chip.device.dose.copy()
    res = chip.vmm(1, x, rows, cols, adc_full_scale_a=fs)
    np.testing.assert_array_equal(res.codes, want_codes)
    np.testing.assert_array_equal(res.saturated, want_sat)
    pe_cells = ((1 * YAO.rows + rr[:, None]) * YAO.cols + cc[None, :]).ravel()
    ref = quiet_chip(seed, r_seg)
    ref.device.add_dose(pe_cells, np.repeat(want_pulses, cc.size), chip.v_read_default, chip.params.timing.slot_s)
    np.testing.assert_array_equal(chip.device.dose, ref.device.dose)
    assert (chip.device.dose != dose0).any() == bool(x.any())
    tp = chip.params.timing
    assert chip.now() == tp.call_overhead_s + 8 * batch * (tp.slot_s + tp.slot_overhead_s)


def test_saturation_clips_with_noise_on():
    chip = SimulatedCrossbar(YAO, seed=21)                            # default read noise
    x = np.zeros((50, YAO.rows), np.int64)
    x[:, :64] = 255
    res = chip.vmm(0, x, adc_full_scale_a=1e-6)                       # far below 64 cells' current
    assert res.saturated.all()
    assert np.all(res.codes == 255 * 255)
    x[:, :64] = 1                                                     # only slot 0 is driven
    res = chip.vmm(0, x, adc_full_scale_a=1e-6)
    assert res.saturated.all() and np.all(res.codes == 255)


def test_zero_vectors_read_zero_and_draw_no_noise():
    chip = SimulatedCrossbar(YAO, seed=22)
    x = np.zeros((300, YAO.rows), np.int64)
    x[::3] = np.random.default_rng(0).integers(0, 256, (100, YAO.rows))
    res = chip.vmm(0, x)
    assert np.all(res.codes[1::3] == 0) and np.all(res.codes[2::3] == 0) and not res.saturated[1::3].any()
    assert chip._noise_stream().drawn == 100 * 8 * YAO.cols


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf, otypes=[float])(np.asarray(z, float) / math.sqrt(2.0)))


def _slot_law(mu: float, sd: float, top: int, lo: int, hi: int) -> np.ndarray:
    """P(code = n) for n in lo..hi of clip(rint(mu + sd Z), 0, top)."""
    n = np.arange(lo, hi + 1)
    upper = np.where(n >= top, 1.0, _norm_cdf((n + 0.5 - mu) / sd))
    lower = np.where(n <= 0, 0.0, _norm_cdf((n - 0.5 - mu) / sd))
    return upper - lower


def noisy_chip(seed: int) -> tuple[SimulatedCrossbar, float]:
    """A chip with strong read noise (sigma of a slot ~ 1-3 codes) so rounding keeps its shape."""
    chip = SimulatedCrossbar(YAO, DeviceParams(read_noise=ReadNoiseParams(rel=0.05, abs_us=0.2),
                                               adc=AdcParams(bits=8, full_scale_a=100e-6)), seed=seed)
    return chip, adc_lsb(100e-6, 8)


def exact_slot_moments(chip, lsb, pe, rows_driven):
    """Per column: mean and sd (codes) of one slot driving `rows_driven`, computed in float64
    from the device model (sigma_i = hypot(rel G_i, abs))."""
    rn = chip.params.read_noise
    G = chip.true_conductance()[pe][rows_driven]
    scale = chip.v_read_default / lsb
    mu = G.sum(axis=0) * scale
    sd = np.sqrt(((rn.rel * G) ** 2 + (rn.abs_us * 1e-6) ** 2).sum(axis=0)) * scale
    return mu, sd


def test_one_slot_codes_follow_the_exact_law():
    """Inputs 0/1 drive slot 0 only: each column's code is one conversion. A chi-square test per
    column of 20,000 repeats against clip(rint(N(mu, sum_i var_i))) with the exact variance."""
    chip, lsb = noisy_chip(31)
    G = chip.true_conductance()[2]
    rows = np.argsort(G[:, 0])[-12:]                                  # the 12 largest cells of column 0
    x = np.zeros((20_000, YAO.rows), np.int64)
    x[:, rows] = 1
    mu, sd = exact_slot_moments(chip, lsb, 2, rows)                   # conductance at the read
    res = chip.vmm(2, x)
    assert sd.min() > 0.8                                             # rounding does not hide the law
    for j in range(YAO.cols):
        lo, hi = max(0, int(mu[j] - 6 * sd[j])), min(255, int(mu[j] + 6 * sd[j]) + 1)
        p = _slot_law(mu[j], sd[j], 255, lo, hi)
        obs = np.bincount(res.codes[:, j] - lo, minlength=hi - lo + 1)[:hi - lo + 1]
        assert obs.sum() == len(x)
        keep = p * len(x) >= 5                                        # pool thin tails into one bin
        f_obs = np.append(obs[keep], obs[~keep].sum())
        f_exp = np.append(p[keep] * len(x), p[~keep].sum() * len(x) + len(x) * (1 - p.sum()))
        chi2 = float(((f_obs - f_exp) ** 2 / np.maximum(f_exp, 1e-12)).sum())
        dof = f_obs.size - 1
        assert chi2 < dof + 5 * math.sqrt(2 * dof), (j, chi2, dof)  # ~5 sigma of chi2(dof)


def test_shift_added_codes_have_exact_mean_and_variance():
    """8-bit inputs: per column, the mean and variance of the shift-added code over 8,000
    repeats of one vector match sum_k 2^k E[slot k], sum_k 4^k Var[slot k] of the exact law."""
    chip, lsb = noisy_chip(32)
    rng = np.random.default_rng(5)
    v = rng.integers(0, 256, YAO.rows)
    v[rng.random(YAO.rows) < 0.85] = 0                                # ~19 driven rows
    x = np.tile(v, (8000, 1))
    moments = [exact_slot_moments(chip, lsb, 3, np.flatnonzero((v >> k) & 1)) for k in range(8)]
    res = chip.vmm(3, x)
    want_mean = np.zeros(YAO.cols)
    want_var = np.zeros(YAO.cols)
    for k in range(8):
        mu, sd = moments[k]
        if not (v >> k & 1).any():
            continue
        for j in range(YAO.cols):
            n = np.arange(256)
            p = _slot_law(mu[j], sd[j], 255, 0, 255)
            m1 = (n * p).sum()
            want_mean[j] += 2 ** k * m1
            want_var[j] += 4 ** k * ((n - m1) ** 2 * p).sum()
    got_mean, got_var = res.codes.mean(axis=0), res.codes.var(axis=0)
    n = len(x)
    assert np.all(np.abs(got_mean - want_mean) < 5 * np.sqrt(want_var / n))
    # variance of a sample variance ~ 2 var^2 / n for near-Gaussian codes; 5 sigma
    assert np.all(np.abs(got_var / want_var - 1) < 5 * math.sqrt(2 / n))


def test_gaussian_stream_is_standard_fresh_and_deterministic():
    z = GaussianStream(np.random.default_rng(7)).normals(400_001)
    assert z.dtype == np.float32 and z.size == 400_001 and np.isfinite(z).all()
    s = np.sort(z.astype(float))
    ks = np.abs(_norm_cdf(s[::40]) - (np.arange(0, s.size, 40) + 0.5) / s.size).max()
    assert ks < 1.63 / math.sqrt(s.size) * 1.5                       # KS at 1% level, with slack for thinning
    assert abs(z.mean()) < 5 / math.sqrt(z.size) and abs(z.var() - 1) < 5 * math.sqrt(2 / z.size)
    g = GaussianStream(np.random.default_rng(7))
    a, b = g.normals(100_000), g.normals(100_000)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(a.size)       # a second call is new noise
    def neighbours(v):                                               # each value with its successor
        u = v.view(np.uint32).astype(np.uint64)
        return (u[:-1] << np.uint64(32)) | u[1:]
    assert not np.isin(neighbours(b), neighbours(a)).any()            # and no window of the first reused
    np.testing.assert_array_equal(GaussianStream(np.random.default_rng(7)).normals(100_000), a)
    out = np.full(10, np.nan, np.float32)
    GaussianStream(np.random.default_rng(7)).normals(7, out)           # odd count, into a buffer
    assert np.isfinite(out[:7]).all() and np.isnan(out[7:]).all()


def test_gaussian_stream_extreme_words_are_finite():
    """Words whose radius uniform rounds to 1 or sits at the grid's bottom give finite values
    no larger than the documented tail cut."""
    class Words:
        def __init__(self, words):
            self.words = np.asarray(words, np.uint64)

        def random_raw(self, m):
            return self.words[:m]

    class Rng:
        def __init__(self, words):
            self.bit_generator = Words(words)

    words = [2 ** 64 - 1, 0, (2 ** 40 - 2 ** 15) << 24, 2 ** 23 - 1]
    z = GaussianStream(Rng(words)).normals(8)
    assert np.isfinite(z).all()
    assert np.abs(z).max() <= TAIL_CUT_SIGMA * (1 + 1e-6)
    assert abs(z[1]) > 7.5                                           # the smallest radius uniform


def test_empty_batch():
    out = bitserial_vmm(np.zeros((0, 4), np.int64), np.ones((4, 3)), np.ones((4, 3)), 255,
                        GaussianStream(np.random.default_rng(0)))
    assert out.codes.shape == (0, 3) and out.saturated.shape == (0, 3) and not out.row_pulses.any()
