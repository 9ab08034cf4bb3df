"""The launchers' dry runs print the exact per-host commands: every process gets its coordinator, process count,
process id (and local device under SLURM / per-GPU), and an override with shell characters arrives intact."""

import os
import shlex
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = "--config.mesh.shape=(1,-1,1)"


def _run(args, **env):
    out = subprocess.run(["bash", *args], cwd=REPO, env=dict(os.environ, **env), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_local_multiprocess_dry_run():
    lines = _run(["launch/local_multiprocess.sh", "--dry-run", "2", "configs/lm/tiny.py:synthetic", "/tmp/r", MESH])
    assert len(lines) == 2
    for i, line in enumerate(lines):
        argv = shlex.split(line)
        assert argv[:4] == ["env", "TEAL_COORDINATOR=127.0.0.1:12355", "TEAL_NUM_PROCESSES=2", f"TEAL_PROCESS_ID={i}"]
        assert argv[4:] == ["python3", "-m", "teal_jax.main", "--config=configs/lm/tiny.py:synthetic",
                            "--workdir=/tmp/r", MESH]
    gpu = _run(["launch/local_multiprocess.sh", "--dry-run", "2", "c.py", "/w"], TEAL_PER_PROCESS_GPU="1")
    assert "TEAL_LOCAL_DEVICE_IDS=1" in shlex.split(gpu[1])  # an env assignment, not a command to run


def test_slurm_dry_run_gives_every_gpu_its_own_process():
    lines = _run(["launch/slurm_gpu.sbatch", "configs/lm/tinyllama_1b.py", "/shared/r", MESH], DRY_RUN="1",
                 SLURM_JOB_NODELIST="node1,node2", SLURM_NNODES="2")
    argv = shlex.split(lines[0])
    assert argv[0] == "srun" and "--export=ALL,TEAL_COORDINATOR=node1:12355,TEAL_NUM_PROCESSES=16" in argv
    assert argv[-3:] == ["--config=configs/lm/tinyllama_1b.py", "--workdir=/shared/r", MESH]
    tasks = [line for line in lines if line.startswith("# task")]
    assert len(tasks) == 16 and tasks[9].endswith("TEAL_PROCESS_ID=9 TEAL_LOCAL_DEVICE_IDS=1")
    # What each task runs: the bash -c wrapper exports SLURM's per-task ids, then execs the arguments as given.
    wrapper = argv[argv.index("-c") + 1]
    out = subprocess.run(["bash", "-c", wrapper, "teal_task", "python3", "-c", "import os, sys; print(os.environ["
                          "'TEAL_PROCESS_ID'], os.environ['TEAL_LOCAL_DEVICE_IDS'], sys.argv[1])", MESH],
                         env=dict(os.environ, SLURM_PROCID="9", SLURM_LOCALID="1"), capture_output=True, text=True)
    assert out.stdout.split() == ["9", "1", MESH], out.stderr
    sbatch = open(os.path.join(REPO, "launch/slurm_gpu.sbatch")).read()
    assert "#SBATCH --signal=TERM@120" in sbatch and "#SBATCH --requeue" in sbatch


def test_tpu_pod_dry_run_syncs_installs_and_runs_detached():
    lines = _run(["launch/tpu_pod.sh", "start", "mytpu", "us-central2-b", "configs/lm/tinyllama_1b.py",
                  "gs://b/runs/lm", MESH], DRY_RUN="1")
    assert shlex.split(lines[0])[:3] == ["git", "-C", REPO]
    assert shlex.split(lines[1])[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    ssh = shlex.split(lines[-1])
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mytpu"] and "--worker=all" in ssh
    remote = ssh[ssh.index("--command") + 1]
    assert "pip install -q -e '.[tpu]'" in remote and "nohup python3 -m teal_jax.main" in remote
    # The remote shell sees the override as one intact argument.
    train = remote[remote.index("python3 -m teal_jax.main"):remote.index(" > ")]
    assert shlex.split(train)[-1] == MESH and "--multihost=force" in shlex.split(train)
    stop = shlex.split(_run(["launch/tpu_pod.sh", "stop", "t", "z"], DRY_RUN="1")[0])
    assert stop[stop.index("--command") + 1] == "pkill -TERM -f 'teal_jax.main' || true"
    tail = shlex.split(_run(["launch/tpu_pod.sh", "tail", "t", "z"], DRY_RUN="1")[0])
    assert "tail -n 20 $HOME/teal_jax_logs/train.log" in tail[tail.index("--command") + 1]
