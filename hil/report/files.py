"""Writing a report's JSON so that a kill never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
from pathlib import Path

from hil.runstore.journal import to_jsonable


def write_json(path, obj) -> Path:
    """`obj` (numpy values allowed) as indented JSON at `path`, written to a temporary file and
    renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(obj, path.name), indent=1))
    os.replace(tmp, path)
    return path


def read_json(path):
    """The JSON object at `path`, or None when it is missing or not complete JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
