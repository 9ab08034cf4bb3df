"""Quiet, informative output: a dataset build prints the project's one line, not tfds' banner, progress bars or
harmless absl notices; the notice filter drops exactly its listed messages and passes every other one."""

import logging

from absl import logging as absl_logging

import teal_jax  # noqa: F401 - installs the notice filter
from teal_jax import quiet
from teal_jax.data.digits import build_digits


def test_a_build_prints_one_line_of_ours(tmp_path, capfd):
    build_digits(str(tmp_path), 8)
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("[data] built digits_images/8px under"), out + err
    build_digits(str(tmp_path), 8)  # prepared: silent
    out, err = capfd.readouterr()
    assert out + err == ""


def test_the_filter_drops_only_the_listed_notices():
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("absl")
    logger.addHandler(handler)
    try:
        for notice in quiet.HARMLESS_NOTICES:
            absl_logging.warning("tfds says: %s (details)", notice)
        absl_logging.warning("Checkpoint step 7 is corrupt")
        absl_logging.error("OpenCV failed to decode")  # a different message: kept
    finally:
        logger.removeHandler(handler)
    assert seen == ["Checkpoint step 7 is corrupt", "OpenCV failed to decode"]
