"""Size statistics of the edgempq package, read from its syntax trees.

    python tools/code_stats.py [--json] [--top N] [PACKAGE_DIR]

Prints the median and 90th-percentile function length (lines from `def` to the last line of
the body), the longest functions, modules over 400 lines, functions with more than six
parameters, and the share of public functions and methods that carry a docstring. Issue 17's
"small pieces" rule is read off these numbers; the closing note quotes them before and after.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
MAX_PARAMS = 6


@dataclass(frozen=True)
class Function:
    """One function or method: where it is, how long, how many parameters, documented or not."""

    name: str
    module: str
    lines: int
    params: int
    public: bool
    documented: bool


def _param_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return len([n for n in names if n not in ("self", "cls")])


def _functions(tree: ast.Module, module: str) -> list[Function]:
    found: list[Function] = []

    def visit(node: ast.AST, prefix: str, public_scope: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", public_scope and not child.name.startswith("_"))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                public = public_scope and not child.name.startswith("_")
                found.append(Function(
                    name=prefix + child.name, module=module,
                    lines=child.end_lineno - child.lineno + 1, params=_param_count(child),
                    public=public, documented=ast.get_docstring(child) is not None))
                visit(child, f"{prefix}{child.name}.", False)

    visit(tree, "", True)
    return found


def collect(root: Path) -> tuple[list[Function], dict[str, int]]:
    """Every function under `root` and every module's line count."""
    functions: list[Function] = []
    modules: dict[str, int] = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(root.parent))
        modules[name] = len(text.splitlines())
        functions += _functions(ast.parse(text), name)
    return functions, modules


def summary(functions: list[Function], modules: dict[str, int], top: int) -> dict:
    """The numbers the note quotes, as one JSON-ready dict."""
    lengths = sorted(f.lines for f in functions)
    public = [f for f in functions if f.public]
    longest = sorted(functions, key=lambda f: -f.lines)[:top]
    return {
        "functions": len(functions),
        "median_lines": statistics.median(lengths),
        "p90_lines": lengths[int(0.9 * (len(lengths) - 1))],
        "longest": [asdict(f) for f in longest],
        "over_function_limit": [f"{f.module}:{f.name} ({f.lines})" for f in functions
                                if f.lines > MAX_FUNCTION_LINES],
        "over_module_limit": {m: n for m, n in modules.items() if n > MAX_MODULE_LINES},
        "over_param_limit": [f"{f.module}:{f.name} ({f.params})" for f in functions if f.params > MAX_PARAMS],
        "public": len(public),
        "public_documented": sum(f.documented for f in public),
    }


def _print(s: dict) -> None:
    share = s["public_documented"] / max(s["public"], 1)
    print(f"{s['functions']} functions: median {s['median_lines']} lines, p90 {s['p90_lines']}")
    print(f"docstrings: {s['public_documented']}/{s['public']} public functions and methods ({share:.0%})")
    print("longest:")
    for f in s["longest"]:
        print(f"  {f['lines']:4d}  {f['module']}:{f['name']}")
    for key, label in (("over_function_limit", f"functions over {MAX_FUNCTION_LINES} lines"),
                       ("over_param_limit", f"functions with more than {MAX_PARAMS} parameters")):
        print(f"{label}: {len(s[key])}")
        for item in s[key]:
            print(f"  {item}")
    print(f"modules over {MAX_MODULE_LINES} lines: {len(s['over_module_limit'])}")
    for m, n in s["over_module_limit"].items():
        print(f"  {n:4d}  {m}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parent.parent / "edgempq"))
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--top", type=int, default=8, help="how many of the longest functions to list")
    args = ap.parse_args(argv)
    s = summary(*collect(Path(args.root)), top=args.top)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        _print(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
