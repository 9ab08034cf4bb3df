"""Library notices that say nothing to a user of this project, dropped; the project prints its own one-liners.

- :func:`drop_harmless_notices` filters exactly :data:`HARMLESS_NOTICES` from absl's logger (tfds and Orbax log
  through it): tfds' "Using custom data configuration" and "Variant folder ... has no dataset_info.json" for a dataset
  about to be written, and "OpenCV is not installed" when it decodes images (PIL does it, as intended). Installed by
  ``import teal_jax``. Every other message passes.
- :func:`quiet_absl` raises absl's threshold to ERROR for a block (Orbax's by-design warnings on reads that are
  known to be fine, e.g. a per-item folder without step metadata).
"""

from __future__ import annotations

import contextlib
import logging

HARMLESS_NOTICES = ("OpenCV is not installed", "Using custom data configuration", "has no dataset_info.json")


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge: keep it
            return True
        return not any(n in msg for n in HARMLESS_NOTICES)


_FILTER = _DropHarmless()


def drop_harmless_notices() -> None:
    """Installs (once) the filter of :data:`HARMLESS_NOTICES` on absl's logger."""
    logger = logging.getLogger("absl")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


@contextlib.contextmanager
def quiet_absl():
    """absl's logging at ERROR for the block (restored after)."""
    from absl import logging as absl_logging

    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)
