"""The supported Python versions agree everywhere they are written down: setup.cfg's
``python_requires`` and classifiers, the Makefile's list (its prerequisite check and the
constraints file it picks) and one frozen ``constraints/py3.X.txt`` per version, each of whose
pins of a direct dependency satisfies setup.cfg."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _lines(value: str) -> list[str]:
    return [s for s in (x.split("#")[0].strip() for x in value.splitlines()) if s]


def _makefile_pythons() -> list[str]:
    match = re.search(r"^PYTHONS := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "the Makefile names the supported versions in PYTHONS"
    return match.group(1).split()


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in _lines(path.read_text()):
        name, _, version = line.partition("==")
        pins[canonicalize_name(name)] = Version(version)
    return pins


def test_python_requires_and_classifiers_name_the_makefiles_versions() -> None:
    versions = _makefile_pythons()
    assert versions == ["3.11", "3.12", "3.13"]
    cfg = _setup_cfg()
    requires = SpecifierSet(cfg["options"]["python_requires"])
    for v in versions:
        assert requires.contains(f"{v}.0") and requires.contains(f"{v}.9"), v
    assert not requires.contains("3.10.14") and not requires.contains("3.14.0")
    classified = [
        c.rsplit(" :: ", 1)[1]
        for c in _lines(cfg["metadata"]["classifiers"])
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert classified == versions


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_each_version_has_constraints_pinning_what_setup_cfg_asks(version: str) -> None:
    path = ROOT / "constraints" / f"py{version}.txt"
    assert path.is_file(), f"no frozen constraints for Python {version}"
    pins = _pins(path)
    cfg = _setup_cfg()
    wanted = _lines(cfg["options"]["install_requires"])
    for extra in ("airflow", "dev", "mutate"):
        wanted += _lines(cfg["options.extras_require"][extra])
    for line in wanted:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{path.name} does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{path.name} pins {req.name}=={pins[name]}, outside setup.cfg's {req}"
        )


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_picks_the_constraints_of_its_python() -> None:
    out = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(ROOT),
            "--eval",
            "show-constraints: ; @echo $(CONSTRAINTS)",
            "show-constraints",
            f"PYTHON={sys.executable}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert out.stdout.strip() == f"constraints/py{minor}.txt"
    assert (ROOT / out.stdout.strip()).is_file()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_rejects_a_missing_python_with_a_message() -> None:
    out = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "prereqs", "PYTHON=/nonexistent/python3.99"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "error: /nonexistent/python3.99 not found: install Python 3.11, 3.12 or 3.13" in (
        out.stdout
    )
