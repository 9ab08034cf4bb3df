"""The import graph follows the layering of docs/architecture.md: no module imports from a layer above its own.

Every ``import``/``from ... import`` of a teal_jax module counts, including the ones inside functions (a lazy import
is still an arrow). Modules of one layer may import each other.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "teal_jax"

# Lowest first; a module belongs to the first entry whose prefix matches (longest prefix wins).
LAYERS = {
    "base": ("teal_jax.config", "teal_jax.vocab", "teal_jax.media", "teal_jax.checkpoint", "teal_jax.lineage",
             "teal_jax.parallel", "teal_jax.paths", "teal_jax.quiet"),
    "models": ("teal_jax.models",),
    "tokenizers": ("teal_jax.tokenizers", "teal_jax.convert"),
    "data": ("teal_jax.data",),
    "inference": ("teal_jax.inference",),
    "evaluate": ("teal_jax.evaluate",),
    "train": ("teal_jax.train",),
    "app": ("teal_jax.main", "teal_jax.demo", "teal_jax.demo_report", "teal_jax.demo_semantic", "teal_jax"),
}
RANK = {name: i for i, name in enumerate(LAYERS)}


def layer_of(module: str) -> str:
    best, best_len = None, -1
    for name, prefixes in LAYERS.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = name, len(p)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")
    return best


def module_name(path: pathlib.Path) -> str:
    parts = ("teal_jax",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("teal_jax")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("teal_jax"):
            for a in node.names:  # `from teal_jax.data import speech` imports teal_jax.data.speech
                sub = f"{node.module}.{a.name}"
                is_module = (ROOT.parent / (sub.replace(".", "/") + ".py")).exists() or (
                    ROOT.parent / sub.replace(".", "/")).is_dir()
                out.append((node.lineno, sub if is_module else node.module))
    return out


def edges():
    for path in sorted(ROOT.rglob("*.py")):
        src = module_name(path)
        for line, dst in imports_of(path):
            yield path, line, src, dst


def test_every_module_has_a_layer():
    for path in ROOT.rglob("*.py"):
        layer_of(module_name(path))


def test_no_import_points_up():
    upward = [
        f"{path.relative_to(ROOT.parent)}:{line}: {src} ({layer_of(src)}) imports {dst} ({layer_of(dst)})"
        for path, line, src, dst in edges()
        if RANK[layer_of(dst)] > RANK[layer_of(src)]
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


@pytest.mark.parametrize("src,dst,ok", [
    ("teal_jax.tokenizers.image", "teal_jax.data.image_pipeline", False),
    ("teal_jax.data.lm", "teal_jax.media.text", True),
    ("teal_jax.vocab", "teal_jax.models.teal", False),
    ("teal_jax.train.trainer", "teal_jax.evaluate.image", True),
])
def test_the_rule_itself(src, dst, ok):
    """The check is not vacuous: an arrow from tokenizers/ to data/ is upward, one from data/ to media/ is not."""
    assert (RANK[layer_of(dst)] <= RANK[layer_of(src)]) is ok
