"""Issue 13 item 6: what numpy and the native libraries print is captured and put in IMAGIO's words.

No input of the attack suite makes numpy or GDCM print (Testing/attacks/README.md); these tests drive the two
mechanisms directly: the CLI's warning hook (numeric RuntimeWarnings from numpy go to the debug log, any other
warning is one ``imagio: warning:`` line) and ``guards.native_stderr`` (bytes that native code writes to file
descriptor 2 are captured, not shown, and logged at debug level)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np

from imagio import cli
from imagio.guards import native_stderr


def test_numpy_numeric_warnings_go_to_the_debug_log(capsys, caplog):
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG, logger="imagio"):  # restores showwarning
        warnings.simplefilter("always")
        warnings.showwarning = cli._show_warning  # as cli.main installs it without --debug
        with np.errstate(all="warn"):
            r = np.array([0.0, 1.0]) / np.array([0.0, 0.0])  # numpy's own RuntimeWarnings
            m = np.mean(np.array([]))
        warnings.warn("a model card field is deprecated", UserWarning, stacklevel=1)
    assert np.isnan(r[0]) and np.isinf(r[1]) and np.isnan(m)
    err = capsys.readouterr().err.splitlines()
    assert err == ["imagio: warning: a model card field is deprecated"], err  # numpy's lines are not shown
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    assert "invalid value encountered in divide" in logged and "Mean of empty slice" in logged


def test_native_writes_to_stderr_are_captured(caplog):
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    msg = b"GDCM warning: native library output on fd 2\n"
    with caplog.at_level(logging.DEBUG, logger="imagio"), native_stderr() as lines:
        libc.write(2, msg, len(msg))  # as C++ code writes: not through Python's sys.stderr
    assert lines == ["GDCM warning: native library output on fd 2"]
    assert "native library output on fd 2" in " ".join(r.getMessage() for r in caplog.records)


def test_native_stderr_hides_native_output_from_the_terminal():
    """In a separate process, so the check reads the real file descriptor 2: nothing of the native write reaches
    it, and what Python writes after the block does."""
    code = textwrap.dedent("""
        import ctypes, ctypes.util, sys
        from imagio.guards import native_stderr
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        with native_stderr():
            libc.write(2, b"ITK WARNING raw\\n", 16)
        print("imagio: warning: in our words", file=sys.stderr)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ["imagio: warning: in our words"], out.stderr
