"""Run ``atoken ...`` in a subprocess whose address space may grow only by a given headroom.

The command's modules are imported first; then ``RLIMIT_AS`` is set to the process's current
size plus the headroom, so any allocation a small hostile file could demand (gigabytes) fails
loudly instead of succeeding quietly. A test then asserts the clear one-line error, which
shows the input was refused before anything was allocated. Linux only (reads /proc).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HAS_PROC = Path("/proc/self/status").exists()

_LIMITED = """
import resource, sys
from atoken.cli import cli
import atoken.pipeline, atoken.plugins.image.adapter  # imported before the limit
with open("/proc/self/status") as fh:
    vm = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmSize:"))
limit = vm + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(cli.main(args=sys.argv[2:], prog_name="atoken", standalone_mode=True))
"""


def run_limited(
    args: list[str], headroom: int, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``atoken ARGS`` in a subprocess that may grow by ``headroom`` bytes of address space."""
    script = cwd / "limited_atoken.py"
    script.write_text(_LIMITED)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    try:
        return subprocess.run(
            [sys.executable, str(script), str(headroom), *map(str, args)],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=full_env,
            timeout=300,
        )
    finally:
        script.unlink(missing_ok=True)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``atoken: error:`` line of a failed run (asserts exit 1 and no traceback)."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("atoken: error: "), proc.stderr
    return lines[0]
