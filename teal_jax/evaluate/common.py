"""What every evaluation module shares: atomic JSON writes, and opening the run's own tfds source when an evaluator
is not given its data. (The one cache of jitted forward passes is :func:`teal_jax.models.forward.jitted_apply`.)"""

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


def open_run_source(run_config, modality: str, split: str, *, empty_field: str, instead: str):
    """The run's ``config.data.<modality>_source`` opened at ``split`` -> ``(source dict, random-access records)``,
    for an evaluator whose ``empty_field`` (e.g. ``config.evals.wer.data``) names no data of its own. A source that
    is not a tfds dataset is a ValueError naming that field and saying what to set ``instead``."""
    from teal_jax.data.teal import sources
    from teal_jax.data.teal.config import source_dict

    data = (run_config or {}).get("data") or {}
    src = source_dict(data.get(f"{modality}_source"), modality)
    if src["kind"] != "tfds":
        raise ValueError(f"{empty_field} is empty and the run's data.{modality}_source is {src['kind']!r}, not a tfds "
                         f"dataset: {instead} (docs/evaluation.md)")
    src["eval_split"] = split
    return src, sources.open_sources(src, modality)["test"]
