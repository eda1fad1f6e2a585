"""Python run first in a child process of a test, to hold it at a chosen point (see the tests of folder jobs)."""

from __future__ import annotations


def pause_before_reading(module: str) -> str:
    """Code that makes ``module.load_image`` wait, once the job is running, until the file ``GO`` appears in the
    folder given as the command line's last argument (removed from it); ``STARTED`` appears there first."""
    return f"""
import time, pathlib, {module} as job
real, signals = job.load_image, pathlib.Path(sys.argv.pop())
def wait_then_load(path):
    (signals / "STARTED").touch()
    while not (signals / "GO").exists():
        time.sleep(0.02)
    return real(path)
job.load_image = wait_then_load
"""


def release(process, signals) -> tuple[str, str]:
    """Let a process paused by :func:`pause_before_reading` go on and wait for it (killed if it does not end),
    so that a failing test leaves no process behind; returns its (stdout, stderr)."""
    (signals / "GO").touch()
    try:
        return process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
