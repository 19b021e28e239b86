"""Kill campaign (issue 9): kill a run at seeded random points, `runs recover`, resume; nothing
finished may be lost or redone, and where the seed fixes it the record equals an uninterrupted run's.

Kills are modelled as SIGKILL: a forked `hil` process dies by `os._exit` right after its N-th
journal write (or in the middle of it: a torn record), so nothing after that point is flushed and
no close handler runs. A few real SIGKILLs of a `hil` subprocess check the model. Hybrid training
is killed in process after its N-th record, on a chip that keeps its state like a physical chip.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

import hil.runstore.writer as wmod
from hil import cli
from hil.geometry import YAO
from hil.yao2020.hwnet import HardwareMCNN, plan_mcnn, transfer
from hil.yao2020.hybrid import HybridConfig, hybrid_train
from hil.yao2020.mcnn import MCNN
from hil.runstore import RunRecord, RunWriter, journal_path, recover
from sim_backend.chip import SimulatedCrossbar

REPO = Path(__file__).resolve().parents[1]
KILLS = 10
COUNTS: dict[str, int] = {}


def hil_fork(argv, cwd: Path, kill_after=None, keep=1.0) -> tuple[int, str]:
    """Run `hil argv` in a forked child. With `kill_after=N` the child dies (exit 137) right after
    writing `keep` (a fraction) of its N-th journal write; otherwise it writes its count of
    journal writes to cwd/writes.txt."""
    log = cwd / "child.log"
    pid = os.fork()
    if pid == 0:                                  # pragma: no cover - child
        code = 98
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(cwd)
            count = [0]
            orig = wmod._write_all

            def write_all(fd, data):
                count[0] += 1
                if count[0] == kill_after:
                    orig(fd, data[:int(len(data) * keep)])
                    os._exit(137)
                orig(fd, data)
            wmod._write_all = write_all
            code = cli.main(list(argv))
            (cwd / "writes.txt").write_text(str(count[0]))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), log.read_text()


def _table(rec: RunRecord, name: str) -> dict:
    return rec.table(name) if name in rec.tables() else {}


def check_programming(before: Path, after: Path, prefix: str) -> None:
    """Invariants of a recovered record `before` and the record `after` its resume finished."""
    cells, pulses, verify = (f"{prefix}/{t}" for t in ("cells", "pulses", "verify"))
    with RunRecord.open(before) as rec:
        cb, pb, vb = _table(rec, cells), _table(rec, pulses), _table(rec, verify)
    with RunRecord.open(after) as rec:
        assert rec.status not in ("running", "interrupted", "recovered")
        cf, pf, vf = rec.table(cells), rec.table(pulses), rec.table(verify)
        plan = rec.dataset(f"{prefix}/targets")[0][0].astype(np.int64)
    # every planned cell finished exactly once
    assert np.array_equal(np.sort(cf["cell"]), np.sort(plan))
    # nothing finished before the kill is lost: the recovered rows are the first rows, unchanged
    for t_before, t_after in ((cb, cf), (pb, pf), (vb, vf)):
        for col, a in t_before.items():
            np.testing.assert_array_equal(t_after[col][:len(a)], a)
    # ... nor redone: no pulse or verify read for a cell finished before the kill
    done = cb.get("cell", np.zeros(0, np.int64))
    n_pb, n_vb = len(pb.get("cell", ())), len(vb.get("cell", ()))
    assert not np.isin(pf["cell"][n_pb:], done).any()
    assert not np.isin(vf["cell"][n_vb:], done).any()
    # finding 13: a cell's pulse count is its number of rows in the pulse table
    counted = {int(c): int(n) for c, n in zip(*np.unique(pf["cell"], return_counts=True))}
    assert [counted.get(int(c), 0) for c in cf["cell"]] == cf["pulses"].tolist()


def kill_chain(d: Path, first: list[str], resume: list[str], record: str, prefix: str, seed: int,
               span: int) -> int:
    """Run `first`, then kill it and every resume of it at seeded random points (KILLS kills, each
    within the next `span` journal writes, some mid-record), `runs recover` after each kill and
    check after the final resume that nothing recovered was lost or redone."""
    rng = np.random.default_rng(seed)
    recovered = []
    for k in range(KILLS):
        n = int(rng.integers(2, span))
        keep = float(rng.choice([1.0, rng.uniform(0.0, 1.0)]))
        rc, out = hil_fork(first if k == 0 else resume, d, kill_after=n, keep=keep)
        assert rc == 137, f"kill {k} at write {n}: {out}"
        rc, out = hil_fork(["runs", "recover", record, "--json"], d)
        assert rc == 0, out
        recovered.append(d / f"recovered{k}.h5")
        recovered[-1].write_bytes((d / record).read_bytes())
    rc, out = hil_fork(resume, d)
    assert rc == 0, out
    for r in recovered:
        check_programming(r, d / record, prefix)
    return len(recovered)


def run_program_campaign(tmp_path: Path, station: Path, name: str, seed: int,
                         extra: list[str] = ()) -> list[Path]:
    ref = tmp_path / "ref"
    ref.mkdir()
    rc, out = hil_fork(["program", "--station", str(station), "--out", "r.h5", "--json", *extra], ref)
    assert rc == 0, out
    total = int((ref / "writes.txt").read_text())
    d = tmp_path / "killed"
    d.mkdir()
    COUNTS[name] = kill_chain(d, ["program", "--station", str(station), "--out", "r.h5", "--json", *extra],
                              ["program", "--resume", "r.h5", "--json", *extra], "r.h5", "programming", seed,
                              span=max(3, total // KILLS))
    return [ref, d]


FAST = ["--max-pulses", "12"]      # few write-verify iterations: the campaign stays fast
SMALL_SIM = """
[station]
backend = "sim"
name = "small simulated chip"
[geometry]
n_pe = 1
rows = 16
cols = 8
[sim]
seed = 3
"""


def test_program_sim_station(tmp_path):
    st = tmp_path / "small.toml"
    st.write_text(SMALL_SIM)
    run_program_campaign(tmp_path, st, "program/sim", seed=11, extra=FAST)


def _small_instruments(tmp_path: Path, world: str) -> Path:
    text = (REPO / "stations" / "sim-instruments.toml").read_text()
    text = text.replace('preset = "yao"', "n_pe = 1\nrows = 16\ncols = 8")
    text = text.replace('geometry = "yao"', "geometry = { n_pe = 1, rows = 16, cols = 8 }")
    text = text.replace("hilsim://sim-instruments/board", f"hilsim://{world}/board")
    text = text.replace('world = "sim-instruments"', f'world = "{world}"')
    text = text.replace('path = "board-firmware"', 'path = "host"')   # one journal step per iteration
    p = tmp_path / "small-instruments.toml"
    text = text.replace('visa_library = "sim-instruments.toml@hilsim"', f'visa_library = "{p.name}@hilsim"')
    p.write_text(text)
    return p


def test_program_emulated_station(tmp_path):
    """Finding 5: after a kill, the resumed run continues on the emulated chip the record was made on."""
    st = _small_instruments(tmp_path, "kill-campaign")
    dirs = run_program_campaign(tmp_path, st, "program/emulated", seed=12, extra=FAST)
    for d in dirs:
        with RunRecord.open(d / "r.h5") as rec:
            cells = rec.table("programming/cells")
            flat, _, targets = rec.dataset("programming/targets")[0]
            tol = rec.dataset("programming/targets")[1]["tolerance_s"]
            g = rec.dataset("snapshots/after_programming")[0].ravel()
        ok = cells["status"] == 0
        held = np.abs(g[cells["cell"][ok]] - cells["final_g_s"][ok]) <= 2 * tol
        # the chip holds what the record says it was programmed to (a fresh chip under a resumed
        # record does not: 10-65% in band in the issue)
        assert ok.sum() > 20 and held.mean() > 0.9, (d, held.mean())


@pytest.fixture(scope="module")
def mcnn_record(tmp_path_factory):
    """A trained-stage mCNN record (untrained weights are enough to exercise the transfer)."""
    from hil.yao2020.demo import save_model
    p = tmp_path_factory.mktemp("mcnn") / "t.h5"
    w = RunWriter.create(p, "mcnn", {"spec": None}, {"seed": 0})
    save_model(w, _model())
    w.finalize("trained")
    return p


def test_transfer(tmp_path, mcnn_record):
    args = ["transfer", "--run", "t.h5", "--groups", "1", "--json"]
    (tmp_path / "t.h5").write_bytes(mcnn_record.read_bytes())
    COUNTS["transfer"] = kill_chain(tmp_path, args, args, "t.h5", "transfer", seed=13, span=12)
    with RunRecord.open(tmp_path / "t.h5") as rec:
        assert rec.status == "transferred"


class Killed(BaseException):
    """The process died here (nothing after this point reaches the record)."""


def _model() -> MCNN:
    model = MCNN(seed=0)
    model.calibrate(np.random.default_rng(0).integers(0, 256, (32, 28, 28)).astype(np.uint8))
    return model


def _hybrid_setup(tmp_path: Path):
    model = _model()
    plan = plan_mcnn(YAO, model, 1)
    chip = SimulatedCrossbar(YAO, seed=5)
    w = RunWriter.create(tmp_path / "transfer.h5", "mcnn", {"spec": "sim"}, checkpoint_interval_s=None)
    transfer(chip, model, plan, w, layers=["fc"])
    w.finalize()
    state = chip.save_state(tmp_path / "chip.npz")
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 48, (80, 192))
    y = rng.integers(0, 10, 80)
    return model, plan, state, codes, y


def _chip(state: Path) -> SimulatedCrossbar:
    c = SimulatedCrossbar(YAO, seed=5)
    c.load_state(state)
    return c


HCFG = HybridConfig(fraction=0.1, epochs=4, batch=40, lr_levels=0.4, threshold_levels=0.5, max_pulses=4, seed=3)


def _hybrid(hw, codes, y, writer):
    return hybrid_train(hw, codes, y, HCFG, evals={"t": (codes[:48], y[:48])}, writer=writer)


def run_hybrid_kill(tmp_path, setup, n: int, name: str, keep: float = 1.0) -> Path:
    """Hybrid training killed right after its n-th journal record (keep < 1: during it), then
    recovered and resumed on the same chip (a physical chip keeps its state)."""
    model, plan, state, codes, y = setup
    hw = HardwareMCNN(_chip(state), model, plan)
    path = tmp_path / f"{name}.h5"
    w = RunWriter.create(path, "mcnn", {"spec": "sim"}, checkpoint_interval_s=None)
    count = [0]
    orig = w._write

    def write(rtype, header, arrays=()):
        count[0] += 1
        if count[0] == n and keep < 1.0:
            data = wmod.encode_record(rtype, header, arrays)
            wmod._write_all(w._fd, data[:int(len(data) * keep)])
        else:
            orig(rtype, header, arrays)
        if count[0] == n:
            os.close(w._fd)
            w._fd = None
            raise Killed
    w._write = write
    with pytest.raises(Killed):
        _hybrid(hw, codes, y, w)
    recover(path)
    w = RunWriter.resume(path, "mcnn", checkpoint_interval_s=None)
    _hybrid(hw, codes, y, w)
    w.finalize()
    return path


def test_hybrid(tmp_path):
    """Finding 9: a resumed hybrid stage writes the same epochs as an uninterrupted run."""
    setup = _hybrid_setup(tmp_path)
    model, plan, state, codes, y = setup
    ref = tmp_path / "ref.h5"
    w = RunWriter.create(ref, "mcnn", {"spec": "sim"}, checkpoint_interval_s=None)
    _hybrid(HardwareMCNN(_chip(state), model, plan), codes, y, w)
    w.finalize()
    with RunRecord.open(ref) as rec:
        want = rec.table("hybrid/epochs")
        want_ckpt = rec.dataset("hybrid/checkpoint")[0]
    assert want["epoch"].tolist() == list(range(HCFG.epochs + 1)) and want["pulses"][-1] > 0
    total = 1 + 2 * (HCFG.epochs + 1)            # config attrs, then (checkpoint, row) per epoch
    rng = np.random.default_rng(14)
    points = rng.choice(np.arange(1, total), size=KILLS, replace=False)
    for k, n in enumerate(points):
        got_path = run_hybrid_kill(tmp_path, setup, int(n), f"kill{k}")
        with RunRecord.open(got_path) as rec:
            got = rec.table("hybrid/epochs")
            np.testing.assert_array_equal(rec.dataset("hybrid/checkpoint")[0], want_ckpt)
        assert got.keys() == want.keys()
        for col in want:
            np.testing.assert_array_equal(got[col], want[col], err_msg=f"kill after record {n}: {col}")
    # torn records: the epoch being written is lost; the chip already moved on, so only the
    # structure is compared (each epoch once, cumulative counters never reset)
    for k, n in enumerate((4, 7)):
        with RunRecord.open(run_hybrid_kill(tmp_path, setup, n, f"torn{k}", keep=0.5)) as rec:
            got = rec.table("hybrid/epochs")
        assert got["epoch"].tolist() == list(range(HCFG.epochs + 1))
        assert np.all(np.diff(got["pulses"]) >= 0) and np.all(np.diff(got["updates"]) >= 0)
    COUNTS["hybrid"] = KILLS + 2


def test_real_sigkill(tmp_path):
    """Two real SIGKILLs of a `hil program` process at seeded journal sizes, then recover + resume."""
    st = tmp_path / "small.toml"
    st.write_text(SMALL_SIM.replace("rows = 16", "rows = 32"))
    rng = np.random.default_rng(15)
    for k, threshold in enumerate(rng.integers(8_000, 25_000, size=2)):
        d = tmp_path / f"sig{k}"
        d.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "hil", "program", "--station", str(st), "--out", "r.h5",
                                 "--json"], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        jp = journal_path(d / "r.h5")
        try:
            while proc.poll() is None and (not jp.exists() or jp.stat().st_size < threshold):
                os.sched_yield()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL, "the run finished before the kill point"
        assert hil_fork(["runs", "recover", "r.h5"], d)[0] == 0
        (d / "recovered.h5").write_bytes((d / "r.h5").read_bytes())
        rc, out = hil_fork(["program", "--resume", "r.h5", "--json"], d)
        assert rc == 0, out
        check_programming(d / "recovered.h5", d / "r.h5", "programming")
    COUNTS["program/sim real SIGKILL"] = 2


def test_report_counts():
    """Prints the campaign's counts (run with -s to see them)."""
    print("\nkill campaign:", COUNTS)
