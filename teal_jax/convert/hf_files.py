"""Reading HF checkpoint directories: JSON files (config.json, preprocessor_config.json, adapter_config.json) with
errors that name the file, and lazy access to safetensors weights (one file or a sharded index; never pickle). Shared
by every importer in ``teal_jax/convert/``."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def read_json(path: str, *, what: str, required: bool = True) -> dict[str, Any] | None:
    """The JSON object in ``path``; a missing file is FileNotFoundError saying ``what`` was expected (or None when
    not ``required``), a malformed one a ValueError naming the file."""
    if not os.path.isfile(path):
        if not required:
            return None
        raise FileNotFoundError(f"{path}: not found (expected {what})")
    try:
        with open(path) as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_config(hf_dir: str) -> dict[str, Any]:
    """``<hf_dir>/config.json`` of a transformers checkpoint directory."""
    return read_json(os.path.join(hf_dir, "config.json"), what="a transformers checkpoint directory")


class SafetensorsDir:
    """Lazy access to the tensors of one or several safetensors files."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        self.hf_dir = hf_dir
        index = os.path.join(hf_dir, "model.safetensors.index.json")
        single = os.path.join(hf_dir, "model.safetensors")
        if os.path.isfile(index):
            weight_map = read_json(index, what="a safetensors index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: no 'weight_map' (expected a safetensors index)")
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(single):
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json "
                                    "(pickled .bin checkpoints are not read; convert them to safetensors)")
        self.where: dict[str, str] = {}
        self.handles = {}
        for name in files:
            path = os.path.join(hf_dir, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: listed in the index but missing")
            # 'flax' reads bf16 too (numpy has no bfloat16); values are converted to numpy below.
            handle = safe_open(path, framework="flax")
            self.handles[path] = handle
            for key in handle.keys():
                self.where[key] = path

    def get(self, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        if key not in self.where:
            raise KeyError(f"tensor {key!r} is missing from the checkpoint in {self.hf_dir}")
        arr = np.asarray(self.handles[self.where[key]].get_tensor(key)).astype(dtype)
        if arr.shape != tuple(shape):
            raise ValueError(f"tensor {key!r} in {self.where[key]} has shape {arr.shape}, expected {tuple(shape)}")
        return arr

    def has(self, key: str) -> bool:
        return key in self.where
