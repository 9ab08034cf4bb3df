"""A TensorFlow-free copy of a prepared tfds dataset whose features need TensorFlow to be described.

tfds' ``features.Audio`` calls TensorFlow in its constructor (tfds 4.9.10), and tfds builds the features of a
prepared dataset from its ``features.json`` also when only its files are read (``read_only_builder``), so opening a
prepared ``librispeech`` without TensorFlow fails before a record is read. An ``Audio`` feature stored without
``lazy_decode`` holds the decoded samples, serialised exactly as a ``Tensor`` of the same shape and dtype; this module
writes, once, a copy of the dataset whose ``features.json`` describes each such feature as that ``Tensor`` and whose
shards are hard links to the original ones (a copy where the file system cannot link): the records are not read or
rewritten. The copy is an ordinary prepared dataset under a new name, read with tfds' files-only reader::

    python -m teal_jax.data.tfds_decoded --data_dir=~/tensorflow_datasets --name=librispeech \\
        --out_name=librispeech_decoded
    # then: --config.data.audio_source.name=librispeech_decoded (same data_dir)

``name`` may carry a config and a version (``librispeech/default/2.1.2``); without a version the newest prepared one
is taken. An Audio feature stored as encoded bytes (``lazy_decode``) cannot be described without decoding: that is an
error naming the feature. The sample rate each Audio feature declared is kept in the copy's description.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

AUDIO_CLASS = "tensorflow_datasets.core.features.audio_feature.Audio"
TENSOR_CLASS = "tensorflow_datasets.core.features.tensor_feature.Tensor"


def _version_key(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (-1,)


def find_prepared(data_dir: str, name: str) -> str:
    """The directory of a prepared dataset ``name`` ('ds', 'ds/config', 'ds/config/1.2.3' or 'ds/1.2.3')."""
    root = os.path.join(os.path.expanduser(data_dir), *name.split("/"))
    if os.path.isfile(os.path.join(root, "dataset_info.json")):
        return root
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no prepared tfds dataset {name!r} under data_dir={data_dir}: {root} does not exist")
    versions = [v for v in os.listdir(root) if os.path.isfile(os.path.join(root, v, "dataset_info.json"))]
    if not versions:
        raise FileNotFoundError(f"{root}: no prepared version (no <version>/dataset_info.json) of tfds dataset "
                                f"{name!r}; prepare it first (tfds build or builder.download_and_prepare)")
    return os.path.join(root, max(versions, key=_version_key))


def decode_features(node: Any, where: str, rates: dict[str, int]) -> Any:
    """features.json content with every non-lazy Audio feature described as the Tensor it is stored as."""
    if isinstance(node, dict):
        if node.get("pythonClassName") == AUDIO_CLASS:
            audio = node.get("audio", {})
            if audio.get("lazyDecode"):
                raise ValueError(f"{where}: the Audio feature is stored encoded (lazy_decode); it cannot be described "
                                 "as a Tensor without decoding every record")
            rates[where] = int(audio.get("sampleRate", 0) or 0)
            return {"pythonClassName": TENSOR_CLASS, "tensor": {
                "shape": audio.get("shape", {}), "dtype": audio.get("dtype", "int64"),
                "encoding": audio.get("encoding", "none")}}
        return {k: decode_features(v, f"{where}/{k}" if k not in ("features", "featuresDict", "feature") else where,
                                   rates) for k, v in node.items()}
    if isinstance(node, list):
        return [decode_features(v, where, rates) for v in node]
    return node


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_decoded_copy(data_dir: str, name: str, out_name: str, out_data_dir: str | None = None) -> str:
    """Writes the TF-free copy of prepared dataset ``name`` as ``out_name``; returns its directory.

    The copy is built in a temporary sibling directory and renamed into place, so an interrupted run leaves no
    half-written dataset; an existing copy is an error (remove it to rewrite it).
    """
    src = find_prepared(data_dir, name)
    base = name.split("/")[0]
    if not out_name or "/" in out_name or out_name == base:
        raise ValueError(f"out_name={out_name!r}: give a new dataset name without '/' (not {base!r} itself)")
    with open(os.path.join(src, "dataset_info.json")) as f:
        info = json.load(f)
    try:
        with open(os.path.join(src, "features.json")) as f:
            features = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{src}/features.json: missing; is {src} a prepared tfds dataset?") from None
    rates: dict[str, int] = {}
    features = decode_features(features, "features", rates)
    if not rates:
        raise ValueError(f"{src}/features.json: no Audio feature; the dataset can be read as it is")
    # The copy keeps the source's config/version layout under the new name.
    rel = os.path.relpath(src, os.path.join(os.path.expanduser(data_dir), base))
    dst = os.path.join(os.path.expanduser(out_data_dir or data_dir), out_name, rel)
    if os.path.exists(dst):
        raise FileExistsError(f"{dst} already exists; remove it to write the copy again")
    tmp = f"{dst}.incomplete"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    prefix = f"{info.get('name', base)}-"
    for fname in sorted(os.listdir(src)):
        if fname in ("dataset_info.json", "features.json") or os.path.isdir(os.path.join(src, fname)):
            continue
        new = f"{out_name}-{fname[len(prefix):]}" if fname.startswith(prefix) else fname  # shard names carry the name
        _link_or_copy(os.path.join(src, fname), os.path.join(tmp, new))
    note = ", ".join(f"{k.removeprefix('features/')} at {r} Hz" for k, r in sorted(rates.items()))
    info.update(name=out_name, description=(f"{info.get('description', '')}\n\nTensorFlow-free copy of {name} "
                                            f"(teal_jax.data.tfds_decoded): Audio stored as decoded Tensor: {note}."))
    info.pop("moduleName", None)  # no builder code: the files-only reader opens it
    with open(os.path.join(tmp, "dataset_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    with open(os.path.join(tmp, "features.json"), "w") as f:
        json.dump(features, f, indent=4)
    os.replace(tmp, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="tfds data dir holding the prepared dataset")
    p.add_argument("--name", required=True, help="dataset[/config][/version], e.g. librispeech")
    p.add_argument("--out_name", required=True, help="name of the copy, e.g. librispeech_decoded")
    p.add_argument("--out_data_dir", default=None, help="where to write the copy (default: --data_dir)")
    a = p.parse_args(argv)
    try:
        dst = write_decoded_copy(a.data_dir, a.name, a.out_name, a.out_data_dir)
    except (OSError, ValueError) as e:
        print(f"tfds_decoded: {e}", file=sys.stderr)
        return 2
    print(f"wrote {dst}; read it as tfds dataset {a.out_name!r} (data_dir={a.out_data_dir or a.data_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
