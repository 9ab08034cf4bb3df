"""Multi-host start-up: ``jax.distributed.initialize`` from the environment, before any other JAX call.

- TPU pods, SLURM and other clusters JAX auto-detects: ``initialize('auto')`` calls it with no arguments.
- Explicit: set ``TEAL_COORDINATOR=host:port``, ``TEAL_NUM_PROCESSES`` and ``TEAL_PROCESS_ID`` (one process per host,
  or per GPU with ``TEAL_LOCAL_DEVICE_IDS``); see docs/launch.md.
"""

from __future__ import annotations

import os

import jax


def initialize(mode: str = "auto") -> None:
    """mode: 'auto' (env vars, else cluster auto-detection when one is detected), 'off', or 'force'."""
    if mode == "off":
        return
    coordinator = os.environ.get("TEAL_COORDINATOR")
    if coordinator:
        try:
            num = int(os.environ["TEAL_NUM_PROCESSES"])
            pid = int(os.environ["TEAL_PROCESS_ID"])
        except KeyError as e:
            raise ValueError(f"TEAL_COORDINATOR={coordinator} is set but {e.args[0]} is not") from None
        local = os.environ.get("TEAL_LOCAL_DEVICE_IDS")
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num, process_id=pid,
            local_device_ids=[int(x) for x in local.split(",")] if local else None,
        )
        return
    on_cluster = any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                                                "OMPI_COMM_WORLD_SIZE"))
    if mode == "force" or on_cluster:
        jax.distributed.initialize()
