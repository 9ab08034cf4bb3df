"""Every config parses its variants with teal_jax.config.parse_variants: unknown ones are errors with a suggestion."""

import importlib
import pathlib

import pytest

from teal_jax.config import SMOKE, parse_variants

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_rejects_an_unknown_variant_by_name(path):
    module = importlib.import_module(path[:-3].replace("/", "."))
    with pytest.raises(ValueError, match=rf"{path}: unknown variant 'no_such_variant'"):
        module.get_config("no_such_variant")


def test_suggestion_keyed_values_and_exclusive_groups():
    with pytest.raises(ValueError, match=r"unknown variant 'expret'; did you mean 'expert'\? known: expert, full"):
        parse_variants("expret", ("expert", "full"), config="c.py")
    v = parse_variants(" full , hf=/x/y ,", ("expert", "full"), config="c.py", keyed=("hf",))
    assert set(v) == {"full"} and v.values == {"hf": "/x/y"}
    assert parse_variants(None, ("a",), config="c.py") == frozenset()
    assert parse_variants("", (), config="c.py").values == {}
    with pytest.raises(ValueError, match="unknown variant key 'hg'"):
        parse_variants("hg=/x", (), config="c.py", keyed=("hf",))
    with pytest.raises(ValueError, match="give one non-empty hf=VALUE"):
        parse_variants("hf=a,hf=b", (), config="c.py", keyed=("hf",))
    with pytest.raises(ValueError, match=r"variants \['coarse', 'vq'\] exclude each other"):
        parse_variants("vq,coarse", ("vq", "coarse"), config="c.py", exclusive=[("vq", "coarse")])


def test_the_small_variant_has_one_name():
    """Configs with a tiny CI variant call it SMOKE, and it makes a shorter run than the default."""
    for name in ("configs.image.digits_tiny", "configs.audio.speech_tiny", "configs.teal.demo"):
        module = importlib.import_module(name)
        assert module.get_config(SMOKE).train.steps < module.get_config().train.steps, name
