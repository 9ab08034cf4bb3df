"""Dataset builds are atomic: a build SIGKILLed midway leaves nothing a later run mistakes for a complete dataset;
the next build starts over and gives exactly what a clean build gives (tfds writes into a temporary folder and
renames it when done; our manifests are written last, through a temporary file)."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow_datasets as tfds

from teal_jax.data import digits
from teal_jax.data.text_builder import build_text_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_KILL_AFTER = textwrap.dedent("""
    import os, signal, sys
    from {module} import {cls} as B
    real = B._generate_examples
    def dying(self, *args, **kwargs):
        for i, example in enumerate(real(self, *args, **kwargs)):
            if i == {after}:
                os.kill(os.getpid(), signal.SIGKILL)  # killed midway through writing the split
            yield example
    B._generate_examples = dying
    {call}
""")


def _killed(module, cls, after, call):
    script = _KILL_AFTER.format(module=module, cls=cls, after=after, call=call)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]


def _records(name, data_dir, split):
    src = tfds.data_source(name, data_dir=data_dir, split=split)
    return [src[i] for i in range(len(src))]


def test_killed_text_build_is_redone_completely(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"document number {i}" for i in range(400)) + "\n")
    killed_dir = tmp_path / "killed"
    _killed("teal_jax.data.text_builder", "LocalTextCorpus", 150,
            f"from teal_jax.data.text_builder import build_text_dataset\n"
            f"build_text_dataset([{str(corpus)!r}], {str(killed_dir)!r})")
    name = build_text_dataset([str(corpus)], str(killed_dir))  # finds no complete dataset: builds it again
    clean = build_text_dataset([str(corpus)], str(tmp_path / "clean"))
    assert name == clean
    for split in ("train", "eval"):
        got, want = _records(name, str(killed_dir), split), _records(clean, str(tmp_path / "clean"), split)
        assert len(got) == len(want) > 0
        assert [r["index"] for r in got] == [r["index"] for r in want]


def test_killed_digits_build_is_redone_completely(tmp_path):
    _killed("teal_jax.data.digits", "DigitsImages", 300,
            f"from teal_jax.data.digits import build_digits\nbuild_digits({str(tmp_path / 'killed')!r})")
    digits.build_digits(str(tmp_path / "killed"))
    digits.build_digits(str(tmp_path / "clean"))
    for split in ("train", "test"):
        got = _records("digits_images/32px", str(tmp_path / "killed"), split)
        want = _records("digits_images/32px", str(tmp_path / "clean"), split)
        assert len(got) == len(want) > 200
        np.testing.assert_array_equal(np.stack([r["image"] for r in got]), np.stack([r["image"] for r in want]))
