"""A sweep folder and its result table.

Layout of a sweep folder:
- `sweep.json`: the spec that made it (with its fingerprint; a folder resumes only the same
  experiment);
- `parts/<point_id>.json`: one row per finished point, each written atomically (temporary file,
  fsync, rename) as the point's result arrives: a killed client loses at most the points in
  flight, never a row already written;
- `results.parquet`: the table (one row per point: the axes' coordinates, seed, every figure,
  status and error, wall time, worker, software version), consolidated from the parts
  atomically; parts already in it are removed afterwards, and rows are deduplicated by
  `point_id` when read, so a crash between the two steps counts nothing twice;
- `cache/`: work shared by points (e.g. a software-trained model per training seed);
- `records/`: the points' run records (with --keep-records); `plots/`: `hil sweep plot`.

The table is standard parquet written by fastparquet (18 MB installed, pyarrow 170 MB): it opens with
`pandas.read_parquet(DIR/results.parquet)` (pyarrow or fastparquet), `pyarrow.parquet.read_table`, etc."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import fastparquet
import numpy as np
import pandas as pd

from hil.errors import ConfigError, DataError

SPEC = "sweep.json"
TABLE = "results.parquet"
PARTS = "parts"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SweepTable:
    """The result table of the sweep folder `root`."""

    def __init__(self, root) -> None:
        self.root = Path(root)
        self.parts = self.root / PARTS
        self.table = self.root / TABLE

    # ---- the spec ---------------------------------------------------------------------------
    def spec(self) -> Optional[dict]:
        """The spec stored in the folder (None if none)."""
        p = self.root / SPEC
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{p} is not a readable sweep spec ({e})") from None

    def claim(self, spec: dict) -> None:
        """Make `root` this sweep's folder, or check it holds the same experiment (ConfigError)."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} is a file; choose a folder")
        old = self.spec()
        if old is not None and old.get("fingerprint") != spec["fingerprint"]:
            raise ConfigError(f"{self.root} holds a sweep of another experiment (target, fixed settings or axes "
                              f"differ); choose another --out")
        if old is None and self.root.is_dir() and any(self.root.iterdir()):
            raise ConfigError(f"{self.root} exists and is not a sweep folder; choose another --out")
        self.parts.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.root / SPEC, lambda p: p.write_text(json.dumps(spec, indent=1)))

    # ---- rows -------------------------------------------------------------------------------
    def add(self, row: dict) -> None:
        """Store one finished point's row (atomically)."""
        _atomic_write(self.parts / f"{row['point_id']}.json",
                      lambda p: p.write_text(json.dumps(row, default=_jsonable, allow_nan=True)))

    def _part_rows(self) -> list[dict]:
        rows = []
        for p in sorted(self.parts.glob("*.json")) if self.parts.is_dir() else ():
            try:
                rows.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue                    # a foreign or torn file: never one of ours (written by rename)
        return rows

    def frame(self) -> pd.DataFrame:
        """Every recorded point, one row each (consolidated table and parts not yet in it)."""
        frames = []
        if self.table.is_file():
            try:
                with open(self.table, "rb") as f:        # closed here (given a path, fastparquet leaves it open)
                    frames.append(fastparquet.ParquetFile(f).to_pandas())
            except Exception as e:
                raise DataError(f"{self.table} is not a readable parquet table ({e})") from None
        parts = self._part_rows()
        if parts:
            frames.append(pd.DataFrame(parts))
        if not frames:
            return pd.DataFrame(columns=["point_id"])
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        return df.drop_duplicates("point_id", keep="first").reset_index(drop=True)

    def point_ids(self) -> set:
        return set(self.frame()["point_id"])

    def consolidate(self) -> pd.DataFrame:
        """Fold the parts into `results.parquet` (atomically), then remove them; returns the table."""
        done = sorted(self.parts.glob("*.json")) if self.parts.is_dir() else []
        df = self.frame()
        if done or not self.table.is_file():
            _atomic_write(self.table, lambda p: _to_parquet(df, p))
            for p in done:
                p.unlink(missing_ok=True)
        return df


def _to_parquet(df: pd.DataFrame, path: Path) -> None:
    out = df.copy()
    for c in out.columns:                     # a column of mixed types (text and NaN) is stored as text
        if out[c].dtype == object and not out[c].map(lambda v: isinstance(v, str) or v is None).all():
            if out[c].map(lambda v: isinstance(v, (int, float, np.number)) or v is None).all():
                out[c] = pd.to_numeric(out[c])
            else:
                out[c] = out[c].map(lambda v: v if isinstance(v, str) else json.dumps(v, default=_jsonable))
    # the object columns left hold text and None only: utf8, also when every value is None
    fastparquet.write(str(path), out, compression="SNAPPY", write_index=False, object_encoding="utf8")


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)
