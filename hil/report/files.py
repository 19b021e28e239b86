"""Writing a report's JSON so that a kill never leaves a half-written file behind."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from hil.runstore.journal import to_jsonable


def write_json(path, obj) -> Path:
    """`obj` (numpy values allowed) as indented, standard JSON at `path` (NaN and ±inf become
    null, which every JSON reader accepts), written to a temporary file and renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(to_jsonable(obj, path.name)), indent=1, allow_nan=False))
    os.replace(tmp, path)
    return path


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read_json(path):
    """The JSON object at `path`, or None when it is missing or not complete JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
