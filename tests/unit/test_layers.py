"""The shared core stays engine-free at run time: importing it (and the CLI, whose commands
import their layer lazily) loads no engine or client library. ``make lint``'s import
contracts (setup.cfg, import-linter) check every import statement statically; this checks
what actually gets loaded, e.g. through a third-party module."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_engine() -> None:
    code = (
        "import sys, pkgutil, importlib, lamina\n"
        "for m in pkgutil.walk_packages(lamina.__path__, 'lamina.'):\n"
        "    if m.name != 'lamina.cli.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "engines = ('pyspark', 'cassandra', 'py4j', 'kafka', 'airflow')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in engines)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
