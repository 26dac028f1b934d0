"""The named-mutant catalogue of ``make mutate`` stays in step with the code (a refactor that
moves a mutated line must update ``tests/mutants.toml``, or ``make mutate`` would error)."""

from __future__ import annotations

from pathlib import Path

from tests import mutants


def test_every_mutant_text_occurs_exactly_once_and_its_tests_exist() -> None:
    catalogue = mutants.load()
    assert len({m.id for m in catalogue}) == len(catalogue)
    for m in catalogue:
        for test in m.tests:
            assert (mutants.ROOT / Path(test.split("::")[0])).is_file(), (m.id, test)
