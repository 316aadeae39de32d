"""The core's layering: no import cycle, and no Nipype or click in it."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import usb_prep

ROOT = Path(usb_prep.__file__).resolve().parent
SHELLS = ("cli",)  # the thin shells inside the package (interfaces and pipelines live outside it)


def _core_modules():
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in SHELLS or rel.parts[0] == "weights":
            continue
        yield p, ".".join(("usb_prep", *rel.with_suffix("").parts)).removesuffix(".__init__")


def _imports(path: Path, name: str, is_pkg: bool):
    """Every usb_prep module ``path`` imports (module level or inside functions)."""
    pkg = name if is_pkg else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("usb_prep"):
                continue
            for a in node.names:  # "from . import crops": the submodule; "from . import __version__": the package
                sub = f"{base}.{a.name}"
                out.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                        or (ROOT.parent / sub.replace(".", "/")).is_dir() else base)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("usb_prep")}
    return out


def test_core_has_no_import_cycle():
    graph = {}
    for p, name in _core_modules():
        graph[name] = {m for m in _imports(p, name, p.name == "__init__.py") if m != name}
    graph.pop("usb_prep", None)  # the package facade imports api lazily, by design
    state, cycle = {}, []

    def visit(n, stack):
        state[n] = "open"
        for m in sorted(graph.get(n, ())):
            if m not in graph:
                continue
            if state.get(m) == "open":
                cycle.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycle, f"import cycle(s): {cycle}"
    assert "usb_prep.fill.settings" in graph and len(graph) > 30


def test_core_imports_no_nipype_or_click():
    mods = [name for _, name in _core_modules() if name != "usb_prep"]
    code = ("import sys, importlib\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('nipype', 'click'))\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"core imports {r.stdout.strip()} {r.stderr[-500:]}"


def test_fillers_and_tissue_classes_live_in_the_core():
    """The fillers a user can pick live in ``usb_prep.fill.fillers`` and the tissue k-means in ``usb_prep.tissue``;
    the weights format, the contrast maps and the tissue module pull in neither a filler nor the patch engine."""
    import importlib.util

    assert importlib.util.find_spec("usb_prep.classical") is None
    from usb_prep.fill.fillers import FILLERS

    assert set(FILLERS) == {"wmstats", "patch", "nlm"}
    code = ("import sys, usb_prep.weights, usb_prep.data.contrast, usb_prep.tissue; "
            "print(sorted(m for m in sys.modules if m.startswith('usb_prep.fill.') and m != 'usb_prep.fill.settings'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_readme_is_a_users_page():
    """At most 300 lines, no dates (run stories live in docs/benchmarks.md, the model card, the CHANGELOG)."""
    import re

    readme = ROOT.parent / "README.md"
    if not readme.exists():
        pytest.skip("an installed copy without the source tree")
    text = readme.read_text()
    assert len(text.splitlines()) <= 300
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), re.findall(r"\b20\d\d-\d\d-\d\d\b", text)
    assert "docs/benchmarks.md" in text and (ROOT.parent / "docs" / "benchmarks.md").exists()


def test_benchmarks_are_one_tool_without_machine_paths(capsys):
    """``python -m benchmarks`` lists every command; each one's --help works; no script holds a machine's path or
    edits sys.path; logs and results are data under results/."""
    bench = ROOT.parent / "benchmarks"
    if not (bench / "__main__.py").exists():
        pytest.skip("an installed copy without the source tree")
    sys.path.insert(0, str(ROOT.parent))
    try:
        from benchmarks.__main__ import COMMANDS, STUDIES, main
    finally:
        sys.path.remove(str(ROOT.parent))
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    for name in [*COMMANDS, *STUDIES]:
        assert name in listed
        argv = [name, "--help"] if name in COMMANDS else ["study", name, "--help"]
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0, name
        assert "usage:" in capsys.readouterr().out
    for py in [*bench.glob("*.py"), *bench.glob("studies/*.py")]:
        text = py.read_text()
        assert "/work/" not in text and "sys.path" not in text, py
    strays = [p for p in bench.rglob("*") if p.suffix in (".jsonl", ".log") and "results" not in p.parts
              and "cache" not in p.parts]
    assert not strays, strays
