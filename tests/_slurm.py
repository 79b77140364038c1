"""The local one-node SLURM of the tests (deploy/slurm/local-slurm.sh): wait for it, or skip."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SBATCH_SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "slurm" / "run-in-allocation.sbatch"


def require_idle_slurm() -> None:
    """Return once a SLURM node is idle; skip (with the reason) where no SLURM runs."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed here (no sinfo/sbatch): start a one-node SLURM with "
                    "`sudo deploy/slurm/local-slurm.sh` to run the SLURM tests")
    # A node still completing the previous test's jobs ("comp") becomes idle within seconds.
    deadline = time.monotonic() + 60
    while True:
        done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
        states = done.stdout.split()
        if done.returncode == 0 and any(s.rstrip("*~#") in ("idle", "mix") for s in states):
            return
        if time.monotonic() > deadline or not any(s.rstrip("*~#") in ("comp", "alloc") for s in states):
            break
        time.sleep(1)
    pytest.skip(f"no idle SLURM node (sinfo states {states}, {done.stderr.strip()!r}); "
                "run `sudo deploy/slurm/local-slurm.sh`")


def sbatch_run_in_allocation(folder: Path, env: dict) -> tuple[dict, str]:
    """Submit deploy/slurm/run-in-allocation.sbatch (1 CPU, 1.5 GB) from ``folder`` with ``env`` and
    wait for it; return the JSON its stand-in `p2g` wrote to ``env['STUB_OUT']`` and the job id."""
    done = subprocess.run(
        ["sbatch", "--wait", "--parsable", "--cpus-per-task=1", "--mem=1500M", "--time=00:10:00",
         f"--output={folder}/job-%j.out", str(SBATCH_SCRIPT), "cfg.yaml"],
        env=env, cwd=folder, capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text() for p in Path(folder).glob("job-*.out"))
    assert done.returncode == 0, done.stderr + logs
    return json.loads(Path(env["STUB_OUT"]).read_text()), done.stdout.strip().split(";")[0]
