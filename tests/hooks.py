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
