"""The emulated board's PROGRAM_JOB follows the write-verify algorithm of docs/board-protocol.md
(§3, 0x40), and its pulses and reads reach the emulator's voltage log (issue 9 finding 15).

`RefCell` below is the documented algorithm written again from the document, one cell at a
time in plain Python (no numpy, nothing from `hil.ops.write_verify` or the firmware). The job runs
through the real driver (`drivers.board.ArrayBoard` over `hilsim://`); a spy on the world's chip
records every pulse the firmware applies and snapshots the chip at the job's first read; the
reference then runs on a copy of that chip (same device state, random-generator state and clock).

How the comparison is made exact:
- with the default, noisy device parameters, the reference applies its physics in the order
  the document prescribes (per round one read of the active cells in list order, then the FORM,
  SET and RESET pulses, each group in list order), so the device's random draws line up;
- with a noise-free, time-invariant parameter set, the reference programs each cell alone from
  start to finish, which shows the job's outcome for a cell does not depend on its neighbours.
"""
import itertools

import numpy as np
import pytest

import sim_backend.urlhandler  # noqa: F401  (registers hilsim://)
from drivers.board import ArrayBoard
from hil.geometry import Cells, Geometry
from hil.limits import Op
from hil.programming import WriteVerifyPolicy
from sim_backend.chip import SimulatedCrossbar
from sim_backend.params import DeviceParams
from sim_backend.world import EmulatedWorld, drop_world, register_world

GEOM = Geometry(1, 32, 16, "fw-test")
_ids = itertools.count()

# ---- the documented algorithm, per cell ----------------------------------------------------------
V_READ, STUCK_FLOOR_S = 0.2, 0.3e-6          # the firmware's fixed choices (document, PROGRAM_JOB)
INT_FIELDS = ("n_verify_reads", "max_pulses", "stuck_after")


def wire(policy: WriteVerifyPolicy) -> dict:
    """The policy as the board sees it: float fields rounded to float32 by the policy block."""
    return {k: (v if k in INT_FIELDS else float(np.float32(v))) for k, v in policy.to_dict().items()}


def ramp(k, start, step, mx):
    v = min(start + k * step, mx)
    return v, v >= mx - 1e-12 * max(1.0, abs(mx))


class RefCell:
    """One cell's state; `visit(g)` is one round: the stop rules, else the pulse to apply."""

    def __init__(self, lo: float, hi: float, pol: dict) -> None:
        self.lo, self.hi, self.pol = lo, hi, pol
        self.p = self.kF = self.kS = self.kR = self.d = self.top = 0
        self.formed = False
        self.readings = []

    def visit(self, g: float):
        """('stop', status) or ('pulse', op, amplitude, gate)."""
        pol, S = self.pol, self.pol["stuck_after"]
        self.readings.append(g)
        if g >= pol["form_threshold_s"]:
            self.formed = True
        if self.lo <= g <= self.hi:
            return "stop", 0
        if self.top >= S and abs(g - self.readings[-1 - S]) <= max(self.hi - self.lo, STUCK_FLOOR_S):
            return "stop", 2
        if self.p >= pol["max_pulses"]:
            return "stop", 1
        if g > self.hi:
            op = Op.RESET
            if self.d == 1:
                self.kR = 0
            v, at_top = ramp(self.kR, pol["reset_v_sl_start"], pol["reset_v_sl_step"], pol["reset_v_sl_max"])
            gate = pol["reset_gate"]
            self.kR += 1
            self.d = -1
        else:
            if self.d == -1:
                self.kS = self.kF = 0
            if not self.formed:
                op = Op.FORM
                v, at_top = ramp(self.kF, pol["form_v_start"], pol["form_v_step"], pol["form_v_max"])
                gate = pol["form_gate"]
                self.kF += 1
            else:
                op = Op.SET
                v = pol["set_v_bl"]
                gate, at_top = ramp(self.kS, pol["set_gate_start"], pol["set_gate_step"], pol["set_gate_max"])
                self.kS += 1
            self.d = 1
        self.p += 1
        self.top = self.top + 1 if at_top else 0
        return "pulse", op, v, gate


def reference_in_rounds(chip, cells, lo, hi, pol):
    """The algorithm with the physics in the documented order (one read per round, then the
    FORM, SET and RESET groups in list order). Returns per-cell pulse lists, final, status, rounds."""
    n = len(cells)
    ref = [RefCell(lo[i], hi[i], pol) for i in range(n)]
    seq, final, status = [[] for _ in range(n)], [None] * n, [None] * n
    active, rounds = list(range(n)), 0
    while active:
        g = chip.read(cells[np.array(active)], v_read=V_READ, n_avg=pol["n_verify_reads"])
        groups = {Op.FORM: [], Op.SET: [], Op.RESET: []}
        still = []
        for i, gi in zip(active, g.tolist()):
            out = ref[i].visit(gi)
            if out[0] == "stop":
                final[i], status[i] = gi, out[1]
            else:
                groups[out[1]].append((i, out[2], out[3]))
                seq[i].append(out[1:])
                still.append(i)
        for op in (Op.FORM, Op.SET, Op.RESET):
            if groups[op]:
                idx, v, gate = (list(x) for x in zip(*groups[op]))
                chip.pulse(cells[np.array(idx)], op, np.array(v), np.array(gate),
                           np.full(len(idx), pol["width_s"]))
        active, rounds = still, rounds + 1
    return seq, final, status, rounds


def reference_cell_by_cell(chip, cells, lo, hi, pol):
    """The algorithm for each cell alone, from its first read to its stop."""
    n = len(cells)
    seq, final, status = [[] for _ in range(n)], [None] * n, [None] * n
    for i in range(n):
        one, ref = cells[np.array([i])], RefCell(lo[i], hi[i], pol)
        while True:
            g = float(chip.read(one, v_read=V_READ, n_avg=pol["n_verify_reads"])[0])
            out = ref.visit(g)
            if out[0] == "stop":
                final[i], status[i] = g, out[1]
                break
            seq[i].append(out[1:])
            chip.pulse(one, out[1], np.array([out[2]]), np.array([out[3]]), np.array([pol["width_s"]]))
    return seq, final, status


# ---- running the firmware job through the driver -------------------------------------------------
@pytest.fixture
def make_world():
    made = []

    def make(params: DeviceParams, seed: int) -> EmulatedWorld:
        w = register_world(EmulatedWorld(GEOM, params, seed=seed, name=f"fw-alg-{next(_ids)}"))
        made.append(w.name)
        return w
    yield make
    for name in made:
        drop_world(name)


def run_job(world, cells, targets, lo, hi, policy):
    """PROGRAM_JOB through the driver; returns (report, per-cell pulses seen by the chip, copy of
    the chip as it was at the job's first read)."""
    chip, pos = world.chip, {int(f): i for i, f in enumerate(cells.flat(GEOM))}
    seq = [[] for _ in range(len(cells))]
    snap = []
    read, pulse = chip.read, chip.pulse

    def spy_read(c, **kw):
        if not snap:
            twin = SimulatedCrossbar(GEOM, chip.params, seed=chip.seed, limits=chip.limits)
            twin.device.load_state(chip.device.state(), chip.device.rng.bit_generator.state)
            twin._t = chip._t
            snap.append(twin)
        return read(c, **kw)

    def spy_pulse(c, op, v, gate, width):
        for f, vi, gi, wi in zip(c.flat(GEOM), v, gate, width):
            assert wi == policy_w
            seq[pos[int(f)]].append((Op.parse(op), float(vi), float(gi)))
        return pulse(c, op, v, gate, width)

    policy_w = wire(policy)["width_s"]
    chip.read, chip.pulse = spy_read, spy_pulse
    try:
        with ArrayBoard(f"hilsim://{world.name}/board", expected_geometry=GEOM) as board:
            rep = board.program_job(cells, targets, lo, hi, policy)
            assert board.status().pulses == rep.pulses.sum()
    finally:
        del chip.read, chip.pulse
    return rep, seq, snap[0]


def band(targets, tol, policy):
    lo, hi = targets - tol * policy.verify_margin, targets + tol * policy.verify_margin
    return [np.float32(a).astype(float) for a in (lo, hi)]     # as the request carries them


def assert_same(rep, fw_seq, ref_seq, ref_final, ref_status):
    for i, (a, b) in enumerate(zip(fw_seq, ref_seq)):
        assert a == b, f"cell #{i}: firmware pulses differ from the documented algorithm at pulse " \
                       f"{next(k for k, (x, y) in enumerate(zip(a + [None], b + [None])) if x != y)}"
    assert rep.pulses.tolist() == [len(s) for s in ref_seq]
    assert rep.status.tolist() == ref_status
    assert rep.final_s.tolist() == np.float32(ref_final).astype(float).tolist()


NOISY_CASES = {
    # targets over the whole range, some bands too narrow to hit
    "spread": (WriteVerifyPolicy(max_pulses=60, stuck_after=8), (2e-6, 20e-6)),
    # the SET gate caps G near 10 µS: cells above the cap stall with small, noisy movements
    "capped": (WriteVerifyPolicy(max_pulses=60, stuck_after=8, set_gate_start=1.0, set_gate_step=0.05,
                                 set_gate_max=1.2), (6e-6, 12e-6)),
}


@pytest.mark.parametrize("case", NOISY_CASES)
def test_job_equals_the_documented_algorithm_pulse_by_pulse_with_device_noise(make_world, case):
    """Default (noisy) physics on a fresh chip with stuck cells: exact, because the reference
    applies its physics in the documented order (see the module docstring)."""
    policy, (t_lo, t_hi) = NOISY_CASES[case]
    params = DeviceParams.from_dict({"initial": {"state": "fresh"},
                                     "defects": {"stuck_off_rate": 0.03, "stuck_on_rate": 0.03}})
    world = make_world(params, seed=7)
    stuck = world.chip.device.stuck
    flat = np.concatenate([np.flatnonzero(stuck == 1)[:3], np.flatnonzero(stuck == 2)[:3],
                           np.flatnonzero(stuck == 0)[:42]])
    cells = Cells.from_flat(flat, GEOM)
    targets = np.random.default_rng(1).uniform(t_lo, t_hi, flat.size)
    tol = np.where(np.arange(flat.size) % 4 == 0, 0.04e-6, 0.6e-6)   # some bands too narrow to hit
    lo, hi = band(targets, tol, policy)

    rep, fw_seq, twin = run_job(world, cells, targets, lo, hi, policy)
    ref_seq, ref_final, ref_status, rounds = reference_in_rounds(twin, cells, lo, hi, wire(policy))
    assert_same(rep, fw_seq, ref_seq, ref_final, ref_status)
    assert rep.iterations == rounds
    idx = cells.flat(GEOM)
    assert np.array_equal(world.chip.device.g0[idx], twin.device.g0[idx])     # same physics after the job

    # the comparison exercised every rule of the document
    ops = [[p[0] for p in s] for s in ref_seq]
    assert {Op.FORM, Op.SET, Op.RESET} <= {o for s in ops for o in s}
    if case == "spread":
        assert set(ref_status) == {0, 1, 2}
    else:
        assert 2 in ref_status[6:]                     # working cells stalled at the cap
    assert any(a is Op.RESET and b is not Op.RESET for s in ops for a, b in zip(s, s[1:]))   # flips
    assert any(a is not Op.RESET and b is Op.RESET for s in ops for a, b in zip(s, s[1:]))


NOISE_FREE = {"read_noise": {"rel": 0.0, "abs_us": 0.0},
              "set": {"sigma_dg_us": [0.0] * 10}, "reset": {"sigma_dg_us": [0.0] * 10},
              "compliance": {"landing_cv": 0.0}, "form": {"formed_cv": 0.0},
              "relaxation": {"mean_rel": 0.0, "sigma_rel": 0.0, "sigma_abs_us": 0.0},
              "drift": {"pull_per_decade": 0.0, "sigma_abs_us": 0.0, "sigma_rel": 0.0},
              "disturb": {"a_us": 0.0},
              "defects": {"stuck_off_rate": 0.05, "stuck_on_rate": 0.05}}


NOISE_FREE_CASES = {
    # a mix of reachable bands (wide and too narrow to hit) and stuck cells
    "mixed": (WriteVerifyPolicy(max_pulses=50, stuck_after=6), np.linspace(3e-6, 19e-6, 28), 3),
    # every SET at the top of its (flat) ramp, the gate caps G near 10 µS, narrow bands: cells
    # climb towards the cap and stall (the stuck rule's 0.3 µS floor), cells oscillate around
    # their band (`top` restarts on a RESET), and the stuck-off cells reach the FORM top on pulse
    # 35 and stall there until pulse 40 = max_pulses (unresponsive takes precedence)
    "capped": (WriteVerifyPolicy(max_pulses=40, stuck_after=6, set_gate_start=1.2, set_gate_max=1.2,
                                 form_v_step=0.03), np.linspace(4e-6, 12e-6, 28), 1),
}


@pytest.mark.parametrize("case", NOISE_FREE_CASES)
def test_each_cell_follows_the_algorithm_alone_on_noise_free_physics(make_world, case):
    """Noise-free, time-invariant physics on a formed chip (forming is random, so only stuck-off
    cells, which never form, get FORM pulses): each cell programmed alone by the reference gives
    exactly what the batched job gave it."""
    policy, working_targets, narrow_every = NOISE_FREE_CASES[case]
    world = make_world(DeviceParams.from_dict(NOISE_FREE), seed=3)
    stuck = world.chip.device.stuck
    flat = np.concatenate([np.flatnonzero(stuck == 1)[:2], np.flatnonzero(stuck == 2)[:2],
                           np.flatnonzero(stuck == 0)[:working_targets.size]])
    cells = Cells.from_flat(flat, GEOM)
    targets = np.concatenate([[10e-6] * 4, working_targets])
    tol = np.where(np.arange(flat.size) % narrow_every == 0, 0.05e-6, 0.6e-6)
    lo, hi = band(targets, tol, policy)

    rep, fw_seq, twin = run_job(world, cells, targets, lo, hi, policy)
    ref_seq, ref_final, ref_status = reference_cell_by_cell(twin, cells, lo, hi, wire(policy))
    assert_same(rep, fw_seq, ref_seq, ref_final, ref_status)
    ops = {p[0] for s in ref_seq for p in s}
    assert ops == {Op.FORM, Op.SET, Op.RESET} and {1, 2} <= set(ref_status)
    if case == "capped":
        assert ref_status[:2] == [2, 2] and rep.pulses[:2].tolist() == [40, 40]


# ---- finding 15: job pulses and reads reach the voltage log ------------------------------------------
def test_job_pulses_and_reads_reach_the_voltage_log(make_world):
    """A fresh chip whose cells form only above 6 V: every cell FORM-ramps to 4.5 V and gives up
    as unresponsive. The 4.5 V must be in max_applied_v (it read 0 V before the fix)."""
    params = DeviceParams.from_dict({"initial": {"state": "fresh"}, "form": {"v_form_mean": 6.0},
                                     "defects": {"stuck_off_rate": 0.0, "stuck_on_rate": 0.0}})
    world = make_world(params, seed=2)
    cells = Cells.block(0, [0, 1], np.arange(4), GEOM)
    policy = WriteVerifyPolicy(form_v_start=3.0, form_v_step=0.25, form_v_max=4.5, form_gate=1.5,
                               stuck_after=4)
    with ArrayBoard(f"hilsim://{world.name}/board", expected_geometry=GEOM) as board:
        n_ev = len(world.events)
        rep = board.program_job(cells, 10e-6, 9.5e-6, 10.5e-6, policy)
        assert board.status().pulses == rep.pulses.sum()
    assert rep.status.tolist() == [2] * 8 and rep.pulses.tolist() == [10] * 8   # 6 ramp steps + 4 at the top
    assert world.max_applied_v["BL"] == 4.5 and world.max_applied_v["SL"] == 0.0
    assert world.max_applied_v["WL"] >= 1.5
    ev = [e for e in world.events[n_ev:] if e.source == "board"]
    pulses = [e.detail for e in ev if e.kind == "pulse"]
    reads = [e.detail for e in ev if e.kind == "read"]
    assert sum(d["n"] for d in pulses) == rep.pulses.sum() and {d["op"] for d in pulses} == {"FORM"}
    assert max(d["v_max"] for d in pulses) == 4.5 and max(d["gate_max"] for d in pulses) == 1.5
    assert len(reads) == rep.iterations and sum(d["n"] for d in reads) == 8 * rep.iterations
    assert {d["volts"] for d in reads} == {V_READ}
