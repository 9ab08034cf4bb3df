"""The inference protocol on tiny saved runs of every kind: ``teal_jax.load`` returns objects with ``kind``,
``run_config``, ``workdir`` and ``sample``; ``main --mode=sample`` works on each (text printed, TEAL images/speech
written under ``<workdir>/samples/``, tokenizer runs: a clear error and exit without traceback); the text LM and TEAL
decode through the same loop function (``inference.sampler.decode``).

The runs are checkpoints written directly (random weights), built from test_teal_api's tiny parts.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs.lm import tiny as tiny_lm
from teal_jax.inference import protocol, sampler
from teal_jax.inference.lm import LanguageModel
from teal_jax.inference.teal import TealModel
from teal_jax.models.transformer import TransformerConfig, TransformerLM


def lm_run_config(text_tokenizer):
    """A tiny text-LM run config on the shared SentencePiece model."""
    c = tiny_lm.get_config()
    c.model.update(dict(vocab_size=text_tokenizer.vocab_size, embed_dim=32, num_layers=1, num_heads=2,
                        num_kv_heads=1, head_dim=16, mlp_dim=64))
    c.data.tokenizer_model = text_tokenizer.path
    c.data.vocab_size = text_tokenizer.vocab_size
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{kind: workdir} of one saved run per kind."""
    from test_teal_api import _write_teal_checkpoint, _write_tokenizer_checkpoint, fake_params, run_config, tiny_parts

    from teal_jax.checkpoint import Checkpointer

    parts = tiny_parts()
    d = tmp_path_factory.mktemp("protocol")
    c = run_config(parts["text"], str(d))  # names d/image_tok and d/audio_tok
    _write_tokenizer_checkpoint(c.data.image_tokenizer, parts["image_run"], parts["image"])
    _write_tokenizer_checkpoint(c.data.audio_tokenizer, parts["audio_run"], parts["audio"])
    _write_teal_checkpoint(str(d / "teal"), c, parts["params"])
    lm_cfg = lm_run_config(parts["text"])
    model_cfg = TransformerConfig.from_config(lm_cfg.model, dtype="float32")
    shapes = jax.eval_shape(TransformerLM(model_cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    ckpt = Checkpointer(str(d / "lm"), async_save=False)
    ckpt.save(1, {"params": {"model": fake_params(nn.unbox(shapes["params"]), 4)}}, {}, lm_cfg)
    ckpt.close()
    return {"lm": str(d / "lm"), "teal": str(d / "teal"), "image_vq": c.data.image_tokenizer,
            "audio_codec": c.data.audio_tokenizer}


def run_main(tmp_path, workdir: str, *args: str, task: str | None = None):
    """``main.main`` in this process with the run's own saved config (``sample.task`` added when given)."""
    from absl import flags

    from teal_jax import main as main_lib

    cfg = tmp_path / "run_config.py"
    cfg.write_text("from teal_jax import checkpoint\n\n\ndef get_config():\n"
                   f"    c = checkpoint.read_config({workdir!r})\n    c.sample.max_new_tokens = 4\n"
                   + (f"    c.sample.task = {task!r}\n" if task else "") + "    return c\n")
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["main", f"--config={cfg}", f"--workdir={workdir}", "--mode=sample", "--multihost=off", *args])
    main_lib.main(["main"])


def test_load_gives_the_protocol_on_every_kind(runs):
    import teal_jax
    from teal_jax.tokenizers.audio import AudioTokenizer
    from teal_jax.tokenizers.image import ImageTokenizer

    types = {"lm": LanguageModel, "teal": TealModel, "image_vq": ImageTokenizer, "audio_codec": AudioTokenizer}
    for kind, workdir in runs.items():
        m = teal_jax.load(workdir)
        assert isinstance(m, protocol.Model) and isinstance(m, types[kind]), kind
        assert m.kind == kind and m.workdir == workdir and m.run_config.objective == kind
        if kind == "lm":
            assert m.run_config is m.config  # LanguageModel.config has always been the run's ConfigDict
    assert set(protocol.KINDS) == set(runs)


def test_main_sample_lm_prints_continuations(runs, tmp_path, capsys):
    import teal_jax

    run_main(tmp_path, runs["lm"], "--prompt=seven", "--prompt=one two")
    out = capsys.readouterr().out.strip().splitlines()
    # config.sample (temperature 0.8, seed 0): exactly what the Python API gives with the same settings
    expect = teal_jax.load(runs["lm"]).generate(["seven", "one two"], max_new_tokens=4, temperature=0.8)
    assert out == [f"'seven' -> {expect[0]!r}", f"'one two' -> {expect[1]!r}"]


def test_main_sample_teal_text_image_and_speech(runs, tmp_path, capsys):
    import teal_jax

    m = teal_jax.load(runs["teal"])
    run_main(tmp_path, runs["teal"], "--prompt=seven")  # no sample.task: text
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line == f"'seven' -> {m.generate_text(['seven'], max_new_tokens=4, temperature=0.8)[0]!r}"
    samples = os.path.join(runs["teal"], "samples")
    run_main(tmp_path, runs["teal"], "--prompt=seven", "--prompt=three", task="image")
    lines = capsys.readouterr().out.strip().splitlines()
    paths = [os.path.join(samples, f"image_{i:03d}.png") for i in range(2)]
    assert lines == [f"'seven' -> {paths[0]!r}", f"'three' -> {paths[1]!r}"]
    from PIL import Image

    expect = m.generate_image(["seven", "three"], temperature=0.8)  # the config's settings, seed 0
    np.testing.assert_array_equal(np.asarray(Image.open(paths[1])), expect[1, ..., 0])
    run_main(tmp_path, runs["teal"], "--prompt=seven", task="speech")
    (line,) = capsys.readouterr().out.strip().splitlines()
    wav = os.path.join(samples, "speech_000.wav")
    assert line == f"'seven' -> {wav!r}" and os.path.getsize(wav) > 44


@pytest.mark.parametrize("kind,what", [("image_vq", "image tokenizer"), ("audio_codec", "audio codec")])
def test_main_sample_on_a_tokenizer_run_exits_with_the_run_kind(runs, tmp_path, kind, what):
    with pytest.raises(SystemExit, match=rf"--mode=sample: .*an '{kind}' run \(a {what}\) has no sampler: use its "
                                         r"encode"):
        run_main(tmp_path, runs[kind])


def test_sample_settings_are_checked(runs):
    import teal_jax

    m = teal_jax.load(runs["teal"])
    with pytest.raises(ValueError, match=r"task='video'; choose one of \('text', 'image', 'speech'\)"):
        m.sample(["seven"], task="video")
    with pytest.raises(TypeError, match=r"teal sample\(\): unknown setting\(s\) \['beam'\]"):
        m.sample(["seven"], beam=4)
    with pytest.raises(TypeError, match=r"lm sample\(\): unknown setting\(s\) \['guidance_scale'\]"):
        teal_jax.load(runs["lm"]).sample(["seven"], guidance_scale=2.0)


def test_text_lm_and_teal_decode_through_the_same_loop(runs, monkeypatch):
    """One loop function: LanguageModel.generate and every TealModel task call ``sampler.decode``."""
    import teal_jax

    calls = []
    real = sampler.decode

    def spy(*args, **kwargs):
        calls.append(kwargs["step_fn"].module.__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampler, "decode", spy)
    teal_jax.load(runs["lm"]).generate(["seven"], max_new_tokens=2)
    m = teal_jax.load(runs["teal"])
    m.generate_text(["seven"], max_new_tokens=2)
    m.generate_image(["seven"])
    assert calls == ["TransformerLM", "TealLM", "TealLM"]


def test_importing_teal_jax_does_not_initialise_jax():
    code = "import sys, teal_jax; assert 'jax' not in sys.modules, 'jax imported'; print(teal_jax.load.__doc__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert "teal_jax.inference.load" in out.stdout
