"""Evaluators built from config: the registry and its errors (named by field), dependency order, the trainer running an
evaluator at its interval (logged figures equal a direct computation on the checkpoint of that step), ``--mode=eval``
writing ``eval/results.json`` on a tiny saved TEAL run, the model built from in-memory TEAL params, and the judges'
shared base (one file format, atomic save, the same errors) and pixel rule."""

from __future__ import annotations

import json

import flax.serialization
import jax
import ml_collections
import numpy as np
import pytest
from _tiny import tiny_lm_config

from teal_jax import config as config_lib
from teal_jax.evaluate import evaluators as EV

PROBE_TOKENS = np.arange(2 * 8, dtype=np.int32).reshape(2, 8) % 200


class Probe(EV.Evaluator):
    """Sum of the model's logits on fixed tokens (float64): a figure a test can recompute from a checkpoint."""

    KIND = "probe"
    FIELDS = {"scale": 1.0, "after": ""}
    DEPENDS = ("after",)

    def run(self, model, *, workdir, step):
        return {"logit_sum": self.scale * float(np.asarray(model.logits(PROBE_TOKENS), np.float64).sum()),
                "model": type(model).__name__, "step": step}


@pytest.fixture(autouse=True, scope="module")
def _probe_kind():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(EV._EVALUATORS, "probe", "test_evaluators:Probe")
        yield


def _with_evals(c, **sections):
    c.evals = ml_collections.ConfigDict({k: v for k, v in sections.items()})
    return c


# ---- registry and config errors ----------------------------------------------------------------------------------
def test_unknown_kinds_and_fields_are_errors_naming_the_field():
    c = tiny_lm_config()
    with pytest.raises(ValueError, match=r"config.evals.x.kind='nope' is not a known evaluator kind; choose one of"):
        EV.make_evaluators(_with_evals(c, x={"kind": "nope"}))
    with pytest.raises(ValueError, match=r"config.evals.t2i.per_klass: unknown field of kind 'text_to_image'"):
        EV.make_evaluators(_with_evals(c, t2i={"kind": "text_to_image", "per_klass": 3}))
    with pytest.raises(ValueError, match=r"config.evals.t2i.per_class='ten' has type str, expected int"):
        EV.make_evaluators(_with_evals(c, t2i={"kind": "text_to_image", "per_class": "ten"}))
    with pytest.raises(ValueError, match=r"config.evals.r.image_guidance_from='t2i': no such evaluation"):
        EV.make_evaluators(_with_evals(c, r={"kind": "reasoning", "image_guidance_from": "t2i"}))
    with pytest.raises(ValueError, match=r"config.evals.b.after='a': it runs every 2 steps, this one every 3"):
        EV.make_evaluators(_with_evals(c, a={"kind": "probe", "every_steps": 2},
                                       b={"kind": "probe", "every_steps": 3, "after": "a"}))
    # the generic shape is checked with the rest of the config, before any work
    with pytest.raises(ValueError, match=r"config.evals.x.every_steps=-1 must be an int >= 0"):
        config_lib.validate(_with_evals(c, x={"kind": "probe", "every_steps": -1}))
    with pytest.raises(ValueError, match=r"config.evals.x.kind: every evaluation needs a kind"):
        config_lib.validate(_with_evals(c, x={"every_steps": 1}))
    assert config_lib.base_config().evals.to_dict() == {}


def test_fields_defaults_dependency_order_and_due_steps():
    c = _with_evals(tiny_lm_config(), a_last={"kind": "probe", "after": "m_mid", "scale": 2},
                    m_mid={"kind": "probe", "after": "z_first"}, z_first={"kind": "probe", "every_steps": 0})
    evs = EV.make_evaluators(c)
    assert [e.name for e in evs] == ["z_first", "m_mid", "a_last"]  # dependencies first, not name order
    assert evs[2].scale == 2 and evs[1].scale == 1.0 and evs[0].after == ""
    demo = EV.make_evaluators(__import__("configs.teal.demo", fromlist=["x"]).get_config("smoke"))
    names = [e.name for e in demo]
    assert names.index("reasoning") > max(names.index("t2i"), names.index("tts"))
    probe = EV.evaluator_class("probe")({"kind": "probe", "every_steps": 3}, c, name="p")
    assert [s for s in range(1, 8) if probe.due(s)] == [3, 6] and probe.due(7, final=True)
    assert not evs[0].due(5, final=True)  # every_steps 0: on demand only
    assert probe.output_dir("/w", 6) == "/w/eval/p/step_6"
    with pytest.raises(ValueError, match=r"config.evals.x.kind"):
        from teal_jax.train import trainer as trainer_lib

        trainer_lib.Trainer(_with_evals(tiny_lm_config(), x={"kind": "nope"}), "/nonexistent/never/written")


# ---- the trainer runs evaluators at their interval ----------------------------------------------------------------
def test_trainer_runs_evaluators_at_every_steps_and_at_the_end(tmp_path):
    from teal_jax import checkpoint
    from teal_jax.models.transformer import TransformerConfig, TransformerLM
    from teal_jax.train import trainer as trainer_lib

    c = tiny_lm_config(steps=4, mesh=(1, 1, 1))
    c.train.checkpoint_every = 1
    c.train.keep_checkpoints = 10
    _with_evals(c, probe={"kind": "probe", "every_steps": 3, "scale": 0.5}, never={"kind": "probe"})
    trainer_lib.train(c, str(tmp_path), devices=jax.devices()[:1])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["probe/logit_sum"] for r in rows if r["split"] == "eval" and "probe/logit_sum" in r}
    assert sorted(logged) == [3, 4]  # every 3 steps, and the final step
    assert not any("never/logit_sum" in r for r in rows)
    for step, value in logged.items():
        cfg, params, _ = checkpoint.load_params(str(tmp_path), step)
        model_config = TransformerConfig.from_config(cfg.model, dtype=cfg.train.compute_dtype)
        direct = np.asarray(TransformerLM(model_config).apply({"params": params["model"]}, PROBE_TOKENS), np.float64)
        assert value == pytest.approx(0.5 * direct.sum(), rel=1e-5)
        written = json.loads((tmp_path / "eval" / "probe" / f"step_{step}" / "results.json").read_text())
        assert written == {"logit_sum": value, "model": "LanguageModel", "step": step}


# ---- --mode=eval on a saved TEAL run, and the TEAL model from in-memory params -------------------------------------
@pytest.fixture(scope="module")
def saved_teal(tmp_path_factory):
    """A 1-step TEAL trainer run (synthetic tasks) whose config names the tiny tokenizers and two evaluators."""
    from test_teal_api import _write_tokenizer_checkpoint, run_config, tiny_parts

    from teal_jax.train import trainer as trainer_lib

    parts = tiny_parts()
    d = tmp_path_factory.mktemp("teal_eval_run")
    c = run_config(parts["text"], str(d))
    _write_tokenizer_checkpoint(c.data.image_tokenizer, parts["image_run"], parts["image"])
    _write_tokenizer_checkpoint(c.data.audio_tokenizer, parts["audio_run"], parts["audio"])
    c.train.update(dict(steps=1, batch_size=8, log_every=1, eval_every=0, eval_batches=1, checkpoint_every=1000,
                        async_checkpoints=False))
    c.evals = ml_collections.ConfigDict(dict(caption=dict(kind="caption", every_steps=0, num_images=4),
                                             probe=dict(kind="probe", every_steps=0)))
    trainer_lib.train(c, str(d / "teal"))
    return parts, c, str(d / "teal")


def test_mode_eval_writes_results_json_with_the_evaluators_figures(saved_teal):
    import teal_jax
    from teal_jax.evaluate import teal_tasks
    from teal_jax.evaluate.digit_classifier import load_digit_arrays
    from teal_jax.train import trainer as trainer_lib

    _, c, workdir = saved_teal
    values = trainer_lib.evaluate(c, workdir)  # what `python -m teal_jax.main --mode=eval` calls
    results = json.loads(open(f"{workdir}/eval/results.json").read())
    assert results["step"] == 1 and set(results["evals"]) == {"caption", "probe"}
    assert "loss" in results["metrics"] and results["metrics"] == pytest.approx(values)
    model = teal_jax.load(workdir)
    images, labels = load_digit_arrays("test")
    direct = teal_tasks.caption_accuracy(model, images[:4], labels[:4])
    caption = results["evals"]["caption"]
    assert (caption["accuracy"], caption["exact_match"], caption["n"]) == (direct["accuracy"],
                                                                           direct["exact_match"], 4)
    assert caption["forced_choice"] == teal_tasks.caption_forced_choice(model, images[:4], labels[:4])["accuracy"]
    assert values["caption/accuracy"] == caption["accuracy"] and results["evals"]["probe"]["model"] == "TealModel"
    assert results["evals"]["probe"]["logit_sum"] == pytest.approx(
        float(np.asarray(model.logits(PROBE_TOKENS), np.float64).sum()), rel=1e-6)
    assert (open(f"{workdir}/eval/caption/step_1/captions.tsv").read().count("\n") == 5)  # header + 4 captions


def test_model_from_in_memory_teal_params_is_the_loaded_model(saved_teal):
    import teal_jax
    from teal_jax import checkpoint

    parts, c, workdir = saved_teal
    _, params, _ = checkpoint.load_params(workdir)
    m = EV.model_from_params(c, params, workdir)
    loaded = teal_jax.load(workdir)
    assert type(m).__name__ == "TealModel" and m.audio_frames == loaded.audio_frames == parts["frames"]
    np.testing.assert_array_equal(m.logits(PROBE_TOKENS), loaded.logits(PROBE_TOKENS))
    assert m.caption(np.zeros((1, 32, 32), np.uint8)) == loaded.caption(np.zeros((1, 32, 32), np.uint8))
    bad = c.copy_and_resolve_references()
    bad.objective = "image_vq"
    with pytest.raises(ValueError, match="this run's objective is 'image_vq'"):
        EV.model_from_params(bad, {"model": {}}, workdir)


# ---- the judges' shared base ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["digit", "speech"])
def test_judges_share_one_file_format_atomic_save_and_errors(which, tmp_path):
    from teal_jax.evaluate import digit_classifier as dc
    from teal_jax.evaluate import speech_classifier as sc

    rng = np.random.default_rng(0)
    if which == "digit":
        cls, x = dc.DigitClassifier, rng.integers(0, 256, (12, 32, 32), dtype=np.uint8)
    else:
        cls, x = sc.SpeechClassifier, (rng.normal(size=(12, 16000)) * 1000).astype(np.int16)
    y = np.arange(12) % 10
    clf = cls.train(x, y, steps=2, batch_size=4, width=8)
    path = clf.save(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [cls.FILENAME]  # no temporary file left behind
    with open(path, "rb") as f:
        blob = flax.serialization.msgpack_restore(f.read())
    assert set(blob) == {"params", "width"} and int(blob["width"]) == 8
    back = cls.load(str(tmp_path))
    assert back.width == 8
    np.testing.assert_array_equal(back.predict(x), clf.predict(x))
    assert cls.train_or_load(str(tmp_path), None, None).width == 8  # cached: loaded, never trained
    assert back.accuracy(x, y) == float(np.mean(clf.predict(x) == y))
    with pytest.raises(FileNotFoundError, match=f"no trained {cls.WHAT} there"):
        cls.load(str(tmp_path / "missing"))
    (tmp_path / cls.FILENAME).write_bytes(flax.serialization.msgpack_serialize({"params": {}}))
    with pytest.raises(ValueError, match=f"not a {cls.WHAT} file"):
        cls.load(str(tmp_path))
    with pytest.raises(ValueError, match=f"one label in 0..9 per {cls.UNIT}"):
        cls.train(x, y[:3], steps=1)


def test_digit_judge_pixel_rule_composites_alpha_and_keeps_gray_unchanged():
    from teal_jax.evaluate.digit_classifier import to_gray

    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (3, 32, 32, 4), dtype=np.uint8)
    x = rgba.astype(np.float64) / 255.0
    composited = x[..., :3] * x[..., 3:]
    luma = composited[..., 0] * 0.299 + composited[..., 1] * 0.587 + composited[..., 2] * 0.114
    np.testing.assert_allclose(to_gray(rgba), luma, atol=1e-6)  # alpha composited over black, not dropped
    opaque = rgba.copy()
    opaque[..., 3] = 255
    np.testing.assert_allclose(to_gray(opaque), to_gray(opaque[..., :3]), atol=1e-6)
    gray = rgba[..., 0]
    np.testing.assert_array_equal(to_gray(gray), gray.astype(np.float32) / 255.0)  # the demo's images: unchanged
    np.testing.assert_array_equal(to_gray(gray[..., None]), to_gray(gray))
