"""Shared by the bench scripts: write a results JSON file."""

import json
from pathlib import Path
from typing import Any, Dict

from diffsynth_l2p.atomic import atomic_open


def write_results(path: Path, payload: Dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` as indented JSON (atomically, creating the folder) and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as handle:
        json.dump(payload, handle, indent=1)
    print(f"Wrote {path}")
