import dataclasses
import json

import numpy as np
import pytest

from hil.errors import AddressError, Cancelled, ConfigError, SafetyViolation
from hil.geometry import Cells, Geometry
from hil.levels import LevelTable, make_pattern
from hil.limits import OP_CODES, Op, SafetyLimits
from hil.programming import IN_BAND, MAX_PULSES, NOT_FINISHED, STATUS_NAMES, UNRESPONSIVE, ProgramReport, ProgramStep, WriteVerifyPolicy
from hil.ops.write_verify import write_verify, write_verify_host
from hil.progress import CancelToken

try:
    from tests.fakes import RecordingProgramCrossbar, ToyCrossbar
except ImportError:  # tests/ on sys.path instead of the repository root
    from fakes import RecordingProgramCrossbar, ToyCrossbar

GEO = Geometry(2, 8, 8, "toy")
TABLE = LevelTable.linear()          # 32 levels, 2-20 µS


def toy(seed=0, **kw):
    rng = np.random.default_rng(seed)
    kw.setdefault("g0_s", rng.uniform(2e-6, 20e-6, GEO.n_cells))
    return ToyCrossbar(GEO, seed=seed, **kw)


def level_targets(n):
    return make_pattern("levels", n, TABLE)[1]


def direction(op):
    return -1 if op is Op.RESET else 1


# ---- convergence -------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_all_cells_reach_band_including_unformed(seed):
    x = toy(seed, unformed=[3, 70], read_noise_s=0.02e-6)
    cells = Cells.all(GEO)
    targets = level_targets(len(cells))
    r = write_verify(x, cells, targets, TABLE.tolerance_s)
    assert r.status.tolist() == [IN_BAND] * len(cells)
    assert np.all(np.abs(r.final_s - targets) <= TABLE.tolerance_s)
    s = r.summary()
    assert s["in_band_fraction"] == 1.0 and s["write_errors"] == 0 and s["unresponsive"] == 0
    assert s["mean_pulses"] < 45 and s["max_pulses"] < WriteVerifyPolicy().max_pulses
    assert s["cells"] == len(cells) and s["backend_seconds"] > 0
    # the unformed cells were FORMed first, then programmed
    for flat in (3, 70):
        ops = [p[0] for p in x.pulses_of(flat)]
        assert ops[0] is Op.FORM
        assert Op.FORM not in ops[ops.index(Op.SET) if Op.SET in ops else len(ops):]
    # true conductances agree with the verify readings (no read noise hidden behind averaging)
    assert np.all(np.abs(x.g[cells.flat(GEO)] - targets) < TABLE.tolerance_s + 0.1e-6)


def test_form_ramp_steps_per_pulse():
    x = toy(unformed=[0])
    cells = Cells.from_flat([0], GEO)
    write_verify(x, cells, [10e-6], TABLE.tolerance_s)
    forms = [p for p in x.pulses_of(0) if p[0] is Op.FORM]
    pol = WriteVerifyPolicy()
    assert [f[1] for f in forms] == pytest.approx([pol.form_v_start + k * pol.form_v_step
                                                   for k in range(len(forms))])
    assert all(f[2] == pol.form_gate for f in forms)
    assert len(forms) == 5  # 2.5, 2.6, 2.7, 2.8 do nothing in the toy, 2.9 forms


# ---- write errors ------------------------------------------------------------------------

def test_stuck_cells_are_given_up_as_unresponsive_before_max_pulses():
    g0 = np.full(GEO.n_cells, 8e-6)
    x = toy(g0_s=g0, stuck=[5, 9])
    cells = Cells.all(GEO)
    targets = np.full(len(cells), TABLE.levels_s[12])
    targets[5] = 15e-6     # stuck cell that needs SET
    targets[9] = 2e-6      # stuck cell that needs RESET
    pol = WriteVerifyPolicy()
    r = write_verify(x, cells, targets, TABLE.tolerance_s, pol)
    assert r.status[5] == UNRESPONSIVE and r.status[9] == UNRESPONSIVE
    assert r.pulses[5] < pol.max_pulses and r.pulses[9] < pol.max_pulses
    # given up exactly stuck_after pulses after the ramp reached its maximum
    n_to_top_set = round((pol.set_gate_max - pol.set_gate_start) / pol.set_gate_step) + 1
    n_to_top_reset = round((pol.reset_v_sl_max - pol.reset_v_sl_start) / pol.reset_v_sl_step) + 1
    assert r.pulses[5] == n_to_top_set + pol.stuck_after - 1
    assert r.pulses[9] == n_to_top_reset + pol.stuck_after - 1
    others = np.setdiff1d(np.arange(len(cells)), [5, 9])
    assert np.all(r.status[others] == IN_BAND)
    s = r.summary()
    assert s["write_errors"] == 2 and s["unresponsive"] == 2 and s["in_band_fraction"] == pytest.approx(126 / 128)
    assert STATUS_NAMES[UNRESPONSIVE] == "unresponsive"


def test_max_pulses_is_a_write_error_when_stuck_detection_is_off():
    x = toy(g0_s=np.full(GEO.n_cells, 8e-6), stuck=[5])
    cells = Cells.from_flat([4, 5], GEO)
    pol = WriteVerifyPolicy(max_pulses=20, stuck_after=1000)
    r = write_verify(x, cells, [8e-6, 15e-6], TABLE.tolerance_s, pol)
    assert r.status.tolist() == [IN_BAND, MAX_PULSES]
    assert r.pulses.tolist() == [0, 20]
    assert len(x.pulses_of(5)) == 20


def test_slowly_moving_cell_at_ramp_top_is_not_given_up():
    # a cell whose ceiling is still above it keeps moving at the top of the ramp: no give-up
    x = toy(g0_s=np.full(GEO.n_cells, 2e-6), set_gain=0.08, noise_s=0.0)
    cells = Cells.from_flat([0], GEO)
    pol = WriteVerifyPolicy(set_gate_start=2.2, set_gate_max=2.2, stuck_after=3, max_pulses=200)
    r = write_verify(x, cells, [19e-6], TABLE.tolerance_s, pol)
    assert r.status[0] == IN_BAND


# ---- ramps -------------------------------------------------------------------------------

def test_direction_flip_restarts_ramp():
    # coarse gate steps and a strong RESET make cells overshoot in both directions
    x = toy(seed=3, set_gain=1.0, reset_gain_s_per_v=5e-6)
    pol = WriteVerifyPolicy(set_gate_step=0.05, reset_v_sl_step=0.1)
    cells = Cells.all(GEO)
    r = write_verify(x, cells, level_targets(len(cells)), TABLE.tolerance_s, pol)
    flips = {"SET after RESET": 0, "RESET after SET": 0}
    for flat in cells.flat(GEO):
        prev_dir, prev_val = 0, None
        for op, v, gate, width in x.pulses_of(int(flat)):
            assert width == pol.width_s
            start, step, mx = pol.ramp(op)
            val = gate if op is Op.SET else v
            if op is Op.SET:
                assert v == pol.set_v_bl
            elif op is Op.RESET:
                assert gate == pol.reset_gate
            if direction(op) != prev_dir:
                assert val == pytest.approx(start), (flat, op, val)
                if prev_dir:
                    flips["SET after RESET" if op is Op.SET else "RESET after SET"] += 1
            else:
                assert val == pytest.approx(min(prev_val + step, mx)), (flat, op, val)
            prev_dir, prev_val = direction(op), val
    assert flips["SET after RESET"] > 0 and flips["RESET after SET"] > 0, flips
    assert np.all(r.finished) and r.summary()["in_band_fraction"] > 0.8


def test_one_read_and_at_most_one_pulse_call_per_op_per_iteration():
    x = toy(unformed=[1, 2, 40])
    cells = Cells.all(GEO)
    steps = []
    r = write_verify(x, cells, level_targets(len(cells)), TABLE.tolerance_s, on_step=steps.append)
    assert x.n_read == len(steps) == r.iterations
    segments, cur = [], None
    for c in x.calls:
        if c[0] == "read":
            cur = []
            segments.append(cur)
        else:
            cur.append(c[1])
    assert len(segments) == len(steps)
    assert all(len(seg) == len(set(seg)) for seg in segments)
    assert max(len(seg) for seg in segments) >= 2  # several ops did share an iteration
    assert {op for seg in segments for op in seg} == {Op.SET, Op.RESET, Op.FORM}
    for c in x.calls:
        if c[0] == "read":
            assert c[2] == WriteVerifyPolicy().n_verify_reads


# ---- journal -----------------------------------------------------------------------------

def test_on_step_is_consistent_with_report_and_backend():
    x = toy(unformed=[7], stuck=[11])
    cells = Cells.all(GEO)[::-1]   # positions differ from flat indices
    targets = level_targets(len(cells))
    steps, prog = [], []
    r = write_verify(x, cells, targets, TABLE.tolerance_s, on_step=steps.append, progress=prog.append)
    n = len(cells)
    assert all(isinstance(s, ProgramStep) for s in steps)
    assert [s.iteration for s in steps] == list(range(len(steps)))
    times = [s.time_s for s in steps]
    assert times == sorted(times) and times[-1] > times[0]
    pulses = np.zeros(n, dtype=int)
    for s in steps:
        np.add.at(pulses, s.pulse_idx, 1)
    assert np.array_equal(pulses, r.pulses)
    done = np.concatenate([s.done_idx for s in steps])
    assert np.array_equal(np.sort(done), np.arange(n))
    for s in steps:
        assert np.array_equal(r.final_s[s.done_idx], s.done_g_s)
        assert np.array_equal(r.status[s.done_idx], s.done_status)
        assert np.array_equal(r.pulses[s.done_idx], s.done_pulses)
        assert set(s.pulse_op.tolist()) <= {OP_CODES[Op.SET], OP_CODES[Op.RESET], OP_CODES[Op.FORM]}
        assert not set(s.pulse_idx.tolist()) & set(s.done_idx.tolist())
        assert s.pulse_v.shape == s.pulse_v_gate.shape == s.pulse_width_s.shape == s.pulse_idx.shape
    # the journal matches what the backend saw (positions mapped through the selection)
    flat = cells.flat(GEO)
    pulse_calls = [c for c in x.calls if c[0] == "pulse"]
    journal = [(int(flat[i]), int(op), float(v), float(gt)) for s in steps
               for i, op, v, gt in zip(s.pulse_idx, s.pulse_op, s.pulse_v, s.pulse_v_gate)]
    backend = [(int(f), OP_CODES[c[1]], float(v), float(gt)) for c in pulse_calls
               for f, v, gt in zip(c[2], c[3], c[4])]
    assert journal == backend
    assert r.status[np.flatnonzero(flat == 11)[0]] == UNRESPONSIVE
    assert [p.done for p in prog] == sorted(p.done for p in prog)
    assert prog[-1].done == prog[-1].total == n
    d = json.loads(json.dumps(steps[1].to_dict()))
    assert d["iteration"] == 1 and d["pulse_idx"] == steps[1].pulse_idx.tolist()


# ---- validation before anything is applied -----------------------------------------------

@pytest.mark.parametrize("change", [
    {"set_gate_max": 3.5},              # SET gate limit 3.0 V
    {"set_v_bl": 3.2},                  # SET |V| limit 3.0 V
    {"reset_v_sl_max": 3.1},            # RESET |V| limit 3.0 V
    {"reset_gate": 6.0},                # RESET gate limit 5.5 V
    {"form_v_max": 4.6},                # FORM |V| limit 4.5 V
    {"width_s": 1.0},                   # width above 10 ms
])
def test_policy_beyond_limits_raises_before_any_backend_call(change):
    x = toy()
    pol = dataclasses.replace(WriteVerifyPolicy(), **change)
    with pytest.raises(SafetyViolation):
        write_verify(x, Cells.all(GEO), level_targets(GEO.n_cells), TABLE.tolerance_s, pol)
    assert x.calls == [] and x.n_read == 0 and x.n_pulse == 0


def test_tighter_station_limits_reject_default_policy():
    x = toy(limits=SafetyLimits.from_dict({"SET": {"max_v_gate": 2.0}}))
    with pytest.raises(SafetyViolation, match="set_gate_max"):
        write_verify(x, Cells.all(GEO), level_targets(GEO.n_cells), TABLE.tolerance_s)
    assert x.calls == []


@pytest.mark.parametrize("change,match", [
    ({"set_gate_start": 2.5}, "above"),
    ({"max_pulses": 0}, "max_pulses"),
    ({"stuck_after": 2.5}, "stuck_after"),
    ({"reset_v_sl_step": -0.1}, "negative"),
    ({"width_s": float("nan")}, "finite"),
])
def test_inconsistent_policy_is_config_error(change, match):
    x = toy()
    with pytest.raises(ConfigError, match=match):
        write_verify(x, Cells.all(GEO), level_targets(GEO.n_cells), TABLE.tolerance_s,
                     dataclasses.replace(WriteVerifyPolicy(), **change))
    assert x.calls == []


@pytest.mark.parametrize("targets,tol,exc,match", [
    ("nan", 0.2e-6, ConfigError, "target #5 is NaN"),
    ("short", 0.2e-6, ConfigError, "targets for"),
    ("ok", -1e-7, ConfigError, "tolerance_s"),
    ("ok", "per-cell-wrong", ConfigError, "tolerance_s"),
    ("negative", 0.2e-6, ConfigError, "negative"),
])
def test_bad_targets_or_tolerance_raise_before_any_backend_call(targets, tol, exc, match):
    x = toy()
    n = GEO.n_cells
    t = level_targets(n)
    if targets == "nan":
        t[5] = np.nan
    elif targets == "short":
        t = t[:-1]
    elif targets == "negative":
        t[0] = -1e-6
    if tol == "per-cell-wrong":
        tol = np.full(n - 1, 0.2e-6)
    with pytest.raises(exc, match=match):
        write_verify(x, Cells.all(GEO), t, tol)
    assert x.calls == []


def test_duplicate_and_out_of_range_cells_rejected():
    x = toy()
    with pytest.raises(AddressError, match="repeats cell #0"):
        write_verify(x, Cells([0, 1, 0], [0, 1, 0], [0, 1, 0]), 5e-6, 0.2e-6)
    with pytest.raises(AddressError):
        write_verify(x, Cells([0], [9], [0]), 5e-6, 0.2e-6)
    assert x.calls == []


def test_scalar_target_and_per_cell_tolerance():
    x = toy()
    cells = Cells.from_flat([0, 1, 2], GEO)
    tol = np.array([0.3e-6, 0.2e-6, 0.1e-6])
    r = write_verify(x, cells, 10e-6, tol)
    assert np.all(r.in_band)
    assert np.all(np.abs(r.final_s - 10e-6) <= tol)


# ---- cancel and resume -------------------------------------------------------------------

def test_cancel_from_on_step_raises_after_journal_and_resume_finishes():
    x = toy(seed=2)
    cells = Cells.all(GEO)
    targets = level_targets(len(cells))
    token = CancelToken()
    steps = []

    def on_step(step):
        steps.append(step)
        if step.iteration == 3:
            token.cancel("test stop")

    with pytest.raises(Cancelled, match="test stop") as e:
        write_verify(x, cells, targets, TABLE.tolerance_s, on_step=on_step, cancel=token)
    assert [s.iteration for s in steps] == [0, 1, 2, 3]
    assert x.n_read == 4                      # nothing after the cancelled iteration
    part = e.value.report
    assert isinstance(part, ProgramReport) and len(part) == len(cells)
    done = np.concatenate([s.done_idx for s in steps])
    assert np.array_equal(np.flatnonzero(part.finished), np.sort(done))
    assert 0 < done.size < len(cells)
    assert np.all(part.status[~part.finished] == NOT_FINISHED)
    assert part.summary()["not_finished"] == len(cells) - done.size

    # resume: finished cells are neither read nor pulsed again, and the report covers everything
    n_calls = len(x.calls)
    steps2 = []
    r = write_verify(x, cells, targets, TABLE.tolerance_s, on_step=steps2.append, **part.resume_kwargs())
    flat = cells.flat(GEO)
    touched = set()
    for c in x.calls[n_calls:]:
        touched.update(int(v) for v in c[2 if c[0] == "pulse" else 1])
    assert not touched & set(flat[part.finished].tolist())
    assert touched == set(flat[~part.finished].tolist())
    assert np.all(r.in_band)
    assert np.array_equal(r.final_s[part.finished], part.final_s[part.finished])
    assert np.array_equal(r.pulses[part.finished], part.pulses[part.finished])
    # resumed journal positions refer to the whole selection
    resumed = np.concatenate([s.done_idx for s in steps2])
    assert np.array_equal(np.sort(resumed), np.flatnonzero(~part.finished))


def test_done_mask_cells_are_never_touched():
    x = toy()
    cells = Cells.all(GEO)
    n = len(cells)
    done = np.zeros(n, dtype=bool)
    done[::3] = True
    prior_final = np.full(n, 7e-6)
    prior_pulses = np.full(n, 4)
    prior_status = np.where(np.arange(n) % 2 == 0, IN_BAND, MAX_PULSES)
    r = write_verify(x, cells, level_targets(n), TABLE.tolerance_s, done_mask=done,
                     prior_final_s=prior_final, prior_pulses=prior_pulses, prior_status=prior_status)
    assert not x.touched() & set(cells.flat(GEO)[done].tolist())
    assert np.all(r.final_s[done] == 7e-6) and np.all(r.pulses[done] == 4)
    assert np.array_equal(r.status[done], prior_status[done])
    assert np.all(r.status[~done] == IN_BAND)


def test_done_mask_needs_prior_values():
    x = toy()
    n = GEO.n_cells
    done = np.zeros(n, dtype=bool)
    done[0] = True
    with pytest.raises(ConfigError, match="prior_final_s"):
        write_verify(x, Cells.all(GEO), level_targets(n), TABLE.tolerance_s, done_mask=done)
    with pytest.raises(ConfigError, match="not a finished status"):
        write_verify(x, Cells.all(GEO), level_targets(n), TABLE.tolerance_s, done_mask=done,
                     prior_final_s=np.zeros(n), prior_pulses=np.zeros(n, int),
                     prior_status=np.full(n, NOT_FINISHED))
    assert x.calls == []


def test_all_done_touches_nothing():
    x = toy()
    n = GEO.n_cells
    r = write_verify(x, Cells.all(GEO), level_targets(n), TABLE.tolerance_s, done_mask=np.ones(n, bool),
                     prior_final_s=np.ones(n) * 1e-6, prior_pulses=np.ones(n, int),
                     prior_status=np.zeros(n, int))
    assert x.calls == [] and np.all(r.in_band)


# ---- delegation --------------------------------------------------------------------------

def test_program_capability_is_used_with_band_edges():
    x = RecordingProgramCrossbar(GEO, g0_s=np.full(GEO.n_cells, 5e-6))
    cells = Cells.all(GEO)
    n = len(cells)
    targets = level_targets(n)
    done = np.zeros(n, dtype=bool)
    done[:10] = True
    pol = WriteVerifyPolicy(max_pulses=80)
    steps = []
    r = write_verify(x, cells, targets, 0.25e-6, pol, on_step=steps.append, done_mask=done,
                     prior_final_s=targets, prior_pulses=np.zeros(n, int), prior_status=np.zeros(n, int))
    assert len(x.program_calls) == 1
    call = x.program_calls[0]
    assert call["policy"] is pol
    assert np.array_equal(call["cells"].flat(GEO), cells.flat(GEO)[10:])
    assert np.allclose(call["lo_s"], targets[10:] - 0.25e-6 * pol.verify_margin)
    assert np.allclose(call["hi_s"], targets[10:] + 0.25e-6 * pol.verify_margin)
    assert np.all(r.in_band) and len(r) == n
    assert np.concatenate([s.done_idx for s in steps]).min() == 10   # remapped to the selection


def test_program_capability_not_called_when_validation_fails():
    x = RecordingProgramCrossbar(GEO)
    with pytest.raises(SafetyViolation):
        write_verify(x, Cells.all(GEO), level_targets(GEO.n_cells), TABLE.tolerance_s,
                     WriteVerifyPolicy(set_gate_max=4.0))
    assert x.program_calls == [] and x.calls == []


def test_host_loop_usable_directly_by_backends():
    x = toy()
    cells = Cells.from_flat([3, 4], GEO)
    r = write_verify_host(x, cells, [6e-6, 12e-6], [5.8e-6, 11.8e-6], [6.2e-6, 12.2e-6])
    assert np.all(r.in_band)
    with pytest.raises(ConfigError, match="above the upper edge"):
        write_verify_host(x, cells, [6e-6, 12e-6], [6.2e-6, 11.8e-6], [5.8e-6, 12.2e-6])


# ---- serialization -----------------------------------------------------------------------

def test_policy_and_report_round_trip():
    pol = WriteVerifyPolicy(max_pulses=50, set_gate_step=0.03)
    assert WriteVerifyPolicy.from_dict(pol.to_dict()) == pol
    assert WriteVerifyPolicy.from_dict({"max_pulses": "40"}).max_pulses == 40
    with pytest.raises(ConfigError, match="unknown key"):
        WriteVerifyPolicy.from_dict({"max_pulse": 10})
    with pytest.raises(ConfigError, match="integer"):
        WriteVerifyPolicy.from_dict({"max_pulses": 10.5})
    rep = ProgramReport([1e-6, 2e-6], [1e-6, 3e-6], [3, 100], [IN_BAND, MAX_PULSES], 1.0, 2.0, 7)
    back = ProgramReport.from_dict(rep.to_dict())
    assert back.summary() == rep.summary()
    s = rep.summary()
    for key in ("cells", "in_band_fraction", "write_errors", "unresponsive", "mean_pulses",
                "median_pulses", "max_pulses", "seconds", "backend_seconds"):
        assert key in s
    assert s["write_errors"] == 1 and s["mean_pulses"] == 51.5 and s["max_pulses"] == 100


def test_the_program_stage_caps_the_default_policy_at_the_station_limits(tmp_path, caplog):
    """stations/sim-wang.toml allows a 2 V RESET; the default policy ramps to 2.2 V: the stage
    lowers it to the limit, says so, and programs (before, the job was refused)."""
    from pathlib import Path
    from hil.cli import main
    from hil.limits import Op
    from hil.programming import WriteVerifyPolicy, policy_within
    from hil.registry import open_station
    station = str(Path(__file__).resolve().parents[1] / "stations" / "sim-wang.toml")
    with open_station(station, seed=1) as x:
        policy, notes = policy_within(x.limits)
        assert WriteVerifyPolicy().reset_v_sl_max > x.limits[Op.RESET].max_v == policy.reset_v_sl_max
        assert notes and "reset_v_sl_max 2.2 V → 2 V" in notes[0]
        policy.validate(x.limits)
    out = tmp_path / "wang.h5"
    assert main(["program", "--station", station, "--pattern", "checker", "--max-pulses", "20",
                 "--out", str(out), "--json"]) == 0
    assert "capped at the station's limits: reset_v_sl_max 2.2 V → 2 V" in caplog.text
