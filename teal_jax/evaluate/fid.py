"""Fréchet Inception Distance of text-to-image samples: the ``fid`` evaluator and its parts.

FID (Heusel et al. 2017) = ``|mu_r - mu_g|^2 + tr(S_r) + tr(S_g) - 2 tr((S_r S_g)^{1/2})`` over the 2,048-d
``pool3`` features of the TF Inception-v3 graph (:class:`teal_jax.models.inception.InceptionV3FID`, weights through
:func:`teal_jax.convert.inception.load_inception`, torch-fidelity's published weights converted once to safetensors).
Features are computed in JAX (jitted, fixed-size batches, the last one padded); mean and covariance (``ddof=1``, as
numpy's ``cov`` in torch-fidelity and pytorch-fid) and the distance in float64 numpy. The matrix square root's trace
is taken as the eigenvalues of ``S_r^{1/2} S_g S_r^{1/2}``, which is symmetric positive semi-definite, so no complex
parts or ``sqrtm`` error estimates are involved (``tests/test_fid.py`` checks it against scipy's ``sqrtm`` and
torch-fidelity's eigenvalue formula).

FID is biased upward at small N (the covariance estimates are noisy; the bias shrinks roughly as 1/N): compare runs
only at the same number of images, and quote that number with the figure (the evaluator prints and returns it).
The field's COCO figures use 10k-30k images; 1,000 is a trend line, not a comparable number.

The evaluator (``config.evals.<name> = {kind: 'fid', inception_weights: PATH, ...}``): the first ``num_images``
records of the eval split of the run's ``config.data.image_source`` give reference images (RGB, centre-cropped and
resized to the generated size, as the token datasets prepare training images) and captions (the first one of
several); the model generates one image per caption with the run's sampling settings (``config.sample``: seed,
temperature, top_p, top_k, as the ``text_to_image`` evaluator samples). Reference statistics are cached in
``<workdir>/eval/<name>/reference_<digest>.npz`` (keyed by weights, source, count and size). The first
``save_samples`` generated images and their captions are written to the step's output dir. With
``precision_recall`` (default on) the same features also give improved precision and recall (Kynkäänniemi et al.
2019, k = ``prc_neighborhood`` = 3, torch-fidelity's convention): how many generated images look real, and how much
of the real set the generated images cover.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import numpy as np

from teal_jax.convert.inception import file_sha256
from teal_jax.evaluate.evaluators import Evaluator, read_result

NOTE = "FID is biased upward at small N: compare runs only at equal n (the field's COCO figures use 10k-30k images)"


# ---- statistics and the distance ---------------------------------------------------------------------------------
def statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """``[N, D]`` features -> (mean [D], covariance [D, D] with ``ddof=1``), float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FID statistics need [N >= 2, D] features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet distance of two Gaussians (float64): ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})``, the
    trace of the square root from the eigenvalues of the symmetric ``S1^{1/2} S2 S1^{1/2}``."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape} "
                         "do not describe two Gaussians of one dimension")
    root = _psd_sqrt(s1)
    inner = root @ s2 @ root
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def fid_from_features(real, generated) -> float:
    """FID between two ``[N, D]`` feature sets."""
    return frechet_distance(*statistics(real), *statistics(generated))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(d2, 0.0, None))


def precision_recall(real, generated, *, k: int = 3, chunk: int = 2048) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``[N, D]`` features, torch-fidelity's
    convention: a sample's ball reaches its ``k``-th nearest neighbour in its own set; precision = the share of
    generated samples inside some real ball, recall = the share of real samples inside some generated ball (float64,
    ``chunk`` rows of distances at a time). Like FID it depends on N: compare at equal N."""
    r, g = np.asarray(real, np.float64), np.asarray(generated, np.float64)
    if r.ndim != 2 or g.ndim != 2 or r.shape[1] != g.shape[1] or min(len(r), len(g)) <= k:
        raise ValueError(f"precision_recall: need [N > k={k}, D] features of one D, got {r.shape} and {g.shape}")

    def radii(x):
        return np.concatenate([np.partition(_distances(x[s : s + chunk], x), k, axis=1)[:, k]
                               for s in range(0, len(x), chunk)])

    def covered(a, b, rb):
        return np.concatenate([(_distances(a[s : s + chunk], b) <= rb[None, :]).any(axis=1)
                               for s in range(0, len(a), chunk)])

    precision = float(covered(g, r, radii(r)).mean())
    recall = float(covered(r, g, radii(g)).mean())
    return {"precision": precision, "recall": recall,
            "f_score": 2 * precision * recall / max(1e-5, precision + recall)}


# ---- features ----------------------------------------------------------------------------------------------------
class InceptionFeatures:
    """The FID Inception network from a safetensors weights file: uint8 images -> float32 ``[N, 2048]`` pool3
    features, ``batch_size`` images per jitted call (one compilation: the last batch is padded)."""

    def __init__(self, weights: str, *, batch_size: int = 50):
        from teal_jax.convert.inception import load_inception
        from teal_jax.models.forward import jitted_apply

        if batch_size < 1:
            raise ValueError(f"InceptionFeatures: batch_size={batch_size} must be >= 1")
        self.path = weights
        self.module, self.params, self.metadata = load_inception(weights)
        self.batch_size = int(batch_size)
        self._apply = jitted_apply(self.module)

    def __call__(self, images) -> np.ndarray:
        """uint8 ``[N, H, W]`` or ``[N, H, W, 1|3|4]`` (gray repeated, RGBA composited over black) -> ``[N, D]``."""
        from teal_jax.media.image import mix_channels

        x = np.asarray(images)
        if x.dtype != np.uint8:
            raise ValueError(f"FID features: images must be uint8 (as saved), got {x.dtype}")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or x.shape[0] == 0:
            raise ValueError(f"FID features: expected uint8 [N > 0, H, W, 1|3|4] images, got shape {x.shape}")
        if x.shape[-1] != 3:
            x = np.round(mix_channels(x.astype(np.float64), 3, scale=255.0)).astype(np.uint8)
        b = self.batch_size
        out = []
        for s in range(0, len(x), b):
            chunk = x[s : s + b]
            if len(chunk) < b:
                chunk = np.concatenate([chunk, np.zeros((b - len(chunk), *chunk.shape[1:]), np.uint8)])
            out.append(np.asarray(self._apply(self.params, chunk)["pool3"])[: len(x) - s])
        return np.concatenate(out)


# ---- reference data ----------------------------------------------------------------------------------------------
def eval_split(run_config, size: int, data_dir: str = "") -> tuple[dict[str, Any], Any]:
    """``(source dict, random-access eval split)`` of the run's ``data.image_source`` (``data_dir`` overrides the
    source's; a digits source defaults to the image tokenizer run's data dir)."""
    from teal_jax.data.teal import sources as sources_lib
    from teal_jax.data.teal.config import source_dict

    data = (run_config.get("data") or {}) if run_config is not None else {}
    if not data.get("image_source"):
        raise ValueError("fid: the run config has no data.image_source (the eval split gives reference images)")
    src = source_dict(data["image_source"], "image")
    d = data_dir or sources_lib.default_data_dir(data.get("image_tokenizer") or None, "digits", None)
    return src, sources_lib.open_sources(src, "image", data_dir=d, image_size=size)["test"]


def reference_set(src: dict[str, Any], split, n: int, size: int) -> tuple[np.ndarray, list[str]]:
    """The first ``n`` records of ``split``: (uint8 ``[n, size, size, 3]`` images, RGB, centre-cropped and resized
    as the token datasets prepare training images; their first captions)."""
    from teal_jax.data.teal import sources as sources_lib
    from teal_jax.media.image import center_crop_resize, convert_channels

    images, captions = np.zeros((n, size, size, 3), np.uint8), []
    for i in range(n):
        rec = split[i]
        img = sources_lib.field(rec, src["image_key"], "config.data.image_source.image_key")
        img = convert_channels(np.asarray(img).astype(np.uint8), 3, name=f"eval record {i}")
        images[i] = center_crop_resize(img, size)
        text = sources_lib.record_meta(rec, src, "image")[1].split("\n")[0].strip()
        if not text:
            raise ValueError(f"fid: eval record {i} of config.data.image_source has no caption (set text_key)")
        captions.append(text)
    return images, captions


# ---- the evaluator -----------------------------------------------------------------------------------------------
class FidEvaluator(Evaluator):
    """FID of images generated from the eval split's captions against that split's images (see the module
    docstring). Fields: ``inception_weights`` (the converted safetensors file, required to run), ``num_images``
    (0 = the whole split), ``batch_size`` (Inception images per call), ``guidance_scale`` (> 0 sets it; 0 = the
    ``text_to_image``-kind evaluator named by ``guidance_from``, else the run's ``config.sample.guidance_scale``,
    else 1), ``max_batch`` (sampler batch), ``data_dir`` (the image source's, when not in its config),
    ``image_size`` (0 = the generated size), ``save_samples``, ``precision_recall`` (also the improved
    precision/recall of the same features, ``prc_neighborhood`` = k)."""

    KIND = "fid"
    FIELDS = {"inception_weights": "", "num_images": 1000, "batch_size": 50, "guidance_scale": 0.0,
              "guidance_from": "", "max_batch": 0, "data_dir": "", "image_size": 0, "save_samples": 16,
              "precision_recall": True, "prc_neighborhood": 3}
    DEPENDS = ("guidance_from",)

    def guidance(self, workdir: str, step: int) -> float:
        if self.guidance_scale > 0:
            return float(self.guidance_scale)
        if self.guidance_from:
            return float(read_result(workdir, self.guidance_from, step)["guidance"])
        sample = (self.run_config.get("sample") if self.run_config is not None else None) or {}
        return float(sample.get("guidance_scale", 1.0))

    def reference_statistics(self, extractor: InceptionFeatures, workdir: str, size: int) -> dict[str, Any]:
        """Captions, features, mean and covariance of the reference images; cached in
        ``<workdir>/eval/<name>/reference_<digest>.npz`` (keyed by weights, source, count and size), so a later
        evaluation reads no image."""
        src, split = eval_split(self.run_config, size, self.data_dir)
        n = min(int(self.num_images), len(split)) if self.num_images > 0 else len(split)
        if n < 2:
            raise ValueError(f"fid: the eval split of config.data.image_source has {len(split)} records; FID needs "
                             ">= 2")
        identity = {**{k: v for k, v in src.items() if k != "data_dir"}, "eval_records": len(split)}
        key = json.dumps({"weights": file_sha256(extractor.path), "source": identity, "n": n, "size": size},
                         sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = os.path.join(workdir, "eval", self.name, f"reference_{digest}.npz")
        if os.path.exists(path):
            with np.load(path) as z:
                return {"captions": [str(c) for c in z["captions"]], **{k: z[k] for k in ("features", "mu", "sigma")}}
        images, captions = reference_set(src, split, n, size)
        features = extractor(images)
        mu, sigma = statistics(features)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}.npz"
        np.savez(tmp, captions=np.array(captions), features=features, mu=mu, sigma=sigma)
        os.replace(tmp, path)
        return {"captions": captions, "features": features, "mu": mu, "sigma": sigma}

    def run(self, model, *, workdir, step):
        from teal_jax.evaluate.scoring import write_tsv
        from teal_jax.evaluate.teal_evaluators import _max_batch, _sampling

        where = f"config.evals.{self.name}"
        if not self.inception_weights:
            raise ValueError(f"{where}.inception_weights is empty: convert torch-fidelity's Inception weights once "
                             "(python -m teal_jax.convert.inception --pth=... --out=...) and name the safetensors "
                             "file (docs/evaluation.md)")
        t0 = time.time()
        extractor = InceptionFeatures(self.inception_weights, batch_size=self.batch_size)
        size = int(self.image_size or model.image_size)
        ref = self.reference_statistics(extractor, workdir, size)
        captions = ref["captions"]
        scale = self.guidance(workdir, step)
        seed, gen = _sampling(self.run_config)
        print(f"[eval {self.name}] generating {len(captions)} images from eval captions (guidance {scale:g})",
              flush=True)
        t1 = time.time()
        with _max_batch(model, self.max_batch):
            images = np.asarray(model.generate_image(captions, guidance_scale=scale, seed=seed, **gen))
        t2 = time.time()
        if images.shape[1:3] != (size, size):
            from teal_jax.media.image import center_crop_resize

            images = np.stack([center_crop_resize(im if im.ndim == 3 else im[..., None], size) for im in images])
        features = extractor(images)
        mu, sigma = statistics(features)
        fid = frechet_distance(ref["mu"], ref["sigma"], mu, sigma)
        prc = {}
        if self.precision_recall and len(features) > self.prc_neighborhood:  # needs more than k samples a set
            prc = precision_recall(ref["features"], features, k=self.prc_neighborhood)
        out_dir = self.output_dir(workdir, step)
        keep = min(self.save_samples, len(images))
        if keep:
            os.makedirs(out_dir, exist_ok=True)
            model.save_png(images[:keep], [os.path.join(out_dir, f"fid_{i:03d}.png") for i in range(keep)])
            write_tsv(os.path.join(out_dir, "fid_samples.tsv"), ("index", "caption"), list(enumerate(captions[:keep])))
        n = len(captions)
        print(f"[eval {self.name}] FID {fid:.3f} over {n} generated vs {n} reference images at {size}px ({NOTE})",
              flush=True)
        return {"fid": fid, "n": n, **prc, "guidance": scale, "image_size": size, "reference_s": round(t1 - t0, 1),
                "generation_s": round(t2 - t1, 1), "features_s": round(time.time() - t2, 1),
                "inception": extractor.metadata.get("source", os.path.basename(self.inception_weights)),
                "note": NOTE}
