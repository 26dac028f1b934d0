"""The shared core stays engine-free: importing it loads neither pyspark nor the driver."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_engine() -> None:
    code = (
        "import sys, lamina.settings, lamina.errors, lamina.cli, lamina.stack.manager\n"
        "engines = ('pyspark', 'cassandra', 'py4j')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in engines)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
