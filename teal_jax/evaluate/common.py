"""What every evaluation module shares: atomic JSON writes. (The one cache of jitted forward passes is
:func:`teal_jax.models.forward.jitted_apply`.)"""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str, value: Any) -> str:
    """Writes ``value`` as indented JSON through a temporary file and a rename (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)
    return path
