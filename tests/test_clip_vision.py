"""ViT vision towers vs transformers (tiny random CLIPVisionModel / CLIPModel / SiglipVisionModel built offline):
every hidden state within 1e-4, float32 with 'highest' matmul precision."""

import json

import jax
import numpy as np
import pytest
from _hf_encoders import max_abs, save_tiny_vision

from teal_jax.convert.clip import import_vision_tower
from teal_jax.models.vit import ViT

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

HIDDEN_TOL = 1e-4  # measured ~1e-6


# SigLIP costs ~5 s of transformers import alone: run with -m slow
@pytest.mark.parametrize("kind", ["CLIPVisionModel", "CLIPModel",
                                  pytest.param("SiglipVisionModel", marks=pytest.mark.slow)])
def test_vision_tower_hidden_states_match(tmp_path, kind):
    _, tower = save_tiny_vision(str(tmp_path), kind)
    cfg, params, info = import_vision_tower(str(tmp_path))
    assert info["family"] == ("siglip" if kind.startswith("Siglip") else "clip")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        out = tower(pixel_values=torch.from_numpy(x), output_hidden_states=True)
    vit = ViT(cfg)
    pixels = x.transpose(0, 2, 3, 1)
    ours = jax.jit(vit.apply)({"params": params}, pixels)
    assert len(ours) == len(out.hidden_states) == cfg.num_layers + 1
    errs = [max_abs(a, b.numpy()) for a, b in zip(ours, out.hidden_states, strict=True)]
    assert max(errs) < HIDDEN_TOL, errs
    last = jax.jit(vit.last_hidden_state)({"params": params}, pixels)
    assert max_abs(last, out.last_hidden_state.numpy()) < HIDDEN_TOL
    assert max_abs(jax.jit(vit.apply, static_argnums=2)({"params": params}, pixels, 1), ours[1]) < 1e-6
    init = jax.eval_shape(vit.init, jax.random.key(0), pixels)["params"]
    assert jax.tree.map(np.shape, init) == jax.tree.map(np.shape, params)


def test_bad_inputs_are_named(tmp_path):
    save_tiny_vision(str(tmp_path), "CLIPVisionModel")
    cfg, params, info = import_vision_tower(str(tmp_path))
    assert info["mean"][0] == pytest.approx(0.48145466)
    with pytest.raises(ValueError, match=r"pixels must be \[batch, 32, 32, 3\]"):
        jax.eval_shape(ViT(cfg).apply, {"params": params}, np.zeros((1, 64, 64, 3), np.float32))
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "model_type": "bert"}))
    with pytest.raises(ValueError, match=r"model_type='bert'"):
        import_vision_tower(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**hf, "patch_size": 16}))
    with pytest.raises(ValueError, match=r"patch_embedding.weight.*shape"):
        import_vision_tower(str(tmp_path))
