"""The FID Inception-v3 weights: torch-fidelity's published ``.pth`` -> safetensors (once) -> Flax params.

The weights FID is defined on are TensorFlow's Inception graph of 2015-12-05; torch-fidelity publishes them converted
to a torch state dict, ``weights-inception-2015-12-05-6726825d.pth`` (:data:`WEIGHTS_URL`, ~95 MB; the name's hex
is the start of the file's sha256, checked here). Convert it once:

    python -m teal_jax.convert.inception --pth=weights-inception-2015-12-05-6726825d.pth \\
        --out=inception_fid.safetensors

That step alone reads pickle (``torch.load(weights_only=True)``, which only rebuilds tensors); the safetensors file
keeps torch-fidelity's names and layouts (``Mixed_6b.branch7x7_2.conv.weight`` [O, I, kh, kw], ``bn.running_mean``,
``fc.weight`` [1008, 2048]; ``num_batches_tracked`` dropped), plus metadata (format, width, source file and its
sha256). :func:`load_inception` reads only safetensors and maps the layout onto
:class:`teal_jax.models.inception.InceptionV3FID`:

  <name>.conv.weight [O, I, kh, kw]  -> <name>/conv/kernel [kh, kw, I, O]   (transpose(2, 3, 1, 0))
  <name>.bn.{weight, bias, running_mean, running_var} -> <name>/bn/{scale, bias, mean, var}
  fc.weight [1008, 2048], fc.bias    -> fc/kernel [2048, 1008] (transposed), fc/bias

Every key and shape is checked against the module (``width`` from the metadata, else from the first conv's output
channels), so a truncated or foreign file is an error naming the file and the tensor.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from teal_jax.models.inception import InceptionV3FID, channels

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
FORMAT = "torch_fidelity_inception_v3"
_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_BN_BACK = {v: k for k, v in _BN.items()}


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def torch_name(path: tuple[str, ...]) -> str:
    """Our parameter path -> torch-fidelity's state-dict key (``('fc', 'kernel')`` -> ``'fc.weight'``)."""
    *mods, leaf = path
    if mods[-1] == "bn":
        return ".".join([*mods, _BN_BACK[leaf]])
    return ".".join([*mods, "weight" if leaf == "kernel" else leaf])


def _to_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value


def _from_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    return value


def param_shapes(width: float = 1.0) -> dict[tuple[str, ...], tuple[int, ...]]:
    """``{our path: shape}`` of :class:`InceptionV3FID` at ``width`` (shapes only; traced once per width)."""
    return dict(_param_shapes(float(width)))


@functools.lru_cache(maxsize=8)
def _param_shapes(width: float) -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
    import jax
    import jax.numpy as jnp

    # tracing the init of ~100 convolutions takes seconds on a CPU: done once per width
    shapes = jax.eval_shape(InceptionV3FID(width=width).init, jax.random.key(0), jnp.zeros((1, 75, 75, 3), jnp.uint8))
    return tuple((k, tuple(v.shape)) for k, v in _flat(shapes["params"]).items())


def params_from_torch_layout(tensors: Mapping[str, np.ndarray], width: float = 1.0, *,
                             source: str = "state dict") -> dict[str, Any]:
    """torch-fidelity-named float arrays -> the Flax params tree of ``InceptionV3FID(width)``. Missing, unexpected
    (besides ``num_batches_tracked``) or mis-shaped tensors are a ValueError naming ``source`` and the keys."""
    want = param_shapes(width)
    by_name = {torch_name(p): p for p in want}
    given = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(by_name) - set(given))
    unexpected = sorted(set(given) - set(by_name))
    if missing or unexpected:
        raise ValueError(f"{source}: not torch-fidelity's Inception-v3 (width {width}): missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    params: dict[str, Any] = {}
    for name, path in by_name.items():
        value = _from_torch(path, np.asarray(given[name], np.float32))
        if value.shape != want[path]:
            raise ValueError(f"{source}: {name} has shape {tuple(np.asarray(given[name]).shape)}, expected the torch "
                             f"layout of {want[path]} (width {width})")
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return params


def torch_layout(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our params tree -> torch-fidelity's names and layouts (float32 numpy), the inverse of
    :func:`params_from_torch_layout`."""
    return {torch_name(p): np.ascontiguousarray(_to_torch(p, np.asarray(v, np.float32)))
            for p, v in _flat(params).items()}


def file_sha256(path: str) -> str:
    """The sha256 hex digest of a file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _width_of(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str], source: str) -> float:
    if "width" in metadata:
        try:
            return float(metadata["width"])
        except ValueError as e:
            raise ValueError(f"{source}: metadata width={metadata['width']!r} is not a number") from e
    first = tensors.get("Conv2d_1a_3x3.conv.weight")
    if first is None:
        raise ValueError(f"{source}: no tensor Conv2d_1a_3x3.conv.weight: not an Inception-v3 FID weights file")
    width = first.shape[0] / 32
    if channels(32, width) != first.shape[0]:
        raise ValueError(f"{source}: cannot infer the width from Conv2d_1a_3x3.conv.weight {first.shape}")
    return width


def save_inception(params: Mapping[str, Any], path: str, *, width: float = 1.0,
                   metadata: Mapping[str, str] | None = None) -> str:
    """Writes ``params`` (of ``InceptionV3FID(width)``) as a safetensors file in torch-fidelity's layout."""
    from safetensors.numpy import save_file

    meta = {"format": FORMAT, "width": repr(float(width)), **(metadata or {})}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(torch_layout(params), path, metadata=meta)
    return path


def convert_pth(pth: str, out: str) -> dict[str, str]:
    """torch-fidelity's ``.pth`` state dict -> safetensors at ``out``; returns the metadata written. A file named
    like the published one (``...-<hex>.pth``) must have a sha256 starting with that hex (a partial download or
    another file is refused)."""
    import torch

    if not os.path.isfile(pth):
        raise FileNotFoundError(f"{pth}: no such file (download {WEIGHTS_URL})")
    digest = file_sha256(pth)
    m = re.search(r"-([0-9a-f]{8,64})\.pth$", os.path.basename(pth))
    if m and not digest.startswith(m.group(1)):
        raise ValueError(f"{pth}: sha256 {digest[:16]}... does not start with the {m.group(1)} its name promises "
                         "(a partial download or another file)")
    state = torch.load(pth, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{pth}: expected a state dict of tensors (torch-fidelity's weights file)")
    tensors = {k: v.detach().to(torch.float32).numpy() for k, v in state.items()
               if not k.endswith("num_batches_tracked")}
    width = _width_of(tensors, {}, pth)
    params = params_from_torch_layout(tensors, width, source=pth)  # checks names and shapes before writing
    meta = {"source": os.path.basename(pth), "source_sha256": digest}
    save_inception(params, out, width=width, metadata=meta)
    return {"format": FORMAT, "width": repr(float(width)), **meta}


def load_inception(path: str) -> tuple[InceptionV3FID, dict[str, Any], dict[str, str]]:
    """A safetensors file written by :func:`convert_pth` / :func:`save_inception` (or any safetensors copy of
    torch-fidelity's state dict) -> ``(module, params, metadata)``; ``module.apply({'params': params}, images)``."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such Inception weights file; convert torch-fidelity's {WEIGHTS_FILE} "
                                "with `python -m teal_jax.convert.inception --pth=... --out=...` (docs/evaluation.md)")
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    if metadata.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{path}: metadata format={metadata['format']!r}, expected {FORMAT!r}")
    width = _width_of(tensors, metadata, path)
    params = params_from_torch_layout(tensors, width, source=path)
    return InceptionV3FID(width=width), params, metadata


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pth", required=True, help=f"torch-fidelity's {WEIGHTS_FILE} ({WEIGHTS_URL})")
    p.add_argument("--out", required=True, help="the safetensors file to write")
    args = p.parse_args(argv)
    meta = convert_pth(args.pth, args.out)
    print(f"wrote {args.out} (width {meta['width']}, from {meta['source']}, sha256 {meta['source_sha256'][:16]}...)")


if __name__ == "__main__":
    main()
