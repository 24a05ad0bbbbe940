"""The package's structure: no import cycles, and every import points down the layers (README "Layout")."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llama_ft"
# Bottom to top; a module may import its own layer and those below it, never above.
LAYERS = [
    {"llama_ft.metrics", "llama_ft.files", "llama_ft.dtypes", "llama_ft.tokenizer", "llama_ft.plots", "llama_ft.heap",
     "llama_ft.hardware"},
    {"llama_ft.sources"},
    {"llama_ft.model"},
    {"llama_ft.hf", "llama_ft.train"},
    {"llama_ft.tasks"},
    {"llama_ft.cli", "llama_ft.audit", "llama_ft.pipeline", "llama_ft.predict"},
    {"llama_ft"},
]


def module_names(package: Path) -> dict[str, Path]:
    out = {}
    for f in package.rglob("*.py"):
        parts = f.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports, at the top or inside functions alike."""
    mods = module_names(package)
    graph = {}
    for name, f in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{f}: relative import; write `from llama_ft.… import …`"
                base = node.module or ""
                subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods}
                targets |= subs if len(subs) == len(node.names) else subs | {base}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in mods and t != name}
    return graph


def layer(name: str) -> int:
    for i, group in reversed(list(enumerate(LAYERS))):
        if any(name == g or name.startswith(g + ".") for g in group if g != "llama_ft") or name in group:
            return i
    raise AssertionError(f"{name} is in no layer of tests/test_layout.py; add it to LAYERS")


def test_no_import_cycles():
    graph = import_graph()
    seen, on_path, cycles = set(), [], []

    def visit(v):
        if v in on_path:
            cycles.append(on_path[on_path.index(v):] + [v])
            return
        if v in seen:
            return
        seen.add(v)
        on_path.append(v)
        for w in sorted(graph[v]):
            visit(w)
        on_path.pop()

    for v in sorted(graph):
        visit(v)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_point_down_the_layers():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in import_graph().items() for b in targets
              if layer(b) > layer(a) and not b.startswith(a + ".")]  # a package's __init__ re-exports its own
    assert not upward, "\n".join(upward)


def test_the_layout_check_sees_a_cycle(tmp_path):
    """The graph itself: two modules importing each other, one of them from inside a function."""
    pkg = tmp_path / "llama_ft"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from llama_ft.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from llama_ft.a import y\n")
    graph = import_graph(pkg)
    assert graph["llama_ft.a"] == {"llama_ft.b"} and graph["llama_ft.b"] == {"llama_ft.a"}
