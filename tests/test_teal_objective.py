"""TEAL objective: loss vs a float64 numpy reference, synthetic task stream, stage-1/stage-2 training through the
trainer (frozen leaves bit-identical), base-LM and codebook loading."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from teal_jax import vocab as V
from teal_jax.config import base_config
from teal_jax.data import templates as T
from teal_jax.models import teal as teal_lib
from teal_jax.train import teal_objective as TO
from teal_jax.train import trainer as trainer_lib

VOCAB = V.UnifiedVocab(text_size=64, image_codebook_size=32, audio_codebook_size=16, audio_num_levels=2)


def _np_log_softmax(x):
    m = np.max(x, -1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), -1, keepdims=True))


def test_loss_and_metrics_match_numpy_reference():
    rng = np.random.default_rng(0)
    b, t = 3, 9
    tokens = rng.integers(0, VOCAB.used_size, (b, t + 1)).astype(np.int32)
    tokens[0, :5] = rng.integers(0, VOCAB.text_size, 5)  # plenty of text targets
    seg = np.ones((b, t + 1), np.int32)
    seg[1, 6:] = 2
    seg[2, 8:] = 0
    mask = (rng.random((b, t + 1)) < 0.8).astype(np.float32)
    logits = rng.normal(size=(b, t, VOCAB.size)) * 2
    logits[..., VOCAB.used_size:] = -np.inf
    weights = (1.0, 0.5, 2.0, 3.0)
    batch = {"tokens": tokens, "segment_ids": seg, "loss_mask": mask, "modality": VOCAB.modality_of(tokens)}
    loss, metrics = jax.jit(lambda lg, bt: TO.teal_loss(lg, bt, VOCAB, weights, z_loss=1e-3))(
        jnp.asarray(logits, jnp.float32), batch)

    # float64 reference
    targets = tokens[:, 1:]
    valid = mask[:, 1:] * (seg[:, 1:] == seg[:, :-1]) * (seg[:, 1:] > 0)
    tmod = VOCAB.modality_of(targets)
    lp = _np_log_softmax(logits)
    ce = -np.take_along_axis(lp, targets[..., None], -1)[..., 0]
    w = valid * np.asarray(weights)[tmod]
    nll = (ce * w).sum() / w.sum()
    z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    zl = (z * z * valid).sum() / valid.sum()
    # float32 logits of size ~2-6 against float64: 1e-5 relative.
    np.testing.assert_allclose(float(loss), nll + 1e-3 * zl, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["nll"]), nll, rtol=1e-5)
    correct = lp.argmax(-1) == targets
    for m, name in enumerate(TO.MODALITIES):
        sel = valid * (tmod == m)
        assert sel.sum() > 0, name
        np.testing.assert_allclose(float(metrics[f"loss/{name}"]), (ce * sel).sum() / sel.sum(), rtol=1e-5)
        np.testing.assert_allclose(float(metrics[f"accuracy/{name}"]), (correct * sel).sum() / sel.sum(),
                                   rtol=1e-6)
    text_sel = valid * (tmod == V.TEXT)
    tlp = _np_log_softmax(logits[..., : VOCAB.text_size])
    tce = -np.take_along_axis(tlp, np.minimum(targets, VOCAB.text_size - 1)[..., None], -1)[..., 0]
    text_nll = (tce * text_sel).sum() / text_sel.sum()
    np.testing.assert_allclose(float(metrics["text_ppl"]), np.exp(text_nll), rtol=1e-5)
    assert text_nll < (ce * text_sel).sum() / text_sel.sum()  # text rows only: less mass competes

    # per-token loss weights (data.loss_normalization='example') scale each target; metrics stay token means
    per_token = rng.random((b, t + 1)).astype(np.float32) + 0.1
    loss_w, metrics_w = jax.jit(lambda lg, bt: TO.teal_loss(lg, bt, VOCAB, weights))(
        jnp.asarray(logits, jnp.float32), {**batch, "loss_weight": per_token})
    w2 = w * per_token[:, 1:]
    np.testing.assert_allclose(float(loss_w), (ce * w2).sum() / w2.sum(), rtol=1e-5)
    assert abs(float(loss_w) - nll) > 1e-3  # the weights changed the loss
    np.testing.assert_allclose(float(metrics_w["accuracy/text"]), float(metrics["accuracy/text"]), rtol=1e-6)


def test_synthetic_stream_is_deterministic_and_well_formed():
    c = TO.synthetic_config()
    obj = TO.TealObjective(c)
    it = obj.make_data("train", batch_size=4, process_index=0, process_count=1)
    first = next(it)
    draws = it.last_draws
    state = it.get_state()
    second = next(it)
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["tokens"], second["tokens"])
    again = obj.make_data("train", batch_size=4, process_index=0, process_count=1)
    np.testing.assert_array_equal(next(again)["tokens"], first["tokens"])
    v = obj.vocab
    assert first["tokens"].shape == (4, c.data.seq_len + 1)
    np.testing.assert_array_equal(first["modality"], v.modality_of(first["tokens"]))
    # Every target of a span task is an image/audio code or a closer; caption/asr targets are text.
    h, w = c.data.image_shape
    for b in range(4):
        for s in range(1, first["segment_ids"][b].max() + 1):
            sel = first["segment_ids"][b] == s
            toks, m = first["tokens"][b, sel], first["loss_mask"][b, sel]
            np.testing.assert_array_equal(first["positions"][b, sel], np.arange(sel.sum()))
            target = toks[m > 0]
            if v.boi in toks:
                img = toks[list(toks).index(v.boi) + 1: list(toks).index(v.eoi)]
                assert v.unified_to_image(img, h, w).shape == (h, w)
            assert toks[0] in (0, v.null)  # bos (text id 0) or a dropped condition
            if toks[0] == v.null or toks[1] in (v.special_id("<task:t2i>"), v.special_id("<task:tts>")):
                assert set(V.MODALITY_NAMES[x] for x in v.modality_of(target[:-1])) <= set(T.SPAN_MODALITIES)
                assert target[-1] in (v.eoi, v.eoa)
            else:
                assert (v.modality_of(target) == V.TEXT).all()
    # The layouts are the templates' (bos = text id 0, eos = the last text id; class c is named by 1 + c and
    # 1 + num_classes + c), as last_draws says, one draw per segment.
    tpl = T.Templates(v, 0, v.text_size - 1)
    assert len(draws) == int(sum(first["segment_ids"][b].max() for b in range(4)))
    for d in draws:
        sel = first["segment_ids"][d["row"]] == d["segment"]
        toks, m = first["tokens"][d["row"], sel].tolist(), first["loss_mask"][d["row"], sel].tolist()
        cond, tgt = toks[: m.index(1.0)], toks[m.index(1.0):]
        words = [1 + d["label"], 1 + c.data.num_classes + d["label"]]
        if d["task"] in T.GENERATION_TASKS:
            assert cond == (tpl.null_prompt(d["task"]) if d["dropped"] else tpl.prompt(d["task"], words))
        else:
            assert tgt == tpl.target(d["task"], words) and cond[:2] == [0, tpl.marker(d["task"])]
    assert {d["task"] for d in draws} == set(TO.synthetic_config().data.tasks)


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _flat(tree):
    return {"/".join(teal_lib._keys(p)): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _train(config, workdir):
    t = trainer_lib.Trainer(config, str(workdir))
    p0 = _host(t.init_state()["params"]["model"])
    try:
        metrics = t.run()
    finally:
        t.writer.close()
        t.checkpointer.close()
    return p0, _host(t.state["params"]["model"]), metrics


def _small(stage):
    c = TO.synthetic_config(stage)
    c.train.steps = 3
    c.train.log_every = 1
    c.train.eval_every = 0
    c.train.checkpoint_every = 1000
    c.train.async_checkpoints = False
    c.optimizer.lr = 1e-2
    c.optimizer.warmup_steps = 1
    return c


def test_stage1_through_trainer_from_base_lm_keeps_lm_bit_identical(tmp_path):
    # A base LM trained (1 step) by the 'lm' objective, with the TEAL config's LM shape.
    lm_cfg = base_config()
    lm_cfg.objective = "lm"
    lm_cfg.model = ml_collections.ConfigDict(TO.synthetic_config().model.lm.to_dict())
    lm_cfg.data.kind, lm_cfg.data.seq_len = "synthetic", 8
    lm_cfg.train.update(dict(steps=1, batch_size=8, log_every=1, eval_every=0, checkpoint_every=1000,
                             compute_dtype="float32", async_checkpoints=False))
    trainer_lib.train(lm_cfg, str(tmp_path / "lm"))
    from teal_jax import checkpoint

    _, base, _ = checkpoint.load_params(str(tmp_path / "lm"))

    c = _small("frozen_stage1")
    c.model.base_lm_workdir = str(tmp_path / "lm")
    p0, p1, metrics = _train(c, tmp_path / "teal")
    assert np.isfinite(metrics["loss"]) and "loss/image" in metrics and "text_ppl" in metrics
    base_flat, f0, f1 = _flat(base["model"]), _flat(p0), _flat(p1)
    for k, v in base_flat.items():
        np.testing.assert_array_equal(f0["lm/" + k], v)  # loaded exactly
        np.testing.assert_array_equal(f1["lm/" + k], v)  # untouched by stage-1 training
    for k in ("special_embed", "image_embed", "audio_embed", "image_head", "audio_head", "special_head"):
        assert not np.array_equal(f0[k], f1[k]), k


def test_stage2_trains_only_norms_and_biases_inside_the_lm(tmp_path):
    p0, p1, _ = _train(_small("frozen_stage2"), tmp_path)
    f0, f1 = _flat(p0), _flat(p1)
    changed = {k for k in f0 if not np.array_equal(f0[k], f1[k])}
    lm_changed = {k for k in changed if k.startswith("lm/")}
    assert lm_changed == {k for k in f0 if k.startswith("lm/") and teal_lib.is_norm_or_bias(tuple(k.split("/")))}
    assert any(k.endswith("/bias") for k in lm_changed) and any(k.endswith("norm/scale") for k in lm_changed)
    assert {"image_embed", "audio_head"} <= changed


def test_codebook_init_from_files(tmp_path):
    c = TO.synthetic_config()
    c.model.embedding_init = "codebook"
    c.model.image_code_dim, c.model.audio_code_dim = 4, 3
    rng = np.random.default_rng(0)
    img, aud = rng.normal(size=(32, 4)).astype(np.float32), rng.normal(size=(2, 16, 3)).astype(np.float32)
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "aud.npy", aud)
    obj = TO.TealObjective(c)
    batch = next(obj.make_data("train", batch_size=2, process_index=0, process_count=1))
    with pytest.raises(ValueError, match="image_codebook"):
        jax.eval_shape(obj.init, jax.random.key(0), batch)
    c.model.image_codebook, c.model.audio_codebook = str(tmp_path / "img.npy"), str(tmp_path / "aud.npy")
    obj = TO.TealObjective(c)
    params = nn.unbox(jax.jit(obj.init)(jax.random.key(0), batch)[0])["model"]
    np.testing.assert_array_equal(params["image_codebook"], img)
    np.testing.assert_array_equal(params["audio_codebook"], aud.reshape(32, 3))
    assert obj.trainable({"model": params})["model"]["image_codebook"] is False


def test_base_lm_from_hf_llama_directory(tmp_path):
    from teal_jax.convert.llama import export_llama
    from teal_jax.models.transformer import TransformerConfig, TransformerLM

    c = TO.synthetic_config()
    lm_cfg = TransformerConfig.from_config(c.model.lm, dtype="float32")
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: nn.unbox(TransformerLM(lm_cfg).init(
        jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]))
    lm_params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    export_llama(lm_cfg, lm_params, str(tmp_path / "hf"))
    c.model.base_lm_hf = str(tmp_path / "hf")
    obj = TO.TealObjective(c)
    batch = next(obj.make_data("train", batch_size=2, process_index=0, process_count=1))
    params = nn.unbox(jax.jit(obj.init)(jax.random.key(0), batch)[0])["model"]
    jax.tree.map(np.testing.assert_array_equal, params["lm"], lm_params)
    c.model.lm.rope_theta = 500.0  # a different architecture is refused, naming the field
    with pytest.raises(ValueError, match="rope_theta"):
        jax.eval_shape(TO.TealObjective(c).init, jax.random.key(0), batch)


def test_match_lm_scale_puts_new_rows_at_the_lm_spread():
    """model.nontext_init='match_lm': non-text rows take the std of the LM's embedding table, head columns the
    std of its output head; the LM, codebook projections and span positions are untouched (float64 reference)."""
    from teal_jax.train.teal_objective import match_lm_scale

    rng = np.random.default_rng(0)
    std = 0.02
    lm = {"embed": {"embedding": rng.normal(0, 0.3, (64, 16)).astype(np.float32)},
          "lm_head": {"kernel": rng.normal(0, 0.7, (16, 64)).astype(np.float32)}}
    params = {"lm": lm, "image_embed": rng.normal(0, std, (40, 16)).astype(np.float32),
              "image_head": rng.normal(0, std, (16, 40)).astype(np.float32),
              "special_embed": rng.normal(0, std, (8, 16)).astype(np.float32),
              "image_span_pos": np.zeros((4, 16), np.float32),
              "image_proj": {"kernel": np.ones((3, 16), np.float32)}}
    out = match_lm_scale(params, std)
    emb_std = np.std(lm["embed"]["embedding"].astype(np.float64))
    head_std = np.std(lm["lm_head"]["kernel"].astype(np.float64))
    for key, want in (("image_embed", emb_std), ("special_embed", emb_std), ("image_head", head_std)):
        np.testing.assert_allclose(np.asarray(out[key], np.float64), params[key] * want / std, rtol=1e-5)
    for key in ("image_span_pos", "image_proj", "lm"):
        assert out[key] is params[key]
