"""Metric writing (stdout progress lines, JSONL, TensorBoard via tensorboardX: no TensorFlow) and MFU.

Both files live in the workdir, on any filesystem (:mod:`teal_jax.paths`). A workdir with a scheme (``gs://``) cannot
be appended to, so process 0 writes ``metrics.jsonl`` and the TensorBoard event files into a local staging folder
(the existing ``metrics.jsonl`` downloaded first) and uploads them whole every ``upload_every_s`` seconds and at close.

MFU (model FLOPs utilisation) = achieved model FLOP/s / peak FLOP/s
    = (examples/s * training FLOPs per example) / (number of devices * peak FLOP/s per device).
Training FLOPs per example come from the objective (for an LM: tokens * (6 * matmul params + attention term), see
``TransformerConfig.flops_per_token``). Peak numbers are dense bf16 from vendor data sheets.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

from teal_jax import paths

# Dense bf16 peak FLOP/s per device (no sparsity), keyed by a substring of jax.Device.device_kind.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v6": 918e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
}


def peak_flops_per_device(override: float = 0.0) -> float | None:
    if override:
        return float(override)
    kind = jax.devices()[0].device_kind
    for key, value in PEAK_FLOPS.items():
        if key.lower() in kind.lower():
            return value
    return None  # CPUs and unknown chips: MFU is not reported


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _scalar(v: Any) -> float:
    return float(np.asarray(v))


def _drop_partial_line(path: str) -> None:
    """Truncates ``path`` after its last newline (one JSON object a line; a kill can cut the last one short)."""
    if not os.path.isfile(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class MetricWriter:
    """Writes metrics on process 0 only (other processes get a no-op writer)."""

    def __init__(self, workdir: str, *, enabled: bool | None = None, tensorboard: bool = True,
                 upload_every_s: float = 30.0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        self._remote = None  # (remote workdir, local staging folder) when the workdir has a scheme
        self._upload_every_s, self._uploaded_at = upload_every_s, time.time()
        if not self.enabled:
            return
        workdir = paths.resolve(workdir)
        paths.makedirs(workdir)
        local = workdir
        if paths.is_remote(workdir):
            local = tempfile.mkdtemp(prefix="teal_jax_metrics_")
            self._remote = (workdir, local)
            if paths.isfile(paths.join(workdir, "metrics.jsonl")):  # resuming: continue the run's file
                with open(os.path.join(local, "metrics.jsonl"), "wb") as f:
                    f.write(paths.read_bytes(paths.join(workdir, "metrics.jsonl")))
        path = os.path.join(local, "metrics.jsonl")
        _drop_partial_line(path)  # a process killed mid-write leaves half a line: never append after it
        self._jsonl = open(path, "a")  # noqa: SIM115 (closed in close())
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(local, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> dict[str, float]:
        values = {k: _scalar(v) for k, v in metrics.items()}
        if not self.enabled:
            return values
        self._jsonl.write(json.dumps({"step": int(step), "split": split, "time": time.time(), **values}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", v, int(step))
            self._tb.flush()
        if self._remote is not None and time.time() - self._uploaded_at >= self._upload_every_s:
            self.upload()
        return values

    def upload(self) -> None:
        """Copies the staged files to a non-local workdir (whole files: an object store has no append)."""
        if self._remote is None:
            return
        remote, local = self._remote
        for rel in paths.walk_files(local):
            paths.Path(paths.join(remote, rel)).parent.mkdir(parents=True, exist_ok=True)
            paths.Path(paths.join(remote, rel)).write_bytes(paths.read_bytes(os.path.join(local, rel)))
        self._uploaded_at = time.time()

    def print(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True, file=sys.stdout)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._remote is not None:
            self.upload()
            shutil.rmtree(self._remote[1], ignore_errors=True)
            self._remote = None


def progress_line(step: int, total: int, values: dict[str, float], rates: dict[str, float], eta_s: float) -> str:
    parts = [f"step {step}/{total} ({100.0 * step / total:5.1f}%)"]
    for key in ("loss", "grad_norm/model", "lr/model"):
        if key in values:
            parts.append(f"{key.split('/')[0]} {values[key]:.4g}")
    for key, value in values.items():
        if key not in ("loss", "grad_norm/model", "lr/model", "finite") and "/" not in key:
            parts.append(f"{key} {value:.4g}")
    if "tokens_per_s" in rates:
        parts.append(f"{rates['tokens_per_s']:.4g} tok/s")
    if "mfu" in rates:
        parts.append(f"mfu {100 * rates['mfu']:.2f}%")
    parts.append(f"eta {format_duration(eta_s)}")
    return " | ".join(parts)
