"""The house rules, checked: every module imports on its own (no import cycles), the CLI's
sub-commands all load, our own modules are imported at module level only, and the runtime and
the CLI name no attack (they read the attack spec's traits)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = ("engine", "kernels", "cli")


def _modules() -> list[str]:
    out = []
    for pkg in OURS:
        for f in sorted((REPO / pkg).rglob("*.py")):
            parts = f.relative_to(REPO).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported first, with none of ours loaded before it: a cycle shows up as an
    ImportError for whichever module enters it first. Third-party modules stay loaded between
    tries (they cannot take part in our cycles), which keeps this to one interpreter."""
    code = """
import importlib, json, sys
bad = []
for name in json.loads(sys.argv[1]):
    for k in [k for k in sys.modules if k.split(".")[0] in ("engine", "kernels", "cli")]:
        del sys.modules[k]
    try:
        importlib.import_module(name)
    except Exception as e:
        bad.append(f"{name}: {type(e).__name__}: {e}")
print(json.dumps(bad))
"""
    mods = _modules()
    assert len(mods) > 30
    res = subprocess.run([sys.executable, "-c", code, json.dumps(mods)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_cli_module_runs_every_subcommand():
    """`python -m cli.main sweep --help` works (it did not while cli.main and the sweep command
    imported each other)."""
    for cmd in ("sweep", "attack", "report"):
        res = subprocess.run([sys.executable, "-m", "cli.main", cmd, "--help"], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        assert f"usage: sml {cmd}" in res.stdout


def test_cli_parses_without_loading_the_engine():
    """`sml --help` and usage errors stay instant: cli.main loads torch & co. only to run a command."""
    code = ("import sys, cli.main; cli.main.build_parser(); "
            "print(sorted({'torch', 'zarr', 'engine.runtime'} & set(sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


def _local_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    hits = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                names = [a.name for a in sub.names]
            elif isinstance(sub, ast.ImportFrom):
                names = ["." * sub.level + (sub.module or "")]
            else:
                continue
            hits += [f"{path.name}:{sub.lineno}: {n}" for n in names if n.startswith(".") or n.split(".")[0] in OURS]
    return hits


def test_no_function_local_imports_of_our_modules(tmp_path):
    hits = [h for pkg in OURS for f in sorted((REPO / pkg).rglob("*.py")) for h in _local_imports(f)]
    assert hits == []
    # The check itself finds one.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from engine import attacks\n    return attacks\n")
    assert _local_imports(bad) == ["bad.py:2: engine"]


def test_runtime_and_cli_name_no_attack():
    from engine import attacks

    names = set(attacks.names()) | set(attacks.registry.ALIASES)
    titles = {attacks.get(n).title for n in attacks.names()}
    words = sorted(names | titles | {"LPPool", "lp_pool"}, key=len, reverse=True)
    pat = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, words)) + r")(?![\w-])", re.IGNORECASE)
    found = []
    for folder in (REPO / "engine/runtime", REPO / "cli"):
        for f in sorted(folder.rglob("*.py")):
            for i, line in enumerate(f.read_text().splitlines(), 1):
                m = pat.search(line)
                if m:
                    found.append(f"{f.relative_to(REPO)}:{i}: {m.group(1)}")
    assert found == []


def test_no_two_modules_share_a_name():
    """A module's name says what it does, once: `store` in two packages had two meanings."""
    seen: dict[str, list[str]] = {}
    for pkg in OURS:
        for f in sorted((REPO / pkg).rglob("*.py")):
            if f.name != "__init__.py":
                seen.setdefault(f.stem, []).append(str(f.relative_to(REPO)))
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}


MAX_LINES = 400


def test_no_module_is_over_the_size_a_reader_can_hold():
    """Rooms of a few hundred lines that a reader can name: none in engine/, kernels/, cli/ over 400."""
    big = {str(f.relative_to(REPO)): n for pkg in OURS for f in sorted((REPO / pkg).rglob("*.py"))
           if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert big == {}
