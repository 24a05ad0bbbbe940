"""What the recipes need is installed with llama_ft: every third-party module the package imports is in
setup.cfg's install_requires, except the optional ones, whose import failure names the pip command."""
import ast
import configparser
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Optional: only a path the user chooses imports them, and its error says how to install them.
OPTIONAL = {"datasets": "pip install datasets"}


def third_party_imports() -> dict[str, set[Path]]:
    """module -> the package files importing it, at the top or inside functions alike."""
    found: dict[str, set[Path]] = {}
    for f in (ROOT / "llama_ft").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names}:
                if top != "llama_ft" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(f)
    return found


def install_requires() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return {re.split(r"[<>=!~ \[]", ln.strip())[0].lower().replace("-", "_")
            for ln in cfg["options"]["install_requires"].splitlines() if ln.strip()}


def test_every_module_the_package_imports_is_required_or_optional_with_its_pip_command():
    required, imports = install_requires(), third_party_imports()
    assert {"pyarrow", "nltk"} <= set(imports)  # the Hub's parquet data and SQuAD's METEOR, on the default paths
    undeclared = sorted(m for m in imports if m not in required and m not in OPTIONAL)
    assert not undeclared, f"imported by llama_ft but not in install_requires: {undeclared}"
    for module, pip in OPTIONAL.items():
        for f in imports.get(module, ()):
            assert pip in f.read_text(), f"{f} imports {module} without naming `{pip}`"
