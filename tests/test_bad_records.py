"""Bad records corpus (issue 9, findings 5, 11, 12, 14): corrupted records and journals, wrong
kinds and schema versions, empty and foreign files through `runs show`, `runs recover`,
`program --resume`, `transfer` and `hybrid --run`: every case exits 2 with one line naming the file
(and the damaged dataset where there is one) and leaves every byte in its folder as it was."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from hil import cli
from hil.runstore import RunWriter, journal_path
from hil.runstore.journal import FILE_HEADER, REC_HEADER
from test_kill_campaign import SMALL_SIM, _model, hil_fork

CASES: list = []


def case(name, argv, expect=()):
    def deco(fn):
        CASES.append(pytest.param(fn, argv, expect, id=name))
        return fn
    return deco


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A complete programming record, an interrupted one (killed, recovered) and an mCNN record."""
    d = tmp_path_factory.mktemp("base")
    (d / "small.toml").write_text(SMALL_SIM)
    rc, out = hil_fork(["program", "--station", "small.toml", "--out", "p.h5", "--max-pulses", "8"], d)
    assert rc == 0, out
    rc, out = hil_fork(["program", "--station", "small.toml", "--out", "k.h5", "--max-pulses", "8"], d,
                       kill_after=12)
    assert rc == 137, out
    assert hil_fork(["runs", "recover", "k.h5"], d)[0] == 0
    from hil.yao2020.demo import save_model
    w = RunWriter.create(d / "m.h5", "mcnn", {"spec": None}, {"seed": 0})
    save_model(w, _model())
    w.finalize("trained")
    return d


def _chunk_offset(path: Path, name: str) -> int:
    with h5py.File(path, "r") as f:
        return f[name].id.get_chunk_info(0).byte_offset


def _flip(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0x5A
    path.write_bytes(bytes(b))


def _flip_chunk(src: str, dataset: str, delta: int = 3):
    def make(d: Path) -> None:
        p = d / src
        _flip(p, _chunk_offset(p, dataset) + delta)
    return make


for i, (ds, argv) in enumerate([
        ("programming/cells/final_g_s", ["runs", "show", "p.h5"]),
        ("programming/pulses/cell", ["runs", "show", "p.h5"]),
        ("programming/verify/g_s", ["runs", "show", "p.h5"]),
        ("snapshots/after_programming", ["runs", "show", "p.h5"]),
        ("programming/targets", ["runs", "show", "p.h5"]),
        ("programming/pulses/v", ["runs", "show", "p.h5"])]):
    case(f"flip-{ds}", argv, ("p.h5", ds))(_flip_chunk("p.h5", ds))


def _flip_at(src: str, offset: int):
    return lambda d: _flip(d / src, offset)


for off in (40, 60, 120, 300):       # superblock, root object header, its attrs
    case(f"flip-metadata-{off}", ["runs", "show", "p.h5"], ("p.h5",))(_flip_at("p.h5", off))


@case("truncated-half", ["runs", "show", "p.h5"], ("p.h5",))
def _(d):
    p = d / "p.h5"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


@case("empty-record", ["runs", "show", "p.h5"], ("p.h5",))
def _(d):
    (d / "p.h5").write_bytes(b"")


@case("text-file", ["runs", "show", "p.h5"], ("p.h5",))
def _(d):
    (d / "p.h5").write_text("not a record\n")


def _set_root(name, value):
    def make(d):
        with h5py.File(d / "p.h5", "a") as f:
            f.attrs[name] = value
    return make


case("schema-99", ["runs", "show", "p.h5"], ("p.h5", "schema_version"))(_set_root("schema_version", 99))
case("schema-text", ["runs", "show", "p.h5"], ("p.h5", "schema_version"))(_set_root("schema_version", "x"))
case("resume-schema-99", ["program", "--resume", "p.h5"], ("p.h5", "schema_version"))(
    _set_root("schema_version", 99))


@case("foreign-hdf5", ["runs", "show", "p.h5"], ("p.h5", "not a memristor-hil run record"))
def _(d):
    (d / "p.h5").unlink()
    with h5py.File(d / "p.h5", "w") as f:
        f["x"] = np.arange(5)


@case("resume-foreign-hdf5", ["program", "--resume", "p.h5"], ("p.h5",))
def _(d):
    _(d) if False else None
    (d / "p.h5").unlink()
    with h5py.File(d / "p.h5", "w") as f:
        f["x"] = np.arange(5)


case("resume-cnn-record", ["program", "--resume", "m.h5"], ("m.h5", "mcnn"))(lambda d: None)
case("hybrid-programming-record", ["hybrid", "--run", "k.h5", "--epochs", "1"], ("k.h5",))(lambda d: None)
case("hybrid-damaged-model", ["hybrid", "--run", "m.h5", "--epochs", "1"], ("m.h5", "model/"))(
    _flip_chunk("m.h5", "model/fc"))
case("transfer-groups-do-not-fit", ["transfer", "--run", "m.h5", "--groups", "9"], ("groups",))(lambda d: None)
case("resume-complete", ["program", "--resume", "p.h5"], ("p.h5", "complete"))(lambda d: None)


@case("resume-damaged-closed-run", ["program", "--resume", "k.h5"], ("k.h5", "programming/pulses"))
def _(d):
    journal_path(d / "k.h5").unlink()        # only the (damaged) HDF5 is left to resume from
    _flip_chunk("k.h5", "programming/pulses/cell")(d)


@case("resume-chip-missing", ["program", "--resume", "k.h5"], ("k.h5", "chip"))
def _(d):
    (d / "k.h5.chip.npz").unlink()


@case("resume-other-chip", ["program", "--resume", "k.h5"], ("k.h5", "chip"))
def _(d):
    shutil.copy(d / "p.h5.chip.npz", d / "k.h5.chip.npz")


def _journal_only(d: Path) -> Path:
    (d / "k.h5").unlink()
    return journal_path(d / "k.h5")


@case("journal-bad-header", ["runs", "recover", "k.h5"], ("k.h5.journal", "not a memristor-hil journal"))
def _(d):
    _flip(_journal_only(d), 0)


@case("journal-empty", ["runs", "recover", "k.h5"], ("k.h5.journal",))
def _(d):
    _journal_only(d).write_bytes(b"")


@case("journal-future-version", ["runs", "recover", "k.h5"], ("k.h5.journal", "format 99"))
def _(d):
    jp = _journal_only(d)
    b = bytearray(jp.read_bytes())
    b[8:10] = (99).to_bytes(2, "little")
    jp.write_bytes(bytes(b))


@case("journal-header-record-damaged", ["runs", "recover", "k.h5"], ("k.h5.journal", "run header"))
def _(d):
    _flip(_journal_only(d), FILE_HEADER.size + REC_HEADER.size + 5)


@case("resume-journal-bad-header", ["program", "--resume", "k.h5"], ("k.h5.journal",))
def _(d):
    _flip(_journal_only(d), 1)


@case("show-journal-only", ["runs", "show", "k.h5"], ("k.h5", "runs recover"))
def _(d):
    _journal_only(d)


def _snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.mark.parametrize("make, argv, expect", CASES)
def test_bad_record(make, argv, expect, base, tmp_path, capsys):
    d = tmp_path / "w"
    shutil.copytree(base, d)
    make(d)
    before = _snapshot(d)
    import os
    cwd = os.getcwd()
    os.chdir(d)
    try:
        rc = cli.main(list(argv))
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    for word in expect:
        assert word in err, err
    assert _snapshot(d) == before          # no byte changed, no file appeared or vanished


def test_corpus_size():
    assert len(CASES) >= 20
    print(f"\nbad records corpus: {len(CASES)} cases")
