"""FID: the Inception-v3 FID network against torch-fidelity's module on random weights (through the converter and
safetensors), its TF1 resize, the Fréchet distance against scipy and torch-fidelity, and the ``fid`` evaluator run
through the registry on a tiny fixture (its figure equals a direct computation).

Importing torch-fidelity without its package ``__init__``: torch-fidelity 0.4.0's ``__init__`` imports every feature
extractor and metric, and with them torchvision, which cannot be imported beside this venv's torch 2.13.0 CPU wheel
('operator torchvision::nms does not exist'); it is installed with ``pip install --no-deps`` (README, .ci/run).
The Inception module needs only torch and three small torch_fidelity modules (feature_extractor_base, helpers with
defaults and deprecations, interpolate_compat_tensorflow), so :func:`torch_fidelity_module` registers a bare
``torch_fidelity`` package (a module whose ``__path__`` is the installed package directory) in ``sys.modules`` for
the duration of the test module and imports the submodules from it. ``metric_fid`` also imports
``torch_fidelity.utils`` (which imports torchvision) for names its two statistics functions do not use; a bare
``torch_fidelity.utils`` stands in for it. Nothing is downloaded: the torch extractor is built with its random
initialisation (its weight loading patched out), then given random batch-norm affine parameters and running
statistics calibrated on a batch (so every layer's output is O(1) and the 2,048-d features are not ~0), and saved
as the ``.pth`` the converter reads, as it would read torch-fidelity's published file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import types
import unittest.mock
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.linalg

from teal_jax.convert import inception as CI
from teal_jax.evaluate import evaluators as EV
from teal_jax.evaluate import fid as F
from teal_jax.models.forward import jitted_apply
from teal_jax.models.inception import InceptionV3FID, resize_bilinear_tf1

torch = pytest.importorskip("torch")

FEATURE_RTOL = 2e-4  # max |ours - torch| relative to max |torch value| (measured 1.3e-5 features, 9.5e-6 logits)


@pytest.fixture(scope="module")
def tf():
    """torch-fidelity's inception, resize, FID and precision/recall modules, imported without the package
    __init__ (the module docstring says why); removed from sys.modules afterwards."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        pytest.skip("torch-fidelity is not installed: .venv/bin/pip install --no-deps torch-fidelity==0.4.0")
    where = list(spec.submodule_search_locations)
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in sys.modules if n == "torch_fidelity" or n.startswith("torch_fidelity.")]:
            mp.delitem(sys.modules, name)
        package = types.ModuleType("torch_fidelity")
        package.__path__ = where
        mp.setitem(sys.modules, "torch_fidelity", package)
        utils = types.ModuleType("torch_fidelity.utils")  # stands in for the torchvision-importing utils
        for n in ("get_cacheable_input_name", "cache_lookup_one_recompute_on_miss",
                  "extract_featuresdict_from_input_id_cached", "create_feature_extractor", "resolve_feature_extractor",
                  "resolve_feature_layer_for_metric"):
            setattr(utils, n, None)
        mp.setitem(sys.modules, "torch_fidelity.utils", utils)
        mods = types.SimpleNamespace(
            inception=importlib.import_module("torch_fidelity.feature_extractor_inceptionv3"),
            resize=importlib.import_module("torch_fidelity.interpolate_compat_tensorflow"),
            metric_fid=importlib.import_module("torch_fidelity.metric_fid"),
            metric_prc=importlib.import_module("torch_fidelity.metric_prc"))
        yield mods
        for name in [n for n in sys.modules if n.startswith("torch_fidelity.") and n != "torch_fidelity.utils"]:
            del sys.modules[name]  # imported here; the two stand-ins go when the monkeypatch context undoes them


def images_uint8(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB images (a low-resolution field upsampled, plus noise): not constant, not pure noise."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (n, 4, 4, 3))
    big = np.repeat(np.repeat(low, size // 4 + 1, axis=1), size // 4 + 1, axis=2)[:, :size, :size]
    return np.clip(big + rng.normal(0, 20, big.shape), 0, 255).astype(np.uint8)


def nchw(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def torch_net(tf, tmp_path_factory):
    """(torch extractor with random, calibrated weights, its .pth, our converted safetensors file)."""
    d = tmp_path_factory.mktemp("fid_torch")
    torch.manual_seed(0)
    torch.save({}, d / "empty.pth")
    cls = tf.inception.FeatureExtractorInceptionV3
    with unittest.mock.patch.object(cls, "load_state_dict", lambda self, state: None):  # keep the random init
        net = cls("inception-v3-compat", ["2048", "logits"], feature_extractor_weights_path=str(d / "empty.pth"))
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=g)
            m.momentum = None  # cumulative average: one training-mode batch sets the running statistics
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(nchw(images_uint8(2, 64, seed=9)))
    net.eval()
    pth = d / "weights-inception-random.pth"
    torch.save(net.state_dict(), pth)
    out = d / "inception_fid.safetensors"
    CI.convert_pth(str(pth), str(out))
    return net, pth, out


# ---- the network -------------------------------------------------------------------------------------------------
def test_tf1_resize_matches_torch_fidelity(tf):
    for h, w in ((64, 64), (37, 50)):  # up-sampling to 299, square and not
        x = images_uint8(2, max(h, w), seed=h)[:, :h, :w]
        ref = tf.resize.interpolate_bilinear_2d_like_tensorflow1x(nchw(x).float(), size=(299, 299),
                                                                  align_corners=False).numpy().transpose(0, 2, 3, 1)
        ours = np.asarray(resize_bilinear_tf1(jnp.asarray(x), 299))
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)  # measured: bit-identical on CPU
    x = images_uint8(1, 320, seed=3)  # down-sampling
    ref = tf.resize.interpolate_bilinear_2d_like_tensorflow1x(nchw(x).float(), size=(299, 299), align_corners=False)
    np.testing.assert_allclose(np.asarray(resize_bilinear_tf1(jnp.asarray(x), 299)),
                               ref.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-4)


def test_features_and_logits_match_torch_fidelity(torch_net):
    """64 x 64 uint8 images (resized inside both) through the converted weights: the 2,048-d pool3 features and the
    1,008 logits agree with torch-fidelity's extractor to FEATURE_RTOL of their scale (float32 both sides)."""
    net, _, path = torch_net
    module, params, meta = CI.load_inception(str(path))
    assert meta["format"] == CI.FORMAT and float(meta["width"]) == 1.0 and meta["source"].endswith(".pth")
    x = images_uint8(2, 64, seed=1)
    with torch.no_grad():
        ref_feat, ref_logits = (t.numpy() for t in net(nchw(x)))
    out = jax.jit(module.apply)({"params": params}, jnp.asarray(x))
    feat, logits = np.asarray(out["pool3"]), np.asarray(out["logits"])
    assert feat.shape == (2, 2048) and logits.shape == (2, 1008)
    assert ref_feat.std() > 0.05 and np.abs(ref_feat[0] - ref_feat[1]).max() > 0.05  # informative features
    assert np.abs(feat - ref_feat).max() <= FEATURE_RTOL * np.abs(ref_feat).max()
    assert np.abs(logits - ref_logits).max() <= FEATURE_RTOL * np.abs(ref_logits).max()


def test_converter_layout_round_trip_and_errors(torch_net, tmp_path):
    net, pth, path = torch_net
    _, params, _ = CI.load_inception(str(path))
    state = {k: v.numpy() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    back = CI.torch_layout(params)
    assert back.keys() == state.keys() and all(np.array_equal(back[k], state[k]) for k in state)
    # the published file's name carries the start of its sha256: a file that does not match is refused
    wrong = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    shutil.copy(pth, wrong)
    with pytest.raises(ValueError, match="sha256 .* does not start with the 6726825d"):
        CI.convert_pth(str(wrong), str(tmp_path / "x.safetensors"))
    partial = dict(state)
    del partial["Mixed_6b.branch7x7_2.conv.weight"]
    with pytest.raises(ValueError, match=r"missing \['Mixed_6b.branch7x7_2.conv.weight'\]"):
        CI.params_from_torch_layout(partial)
    bad = {**state, "fc.weight": state["fc.weight"].T}
    with pytest.raises(ValueError, match=r"fc.weight has shape \(2048, 1008\)"):
        CI.params_from_torch_layout(bad)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        CI.load_inception(str(tmp_path / "junk.safetensors"))
    with pytest.raises(FileNotFoundError, match="python -m teal_jax.convert.inception"):
        CI.load_inception(str(tmp_path / "missing.safetensors"))


# ---- the distance ------------------------------------------------------------------------------------------------
def _scipy_fid(f1, f2) -> float:
    """pytorch-fid's formula: float64 numpy statistics, scipy's sqrtm of S1 S2, real part."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():  # n < d: the product is singular, which scipy warns about (the test bounds it)
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,d", [(200, 16), (40, 64)])  # full rank; and n < d (rank-deficient, as at small N)
def test_frechet_distance_against_scipy_and_torch_fidelity(tf, n, d):
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3
    b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.2
    ours = F.fid_from_features(a, b)
    stats = [tf.metric_fid.fid_features_to_statistics(torch.from_numpy(x)) for x in (a, b)]
    theirs = tf.metric_fid.fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    # rank-deficient covariances: the eigenvalues of the non-symmetric S1 S2 (theirs) or scipy's sqrtm of it are
    # less exact than those of the symmetric S1^1/2 S2 S1^1/2 (ours); measured differences 1e-8 relative
    rel = 1e-9 if n > d else 1e-6
    assert ours == pytest.approx(theirs, rel=rel)
    assert ours == pytest.approx(_scipy_fid(a, b), rel=rel)
    assert F.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(a, rowvar=False)))
    with pytest.raises(ValueError, match="FID statistics need"):
        F.statistics(a[:1])
    with pytest.raises(ValueError, match="do not describe two Gaussians"):
        F.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_precision_recall_against_torch_fidelity(tf):
    rng = np.random.default_rng(5)
    real = rng.normal(size=(80, 8))
    gen = np.concatenate([rng.normal(size=(50, 8)), rng.normal(2.5, 0.5, size=(40, 8))])  # half off the real set
    ours = F.precision_recall(real, gen, k=3, chunk=32)  # chunks of distances: the same as one block
    p, r = tf.metric_prc.calculate_precision_recall_full(torch.from_numpy(gen).float(), torch.from_numpy(real).float(),
                                                         neighborhood=3)
    assert (ours["precision"], ours["recall"]) == (pytest.approx(p), pytest.approx(r))
    assert 0.3 < ours["precision"] < 0.8 and 0.5 < ours["recall"] < 1.0  # neither saturated
    with pytest.raises(ValueError, match="N > k=3"):
        F.precision_recall(real[:3], gen)


# ---- the evaluator -----------------------------------------------------------------------------------------------
def random_params(width: float, seed: int = 0) -> dict:
    """Random parameters of ``InceptionV3FID(width)`` from its shapes (no init run: an eager linen init of this
    network costs ~90 s on a loaded 2-core CPU); He-scaled kernels, batch-norm statistics near identity."""
    rng = np.random.default_rng(seed)
    tree: dict = {}
    for path, shape in CI.param_shapes(width).items():
        leaf = path[-1]
        if leaf == "kernel":
            value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        elif leaf in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0, 0.1, shape)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[leaf] = value.astype(np.float32)
    return tree


class ImageModel:
    """Stands in for a TealModel: ``generate_image`` draws deterministic 32 x 32 gray images from the captions and
    records the sampling settings it got (TealModel.generate_image itself is tested in test_teal_api)."""

    image_size = 32
    max_batch = 64

    def __init__(self):
        self.calls = []

    def generate_image(self, texts, **settings):
        self.calls.append((list(texts), dict(settings), self.max_batch))
        rng = np.random.default_rng(len(texts))
        return np.stack([np.clip(rng.normal(16 * (len(t) % 16), 40, (32, 32, 1)), 0, 255).astype(np.uint8)
                         for t in texts])

    @staticmethod
    def save_png(images, paths):
        from teal_jax.inference.teal import TealModel

        return TealModel.save_png(images, paths)


def coco_like_records(n: int) -> list[dict]:
    """COCO-captions-shaped records: RGB images of several non-square sizes, two captions each."""
    return [{"image": images_uint8(1, 64, seed=20 + i)[0, : 40 + 4 * i, : 56 - 3 * i],
             "captions": {"text": np.array([f"caption {'x' * i} of image {i}".encode(), b"another caption"])}}
            for i in range(n)]


def test_fid_evaluator_through_the_registry_equals_a_direct_computation(tmp_path, capsys, monkeypatch):
    """A COCO-shaped eval split (in memory: ``open_sources`` returns it, as tfds' data source would) and a tiny
    Inception (every channel count / 16) saved as safetensors; six images."""
    from teal_jax.data.teal import sources as sources_lib
    from teal_jax.data.teal.config import default_task_data_config
    from teal_jax.media.image import center_crop_resize

    width, n = 1 / 16, 6
    module, params = InceptionV3FID(width=width), random_params(width)
    weights = CI.save_inception(params, str(tmp_path / "tiny_inception.safetensors"), width=width)
    records = coco_like_records(n + 2)

    def open_sources(source, modality, *, data_dir=None, image_size=32):
        assert (source["name"], source["eval_split"], modality, image_size) == ("coco_captions", "val", "image", 32)
        return {"train": [], "test": records}

    monkeypatch.setattr(sources_lib, "open_sources", open_sources)
    c = ml_collections.ConfigDict(dict(objective="teal", data=default_task_data_config()))
    c.data.image_source.update(dict(kind="tfds", name="coco_captions", text_key="captions/text", label_key="",
                                    eval_split="val"))
    c.sample = ml_collections.ConfigDict(dict(temperature=0.5, top_p=0.8, top_k=7, seed=3, guidance_scale=2.0))
    c.evals = ml_collections.ConfigDict(dict(fid=dict(kind="fid", inception_weights="", num_images=n, batch_size=4,
                                                      max_batch=5, save_samples=2)))
    model = ImageModel()
    with pytest.raises(ValueError, match="config.evals.fid.inception_weights is empty"):
        EV.run_evaluators(EV.make_evaluators(c), model, workdir=str(tmp_path / "run"), step=0)
    c.evals.fid.inception_weights = weights
    (ev,) = EV.make_evaluators(c)
    result = EV.run_evaluators([ev], model, workdir=str(tmp_path / "run"), step=7)["fid"]

    # direct: the first n records centre-cropped and resized to 32, their first captions, features from the
    # in-memory params, FID by scipy's sqrtm
    refs = np.stack([center_crop_resize(r["image"], 32) for r in records[:n]])
    captions = [r["captions"]["text"][0].decode() for r in records[:n]]
    (texts, settings, max_batch), = model.calls
    assert texts == captions and max_batch == 5 and model.max_batch == 64  # restored after
    assert settings == dict(guidance_scale=2.0, seed=3, temperature=0.5, top_p=0.8, top_k=7)
    gen = np.repeat(model.generate_image(captions), 3, axis=-1)
    apply = jitted_apply(module)  # the evaluator's compiled batch-4 forward: 12 images = 3 whole batches
    both = np.concatenate([np.asarray(apply(params, x)["pool3"], np.float64)
                           for x in np.split(np.concatenate([refs, gen]), 3)])
    feats = both[:n], both[n:]
    assert feats[0].shape == (n, 128) and feats[0].std() > 1e-3
    assert result["fid"] == pytest.approx(_scipy_fid(*feats), rel=1e-5)
    prc = F.precision_recall(*feats, k=3)
    assert (result["precision"], result["recall"]) == (prc["precision"], prc["recall"])
    assert result["n"] == n and result["image_size"] == 32 and result["guidance"] == 2.0
    assert f"FID {result['fid']:.3f} over {n} generated vs {n} reference images" in capsys.readouterr().out
    out = tmp_path / "run" / "eval" / "fid" / "step_7"
    assert json.loads((out / "results.json").read_text())["fid"] == result["fid"]
    assert sorted(os.listdir(out)) == ["fid_000.png", "fid_001.png", "fid_samples.tsv", "results.json"]
    # the reference statistics are cached and reused: the same figures without reading a record again
    (cache,) = [f for f in os.listdir(tmp_path / "run" / "eval" / "fid") if f.startswith("reference_")]

    class Unreadable(list):
        def __getitem__(self, i):
            raise AssertionError("a cached reference set was read again")

    unreadable = Unreadable(records)  # same length: the same cache key
    monkeypatch.setattr(sources_lib, "open_sources", lambda *a, **k: {"train": [], "test": unreadable})
    with unittest.mock.patch.object(F, "statistics", wraps=F.statistics) as stats:
        again = ev.run(model, workdir=str(tmp_path / "run"), step=8)
    assert (again["fid"], again["precision"]) == (result["fid"], result["precision"]) and stats.call_count == 1
    assert model.calls[-1][0] == captions  # the cached captions


@pytest.mark.slow
def test_fid_evaluator_on_the_tiny_random_teal_model(tmp_path):
    """The evaluator on a real TealModel (test_teal_api's tiny random one: 32 x 32 gray images) and the digits'
    test split built in tmp: generate_image's signature and the gray -> RGB path, end to end (~20 s)."""
    from test_teal_api import tiny_model, tiny_parts

    width = 1 / 16
    weights = CI.save_inception(random_params(width), str(tmp_path / "tiny_inception.safetensors"), width=width)
    model = tiny_model()
    from teal_jax.data.teal.config import default_source_config

    c = ml_collections.ConfigDict(tiny_parts()["config"].to_dict())  # a synthetic-data run: name an image source
    c.data.image_source = default_source_config("image")  # the digits (their words are the captions)
    ev = F.FidEvaluator(dict(inception_weights=weights, num_images=6, batch_size=4, data_dir=str(tmp_path / "digits"),
                             save_samples=1), c, name="fid")
    r = ev.run(model, workdir=str(tmp_path / "run"), step=0)
    assert r["n"] == 6 and r["image_size"] == 32 and np.isfinite(r["fid"]) and r["fid"] > 0
    assert (tmp_path / "run" / "eval" / "fid" / "step_0" / "fid_000.png").exists()
