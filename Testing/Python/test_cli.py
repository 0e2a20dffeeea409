"""The command line: dispatcher, info, clear errors instead of tracebacks."""

import subprocess
import sys

from medvlsam2.cli import main


def test_info_lists_every_named_config(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert all(f"[{name}]" in out for name in ("tiny", "base", "paper")) and "device:" in out


def test_errors_are_one_line_messages(capsys):
    assert main(["weights", "path", "no-such-weights"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown weights") and "Traceback" not in err


def test_package_import_is_light():
    code = "import sys, medvlsam2, medvlsam2.errors, medvlsam2.utils.cancel; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
