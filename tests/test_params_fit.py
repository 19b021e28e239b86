"""`hil params fit` (sim_backend.fit): the device parameters a programming record constrains are
recovered from a record the simulator made with known, perturbed parameters; a write-verify run
on the fitted model matches the record per level; bad input is one line and exit status 2."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import ks_2samp

from hil.cli import main
from hil.runstore import RunRecord, RunWriter
from sim_backend.fit import SET_FACTOR
from sim_backend.params import DeviceParams

BASE = DeviceParams()
TRUE = replace(BASE, reset=replace(BASE.reset, mean_dg_us=tuple(1.3 * m for m in BASE.reset.mean_dg_us),
                                   sigma_dg_us=tuple(1.5 * s for s in BASE.reset.sigma_dg_us)),
               read_noise=replace(BASE.read_noise, rel=0.008, abs_us=0.06),
               compliance=replace(BASE.compliance, g_per_v_us=24.0))


def program(tmp_path, params_file, seed, name, *extra):
    out = tmp_path / name
    assert main(["program", "--station", "sim", "--pe", "0", "--levels", "8", "--seed", str(seed),
                 "--params", str(params_file), "--out", str(out), "--json", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("fit")
    source = program(d, TRUE.save(d / "true.toml"), 1, "source.h5")
    with redirect_stdout(io.StringIO()) as text:
        assert main(["params", "fit", str(source), "--out", str(d / "fitted.toml"), "--bootstrap", "2",
                     "--json"]) == 0
    return d, source, DeviceParams.load(d / "fitted.toml"), json.loads(text.getvalue())


def test_fit_recovers_the_perturbed_parameters(fitted):
    p = fitted[2]
    assert p.read_noise.rel == pytest.approx(0.008, rel=0.1)
    assert p.read_noise.abs_us == pytest.approx(0.06, rel=0.15)
    assert p.compliance.g_per_v_us == pytest.approx(24.0, rel=0.03)
    assert p.compliance.vth_v == pytest.approx(0.7, abs=0.01)
    assert p.set.mean_dg_us[0] / BASE.set.mean_dg_us[0] == pytest.approx(1.0, abs=0.15)
    true_m, true_s = np.array(TRUE.reset.mean_dg_us), np.array(TRUE.reset.sigma_dg_us)
    assert np.allclose(p.reset.mean_dg_us[1:], true_m[1:], rtol=0.08)       # bin 0: ~0, no relative figure
    assert np.allclose(p.reset.sigma_dg_us, true_s, rtol=0.15)
    assert p.variation.reset_sigma_ln == pytest.approx(0.25, rel=0.15)
    # what the record cannot show keeps the base value
    assert p.relaxation == BASE.relaxation and p.drift == BASE.drift and p.set.sigma_dg_us == BASE.set.sigma_dg_us


def test_fit_report_lists_estimates_quality_and_what_is_not_constrained(fitted):
    d, _, p, rep = fitted
    by_name = {e["name"]: e for e in rep["estimates"]}
    assert {"read_noise.rel", "compliance.g_per_v_us", SET_FACTOR, "reset.mean_dg_us[5]"} <= set(by_name)
    e = by_name["compliance.g_per_v_us"]
    assert e["lo95"] < e["estimate"] < e["hi95"] and np.isfinite(e["gof"]) and e["n"] > 1000
    assert "relaxation.sigma_rel" in rep["not_constrained"] and "set.sigma_dg_us" in rep["not_constrained"]
    assert rep["params_digest"] == p.digest() and rep["out"] == str(d / "fitted.toml")


def per_level(rec):
    with RunRecord.open(rec) as r:
        plan, cells = r.dataset("programming/targets")[0], r.table("programming/cells")
    level = dict(zip(plan[0].astype(int), plan[1].astype(int)))
    li = np.array([level[int(c)] for c in cells["cell"]])
    return li, cells["pulses"], cells["final_g_s"]


def worst_ks(a, b):
    (la, pa, ga), (lb, pb, gb) = per_level(a), per_level(b)
    d = max(max(ks_2samp(pa[la == k], pb[lb == k])[0], ks_2samp(ga[la == k], gb[lb == k])[0]) for k in range(8))
    n = int(np.sum(la == 0))
    return d, float(np.sqrt(-np.log(0.001 / 2) / 2) * np.sqrt(2 / n))      # KS critical D at alpha = 0.001


def test_write_verify_on_the_fitted_model_matches_the_record_per_level(fitted):
    d, source, p, _ = fitted
    twin = program(d, d / "fitted.toml", 2, "twin.h5")            # another chip
    D, crit = worst_ks(source, twin)
    assert D < crit, f"KS D {D:.3f} >= {crit:.3f}"
    wrong = replace(p, compliance=replace(p.compliance, g_per_v_us=0.7 * p.compliance.g_per_v_us))
    D_wrong, _ = worst_ks(source, program(d, wrong.save(d / "wrong.toml"), 2, "wrong.h5"))
    assert D_wrong > crit                                          # the same test catches a wrong model


def test_bad_input_is_one_line_exit_2(fitted, tmp_path, capsys):
    out = str(tmp_path / "p.toml")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n" + b"\0" * 64)
    other = tmp_path / "other.h5"
    RunWriter.create(other, "mcnn", {"spec": None}, {"seed": 0}).finalize()
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('[station]\nbackend = "sim"\n[geometry]\nn_pe = 1\nrows = 4\ncols = 4\n')
    small = tmp_path / "small.h5"
    assert main(["program", "--station", str(tiny), "--out", str(small), "--json"]) == 0
    for rec, says in ((corrupt, "not a readable HDF5"), (other, "not a programming record"),
                      (small, "too few pulses"), (tmp_path / "none.h5", "no run record")):
        capsys.readouterr()
        assert main(["params", "fit", str(rec), "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1
    capsys.readouterr()
    assert main(["params", "fit", str(fitted[1]), "--out", out, "--base", "nosuch"]) == 2
    assert "--base" in capsys.readouterr().err
    assert not (tmp_path / "p.toml").exists()


def test_a_record_made_through_the_emulated_instruments(tmp_path, capsys):
    """The board firmware runs write-verify itself and journals no pulses: the fit takes read
    noise from the final verify reading against the snapshot after, and says the rest is not
    constrained."""
    from pathlib import Path
    station = Path(__file__).resolve().parents[1] / "stations" / "sim-instruments.toml"
    rec = tmp_path / "inst.h5"
    assert main(["program", "--station", str(station), "--pe", "0", "--levels", "8", "--out", str(rec), "--json"]) == 0
    capsys.readouterr()
    assert main(["params", "fit", str(rec), "--out", str(tmp_path / "p.toml"), "--bootstrap", "0", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    est = {e["name"]: e["estimate"] for e in rep["estimates"]}
    assert est["read_noise.rel"] == pytest.approx(BASE.read_noise.rel, rel=0.15)
    assert est["read_noise.abs_us"] == pytest.approx(BASE.read_noise.abs_us, rel=0.15)
    assert any("no pulse history" in n for n in rep["not_constrained"])
