"""Helpers of the tests that start Ray clusters of their own, beside the session's."""

import os
import signal
import socket
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_processes_mentioning(marker: str) -> None:
    """SIGKILL the processes whose command line holds `marker` (a test's own temp dir or address): only that
    test's Ray, where `ray stop` would stop every Ray of the user, the session's included."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


@pytest.fixture
def free_port():
    """`free_port()`: a TCP port on 127.0.0.1 that nothing listens on now."""
    return _free_port


@pytest.fixture
def kill_processes_mentioning():
    """`kill_processes_mentioning(marker)`: stop a Ray the test started, by a marker in its processes' command lines."""
    return _kill_processes_mentioning
