"""Run the named mutants of ``tests/mutants.toml``: each must make its tests fail.

Usage: ``python -m tests.mutants [--only ID ...] [--json PATH] [--keep] [--mutmut-stats F]``.

Each mutant is applied to a fresh copy of the tracked tree (``git ls-files``, plus
uncommitted edits) under a temporary directory, and the listed tests run there with ``pytest
-x`` against the real local stack (started by the test session as usual). The mutant is
*killed* when pytest reports failed tests (exit status 1); a mutant whose tests pass
*survived*; any other exit status (collection error, interrupted, no tests) is an *error*,
counted as not killed."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "tests" / "mutants.toml"


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    old: str
    new: str
    tests: list[str]
    why: str


def load(path: Path = CATALOGUE) -> list[Mutant]:
    """The catalogue; raises ``ValueError`` when a mutant's ``old`` text is not found exactly
    once in its file (the code moved on: update the catalogue)."""
    mutants = [Mutant(**m) for m in tomllib.loads(path.read_text())["mutant"]]
    for m in mutants:
        n = (ROOT / m.file).read_text().count(m.old)
        if n != 1:
            raise ValueError(f"mutant {m.id}: {m.file} holds its text {n} times, not once")
    return mutants


def copy_tree(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files of the work tree, as they are now."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def run(m: Mutant, workdir: Path, timeout_s: float) -> tuple[str, float, str]:
    """Apply ``m`` to a copy under ``workdir``, run its tests: (outcome, seconds, log tail)."""
    tree = workdir / m.id
    copy_tree(tree)
    target = tree / m.file
    target.write_text(target.read_text().replace(m.old, m.new, 1))
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
    ]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [*cmd, *m.tests], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout_s
        )
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, out = -1, f"timed out after {timeout_s:.0f}s\n{e.stdout or ''}"
    outcome = {0: "survived", 1: "killed"}.get(code, f"error (exit {code})")
    return outcome, time.monotonic() - t0, "\n".join(str(out).splitlines()[-15:])


def mutmut_score(stats: dict[str, int]) -> str:
    """One line from ``mutmut export-cicd-stats``: the score over the mutants some unit test
    reaches (killed / killed + survived + timeout), and the unreached ones apart."""
    reached = stats["killed"] + stats["survived"] + stats["timeout"]
    score = stats["killed"] / reached if reached else 0.0
    return (
        f"mutmut (unit tier): {stats['killed']}/{reached} reached mutants killed "
        f"({score:.1%}), {stats['survived']} survived, {stats['timeout']} timed out; "
        f"{stats['no_tests']} of {stats['total']} reached by no unit test "
        "(integration-only code: see the named mutants)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__)
    p.add_argument("--only", nargs="*", default=None, metavar="ID", help="run these mutants")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--timeout", type=float, default=900, help="seconds per mutant (900)")
    p.add_argument("--keep", action="store_true", help="keep the mutated copies")
    p.add_argument(
        "--mutmut-stats", type=Path, help="print the score of this mutmut export-cicd-stats file"
    )
    args = p.parse_args(argv)
    mutmut = None
    if args.mutmut_stats:
        mutmut = json.loads(args.mutmut_stats.read_text())
        print(mutmut_score(mutmut), flush=True)
    mutants = load()
    if args.only:
        unknown = set(args.only) - {m.id for m in mutants}
        if unknown:
            p.error(f"unknown mutant(s): {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.id in args.only]
    workdir = Path(tempfile.mkdtemp(prefix="lamina-mutants-"))
    results = []
    try:
        for i, m in enumerate(mutants, 1):
            print(f"[{i}/{len(mutants)}] {m.id}: {m.why}", flush=True)
            outcome, secs, tail = run(m, workdir, args.timeout)
            print(f"    {outcome} in {secs:.0f}s", flush=True)
            if outcome != "killed":
                print("    " + tail.replace("\n", "\n    "), flush=True)
            results.append({"id": m.id, "outcome": outcome, "seconds": round(secs, 1)})
            if not args.keep:
                shutil.rmtree(workdir / m.id, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    killed = sum(r["outcome"] == "killed" for r in results)
    print(f"named mutants killed: {killed}/{len(results)}")
    if mutmut is not None:
        print(mutmut_score(mutmut))
    if args.json:
        report = {"killed": killed, "total": len(results), "mutants": results, "mutmut": mutmut}
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
