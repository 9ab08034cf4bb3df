"""LoRA as a trainable-mask option: base weights bit-identical through real train steps (LM and TEAL), the LoRA
forward against a float64 numpy recomputation, merge/unmerge, inference folding, config errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from _tiny import tiny_lm_config
from flax import linen as nn

from teal_jax.inference.lm import LanguageModel
from teal_jax.models import lora
from teal_jax.models.transformer import TransformerConfig, TransformerLM
from teal_jax.parallel import sharding as shd
from teal_jax.train import teal_objective as TO
from teal_jax.train import trainer as trainer_lib
from teal_jax.train.lm_objective import LMObjective

TARGETS = r"attn/(q|o)_proj|mlp/down_proj|lm_head"


def _flat(tree):
    return {"/".join(lora._keys(p)): np.asarray(jax.device_get(v))
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _tiny_model():
    cfg = TransformerConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                            mlp_dim=48, dtype="float32")
    model = TransformerLM(cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 7)), jnp.int32)
    return cfg, model, tokens, model.init(jax.random.key(0), tokens)["params"]


def _random_b(params, seed=3):
    """Non-zero B factors (a fresh adapter is the identity), so the adapter matters."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.asarray(rng.normal(0, 0.2, v.shape), v.dtype) if lora._keys(p)[-1] == "lora_b" else v,
        params)


def _lora_steps(config, tmp_path, steps):
    t = trainer_lib.Trainer(config, str(tmp_path))
    state = t.init_state()
    before = _flat(state["params"]["model"])
    for _ in range(steps):
        batch = shd.global_batch(next(t.train_iter), t.mesh)
        with shd.set_mesh(t.mesh), shd.axis_rules():
            state, metrics = t._train_step(state, batch)
        assert np.isfinite(float(metrics["loss"]))
    return t, state, before, _flat(state["params"]["model"])


def test_lm_lora_trains_only_the_factors_base_bit_identical(tmp_path, devices):
    c = tiny_lm_config(mesh=(2, 2, 2))
    c.model.lora = ml_collections.ConfigDict(dict(rank=4, alpha=8.0, targets=TARGETS, dropout=0.1))
    t, state, before, after = _lora_steps(c, tmp_path, 3)
    adapters = {k for k in before if k.endswith(("/lora_a", "/lora_b"))}
    # 3 kernels under the scanned layers + lm_head, two factors each.
    assert {k.rsplit("/", 1)[0] for k in adapters} == {"layers/attn/q_proj", "layers/attn/o_proj",
                                                         "layers/mlp/down_proj", "lm_head"}
    for k in before:
        if k in adapters:
            assert not np.array_equal(before[k], after[k]), k
        else:
            assert before[k].tobytes() == after[k].tobytes(), k
    assert before["layers/attn/q_proj/lora_a"].shape == (2, 32, 4)
    assert before["layers/attn/o_proj/lora_a"].shape == (2, 4, 8, 4)
    assert not before["lm_head/lora_b"].any()  # B starts at zero: a fresh adapter leaves the model unchanged
    # Adam moments only for the factors.
    moments = sum(x.size for x in jax.tree.leaves(state["opt_state"]["model"]) if x.ndim > 0)
    assert moments == 2 * sum(before[k].size for k in adapters)
    # The factors are sharded by the logical names of the kernel they adapt (rank axis replicated).
    spec = t.param_shardings["model"]["layers"]["attn"]["q_proj"]["lora_b"].spec
    kspec = t.param_shardings["model"]["layers"]["attn"]["q_proj"]["kernel"].spec
    assert tuple(spec)[2:] == tuple(kspec)[2:] and spec[1] is None


def test_no_lora_section_changes_nothing():
    c = tiny_lm_config()
    obj = LMObjective(c)
    assert not obj.lora.enabled
    batch = {"tokens": np.zeros((2, 9), np.int32)}
    params, _ = jax.eval_shape(lambda: obj.init(jax.random.key(0), batch))  # shapes only: no compile
    plain = jax.eval_shape(lambda: obj.model.init(jax.random.key(0), batch["tokens"][:, :-1]))["params"]
    assert jax.tree.structure(params["model"]) == jax.tree.structure(plain)
    assert all(jax.tree.leaves(obj.trainable(nn.unbox(params))))


def test_lora_forward_against_float64_numpy_and_merge():
    cfg, model, tokens, params = _tiny_model()
    lc = lora.LoraConfig(rank=3, alpha=6.0, targets=TARGETS)
    p = _random_b(nn.unbox(lora.init_adapters(params, lc, jax.random.key(1))))
    base, adapters = lora.split(p)
    with jax.default_matmul_precision("highest"):
        y_lora = np.asarray(lora.apply(model, lc, {"params": p}, tokens))
        y_base = np.asarray(model.apply({"params": base}, tokens))
        merged = lora.merge(p, lc)
        y_merged = np.asarray(model.apply({"params": merged}, tokens))
    assert np.abs(y_lora - y_base).max() > 0.1  # the adapter matters
    # merged weights against the float64 formula W + (alpha / r) * A @ B, per layer
    f = _flat(p)
    for name in ("layers/attn/q_proj", "layers/attn/o_proj", "layers/mlp/down_proj", "lm_head"):
        w, a, b = (f[f"{name}/{x}"].astype(np.float64) for x in ("kernel", "lora_a", "lora_b"))
        lead = 1 if name.startswith("layers") else 0
        for i in range(w.shape[0] if lead else 1):
            wi, ai, bi = (x[i] if lead else x for x in (w, a, b))
            want = wi + 2.0 * (ai.reshape(-1, 3) @ bi.reshape(3, -1)).reshape(wi.shape)
            got = np.asarray(_flat(merged)[f"{name}/kernel"])
            np.testing.assert_allclose(got[i] if lead else got, want, atol=1e-6)
    assert not lora.has_adapters(merged)
    # float32 forward with the factors vs with merged kernels: rounding only (logits ~1).
    np.testing.assert_allclose(y_lora, y_merged, atol=2e-5)
    # unmerge recovers the base kernels (float32 rounding of W + d - d) and re-attaches the factors.
    back = lora.unmerge(merged, adapters, lc)
    for k, v in _flat(p).items():
        np.testing.assert_allclose(_flat(back)[k], v, atol=1e-6, err_msg=k)


def test_dropout_only_in_training_and_per_layer():
    cfg, model, tokens, params = _tiny_model()
    lc = lora.LoraConfig(rank=2, targets=r"attn/q_proj", dropout=0.5)
    p = _random_b(nn.unbox(lora.init_adapters(params, lc, jax.random.key(1))))
    y0 = lora.apply(model, lc, {"params": p}, tokens)
    y1 = lora.apply(model, lc, {"params": p}, tokens, rng=jax.random.key(7))
    y2 = lora.apply(model, lc, {"params": p}, tokens, rng=jax.random.key(8))
    assert float(jnp.abs(y1 - y0).max()) > 1e-3 and float(jnp.abs(y1 - y2).max()) > 1e-3
    keys = lora._with_dropout_keys(p, jax.random.key(7), ())["layers"]["attn"]["q_proj"]["lora_rng"]
    assert keys.shape[0] == 2 and not np.array_equal(keys[0], keys[1])  # each scanned layer its own mask


def test_language_model_folds_factors_for_inference():
    c = tiny_lm_config()
    c.model.vocab_size, c.model.num_kv_heads = 64, 2
    c.model.lora = ml_collections.ConfigDict(dict(rank=2, alpha=4.0, targets="attn/v_proj"))
    cfg = TransformerConfig.from_config(c.model, dtype="float32")
    lc = lora.LoraConfig.from_config(c.model)
    tokens = np.random.default_rng(1).integers(0, 64, (2, 6)).astype(np.int32)
    model = TransformerLM(cfg)
    p = _random_b(nn.unbox(lora.init_adapters(model.init(jax.random.key(0), tokens)["params"], lc,
                                              jax.random.key(2))))
    lm = LanguageModel(cfg, p, None, c)
    assert not lora.has_adapters(lm.params)
    with jax.default_matmul_precision("highest"):
        want = np.asarray(lora.apply(model, lc, {"params": p}, jnp.asarray(tokens)))
        np.testing.assert_allclose(lm.logits(tokens), want, atol=2e-5)
    with pytest.raises(ValueError, match="model.lora.rank is 0 or absent"):
        LanguageModel(cfg, p, None, None)


def test_teal_lora_keeps_the_text_lm_bit_identical(tmp_path):
    c = TO.synthetic_config("frozen_stage1")
    c.train.update(dict(steps=2, log_every=1, eval_every=0, checkpoint_every=1000, async_checkpoints=False))
    c.optimizer.lr, c.optimizer.warmup_steps = 1e-2, 1
    c.model.lora = ml_collections.ConfigDict(dict(rank=2, alpha=4.0, targets="attn/(q|v)_proj", dropout=0.0))
    _, _, before, after = _lora_steps(c, tmp_path, 2)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    lm = {k for k in before if k.startswith("lm/")}
    assert changed & lm == {f"lm/layers/attn/{m}/lora_{x}" for m in ("q_proj", "v_proj") for x in "ab"}
    assert "image_embed" in changed  # the stage still trains the joint embedding


@pytest.mark.parametrize("section, message", [
    (dict(rank=2, alpah=4.0), "config.model.lora.alpah: unknown field"),
    (dict(rank=-1), "rank=-1 must be >= 0"),
    (dict(rank=2, targets="attn/(q"), "is not a regular expression"),
    (dict(rank=2, dropout=1.0), "dropout=1.0 must be in"),
    (dict(rank="4"), "rank='4' has type str"),
])
def test_config_errors_name_the_field(section, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        lora.LoraConfig.from_config({"lora": section})


def test_targets_selecting_nothing_list_the_module_paths():
    _, _, _, params = _tiny_model()
    with pytest.raises(ValueError, match=r"selects no kernel; module paths are: .*layers/attn/q_proj"):
        lora.init_adapters(params, lora.LoraConfig(rank=2, targets="self_attn"), jax.random.key(0))


def test_every_config_carries_lora_off_and_other_objectives_reject_it():
    from configs.image import digits_tiny
    from teal_jax import config as config_lib

    c = tiny_lm_config()
    assert c.model.lora.rank == 0 and not lora.LoraConfig.from_config(c.model).enabled
    c.model.lora.rank = 4  # what --config.model.lora.rank=4 does
    assert LMObjective(c).lora == lora.LoraConfig(rank=4, targets=r"attn/(q|v)_proj")
    image = digits_tiny.get_config()
    image.model.lora.rank = 4
    with pytest.raises(ValueError, match="config.model.lora.rank=4: LoRA adapts a language model"):
        config_lib.validate(image)
