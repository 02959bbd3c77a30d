"""The shape of the package (docs/architecture.md): layers, no import cycles, no private names.

The layers and the cycles are import-linter's contracts in pyproject.toml ([tool.importlinter]);
this runs them, so that the README's test command fails on a broken contract as CI does. The
private-name rule is ours: a module never imports or reaches for another module's ``_name``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mail2ticket"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _lint_imports() -> str:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is missing: install the test extra (.ci/install-test-deps, or "
                    "pip install -e '.[test]'), which brings import-linter")
    return found


def test_the_import_contracts_hold():
    """cli > service > intake > outgoing > tickets > accounts > parse | transport > config >
    files > errors, every subpackage in a layer, and no cycle between sibling modules."""
    run = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 2 kept, 0 broken." in run.stdout, run.stdout


def test_no_module_imports_or_reaches_into_another_modules_private_names():
    modules = _modules()
    short = {name.rpartition(".")[2]: name for name in modules}
    found = []
    for name, path in sorted(modules.items()):
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}  # local name -> mail2ticket module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mail2ticket"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    if target in modules:  # `from mail2ticket.pkg import module`
                        aliases[alias.asname or alias.name] = target
                    elif alias.name.startswith("_") and not alias.name.startswith("__") and node.module != name:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and node.value.id in aliases and aliases[node.value.id] != name):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: uses {aliases[node.value.id]}.{node.attr}")
    assert not found, "\n".join(found) + f"\n(known modules: {len(short)})"


def test_the_architecture_page_names_every_package_and_the_readme_table_names_every_module():
    """The map is true: docs/architecture.md names each subpackage, the README's 'Where things
    are' table each module file, and neither names a module that does not exist."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    missing = [p for p in packages if f"`{p}/`" not in page]
    assert not missing, f"docs/architecture.md does not name: {missing}"
    files = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    unnamed = [f for f in files if f"`{f}`" not in table and f"`{f.rpartition('/')[2]}`" not in table]
    assert not unnamed, f"README 'Where things are' does not name: {unnamed}"
    import re

    for text, where in ((page, "docs/architecture.md"), (table, "README.md")):
        for ref in re.findall(r"`(?:mail2ticket/)?([a-z_]+/[a-z_]+\.py)`", text):
            if ref.split("/")[0] in packages:
                assert (PACKAGE / ref).exists(), f"{where} names {ref}, which does not exist"
