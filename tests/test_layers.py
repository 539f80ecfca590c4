"""The layers of docs/ARCHITECTURE.md: lower layers never import higher ones, and the
installed package never imports the test-only helpers (tests/helpers)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: module -> packages / modules it must not load, directly or through what it imports
NEVER = {
    "ecdp.grid": ["ecdp.report"],                     # the workflow layer below the report
    "ecdp.timing": ["ecdp.sampler_study", "ecdp.report", "ecdp.grid"],
    "ecdp.training": ["ecdp.model", "baselines", "ecdp.grid", "ecdp.report"],   # the loop knows no method
    "ecdp.weights": ["ecdp.model", "ecdp.training", "ecdp.grid", "ecdp.report"],
}


def test_lower_layers_do_not_load_higher_ones():
    code = ("import importlib, json, sys\n"
            f"never = {NEVER!r}\n"
            "bad = {}\n"
            "for mod, banned in never.items():\n"
            "    before = set(sys.modules)\n"
            "    for m in [m for m in sys.modules if m.startswith(('ecdp', 'baselines'))]:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module(mod)\n"
            "    bad[mod] = sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in banned))\n"
            "print(json.dumps(bad))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    bad = json.loads(res.stdout.strip().splitlines()[-1])
    assert bad == {mod: [] for mod in NEVER}, bad


def test_package_never_imports_test_helpers():
    for folder in ("ecdp", "baselines"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                assert not any(n.split(".")[0] in ("helpers", "tests", "conftest") for n in names), (path, names)
    assert not (ROOT / "ecdp" / "testing.py").exists() and not (ROOT / "ecdp" / "memory.py").exists()


def test_architecture_names_existing_files():
    """Every repository path docs/ARCHITECTURE.md names in backticks exists (a moved
    module takes its line in the design with it)."""
    import re

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    paths = set(re.findall(r"`((?:ecdp|baselines|workflow|tests|config|examples|docs)/[^`\s]*)`", text))
    missing = sorted(p for p in paths if not any(c in p for c in "<*{") and not (ROOT / p).exists())
    assert paths and not missing, missing
