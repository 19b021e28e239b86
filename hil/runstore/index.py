"""A folder of run records as a list: date, kind, station, status and a key figure per record.

Read-only and fast: only the root attributes, the station snapshot and the summaries are read
(no dataset, no checksum pass — `RunRecord.open` does that when a record is opened). A file that
cannot be read is listed with status "corrupt" and the reason; a journal whose record was never
written (a run cut off) is listed as "interrupted" with the command that recovers it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import h5py

from hil.errors import DataError
from hil.runstore.hdf5 import FORMAT, JSON_KEYS, _one_line
from hil.runstore.journal import journal_path

CORRUPT = "corrupt"
INTERRUPTED = "interrupted"

#: (summary key, text of its value and the whole summary) tried in this order for a key figure
KEY_FIGURES = (
    ("in_band_fraction", lambda v, s: f"in band {v:.2%}"),
    ("switching_fraction", lambda v, s: f"switching {v:.0%} of cells"),
    ("formed", lambda v, s: f"formed {v:d} of {s.get('cells', '?')}"),
    ("median_rel_change", lambda v, s: f"median ΔG {v:+.1%} over {s.get('duration', '?')}"),
    ("v_set_median", lambda v, s: f"median V_set {v:.2f} V"),
    ("test_accuracy", lambda v, s: f"test accuracy {v:.2%}"),
    ("accuracy", lambda v, s: f"accuracy {v:.2%}"),
    ("steps", lambda v, s: f"{v:d} steps"),
)


@dataclass
class RunEntry:
    """One file of the folder: a record, a corrupt file or a journal without its record."""

    path: str
    created: str = ""
    kind: str = ""
    station: str = ""
    status: str = ""
    key_figure: str = ""
    problem: str = ""          # why the file could not be read (status corrupt / interrupted)

    @property
    def name(self) -> str:
        return Path(self.path).name

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


def index_folder(folder: str | os.PathLike) -> list[RunEntry]:
    """Every run record (`*.h5`) and orphan journal of `folder` (not recursive), newest first;
    DataError if `folder` is not a directory."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such folder of runs: {folder}")
    entries = []
    for p in sorted(folder.iterdir()):
        rec = p.with_suffix("") if p.suffix == ".journal" else None
        if p.suffix == ".h5" and p.is_file():
            entries.append(read_entry(p))
        elif rec is not None and rec.suffix == ".h5" and journal_path(rec) == p and not rec.exists():
            entries.append(RunEntry(str(rec), created=_mtime(p), status=INTERRUPTED,
                                    problem=f"only its journal exists; run `hil runs recover {rec}`"))
    entries.sort(key=lambda e: e.created, reverse=True)
    return entries


def read_entry(path: str | os.PathLike) -> RunEntry:
    """The index entry of one record file; never raises for a bad file (status 'corrupt')."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            root = _attrs(f)
            if root.get("format") != FORMAT:
                return RunEntry(str(path), created=_mtime(path), status=CORRUPT,
                                problem="not a memristor-hil run record")
            station = json.loads(f["station"].attrs["json"]) if "station" in f else {}
            summary = root.get("summary")
            if not isinstance(summary, dict):
                summary = _first_group_summary(f)
        return RunEntry(str(path), created=str(root.get("created", "")) or _mtime(path),
                        kind=str(root.get("kind", "")), station=_station_label(station),
                        status=str(root.get("status", "")),
                        key_figure=key_figure(summary or {}))
    except Exception as e:       # h5py raises OSError, KeyError, ValueError ... for damaged files
        return RunEntry(str(path), created=_mtime(path), status=CORRUPT, problem=_one_line(e))


def key_figure(summary: dict) -> str:
    """The most telling number of a run's summary as text ('' when it has none)."""
    for key, text in KEY_FIGURES:
        v = summary.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                return text(v, summary)
            except (ValueError, TypeError):      # e.g. a float where a count was expected
                continue
    return ""


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    json_keys = set(json.loads(_text(obj.attrs[JSON_KEYS]))) if JSON_KEYS in obj.attrs else set()
    out = {}
    for k in obj.attrs:
        if k in ("marks", JSON_KEYS):
            continue
        v = obj.attrs[k]
        v = _text(v) if isinstance(v, (bytes, str)) else v.item() if hasattr(v, "item") else v
        out[k] = json.loads(v) if k in json_keys else v
    return out


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _first_group_summary(f: h5py.File) -> Optional[dict]:
    """The summary of the first top-level group that has one (e.g. an experiment's)."""
    for name, obj in f.items():
        if isinstance(obj, h5py.Group) and name != "station" and "summary" in obj.attrs:
            s = _attrs(obj).get("summary")
            if isinstance(s, dict):
                return s
    return None


def _station_label(station: dict) -> str:
    label = station.get("label") or station.get("spec") or ""
    backend = (station.get("describe") or {}).get("backend")
    return f"{label} ({backend})" if label and backend and backend not in str(label) else str(label or backend or "")


def _mtime(path: Path) -> str:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="milliseconds")
    except OSError:
        return ""
