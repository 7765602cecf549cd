"""The shape of a checkout of scvae: modules, sizes, import cycles and the files a fit walks.

Given ``--root PATH`` (a folder holding the ``scvae/`` package), prints one JSON object with:

- ``modules_per_folder``: the ``.py`` modules of ``scvae/`` and of each subfolder, not counting
  ``__init__.py`` (``init_files`` says which folders have one); ``n_modules`` is their total.
- ``largest_module``: the longest ``.py`` file (path and line count).
- ``largest_function``: the longest function or method by ``end_lineno - lineno + 1`` (``ast``;
  the ``def`` line to the last line of the body, decorators not counted, nested functions
  counted both on their own and inside the function holding them), with its path, qualified
  name, lines and parameters; ``most_parameters``: the function with the most parameters.
  Parameters are every argument (positional-only, positional, keyword-only, ``*args`` and
  ``**kwargs`` count one each), less a method's leading ``self`` or ``cls``. ``ties`` counts
  the other functions with the same value.
- ``import_cycles``: the strongly connected components (Tarjan) of more than one module in the
  graph of imports among scvae's own modules. Every ``import`` and ``from ... import`` in a
  file is an edge, wherever it sits (module level, ``if TYPE_CHECKING:``, inside a ``def``);
  relative imports are resolved against the file's package; ``from pkg import name`` points
  to the module ``pkg.name`` when such a file exists, else to ``pkg``; ``import a.b`` points to
  ``a.b`` (the longest prefix that is a module). Each component lists its edges with the file,
  line and import text; ``runtime_cycles`` are the components left once the imports under
  ``if TYPE_CHECKING:`` (never run) are dropped. ``function_local_imports`` counts the
  imports of scvae modules nested inside a ``def`` (``type_checking_imports`` those under
  ``if TYPE_CHECKING:``).
- ``files_entered_by_fit``: a subprocess with ``PYTHONPATH=<root>`` (checked:
  ``scvae.__file__`` lies under root) runs ``scvae.fit(a, max_epochs=1, progress=False)`` on
  ``a = scvae.datasets.simulate(200, 30, n_groups=2, seed=0)`` under ``sys.setprofile``. It
  records, in order of first entry, the distinct scvae source files entered by a Python call
  (a ``call`` event whose code file lies under ``root/scvae``; module bodies run by imports
  inside the fit count as calls) until the first call of a function named ``model`` defined
  in the file that defines ``SCVAEModule`` (``scvae._module`` in old checkouts,
  ``scvae._vae.module`` in new ones). ``climbs_back_up`` counts the calls that *climb back
  up*: a call from a file that appears later in the entry order into a different file that
  appeared earlier (a return to an already-entered file via a call, not via a ``return``).
  The calling file is that of the nearest scvae frame on the stack, so a call that goes through
  torch or pyro (``nn.Module.__call__``, ``pyro.plate``) counts as made by the scvae file
  that started it. ``climb_edges`` lists the (caller file, callee file) pairs and their counts.
- ``lines_of_code``: the non-blank lines of every ``.py`` file under ``scvae/``
  (``total_lines`` counts all lines).

Run from anywhere, with any interpreter that has scvae's dependencies::

    python benchmarks/code_metrics.py --root /path/to/checkout
    python benchmarks/code_metrics.py --root old_checkout new_checkout --markdown

With several roots the JSON object maps each root to its metrics; ``--markdown`` adds a summary
table (one column per root) after the JSON; ``--no-fit`` skips the traced fit.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

PACKAGE = "scvae"
MODULE_CANDIDATES = ("scvae._module", "scvae._vae.module")


def python_files(root: Path) -> list[Path]:
    """The ``.py`` files under ``root/scvae``, sorted, without ``__pycache__``.

    Parameters
    ----------
    root
        Folder holding the ``scvae/`` package.

    Returns
    -------
    list of Path
        Absolute paths, sorted.
    """
    return sorted(p for p in (root / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(root: Path, path: Path) -> str:
    """Dotted module name of ``path`` (``scvae/_data/__init__.py`` is ``scvae._data``).

    Parameters
    ----------
    root
        Folder holding the ``scvae/`` package.
    path
        A ``.py`` file under ``root/scvae``.

    Returns
    -------
    str
        The dotted name.
    """
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def folder_counts(root: Path, files: list[Path]) -> tuple[dict[str, int], dict[str, bool]]:
    """Modules per folder (``__init__.py`` not counted) and whether each folder has one.

    Parameters
    ----------
    root
        Folder holding the ``scvae/`` package.
    files
        The package's ``.py`` files.

    Returns
    -------
    counts : dict of str to int
        Folder (relative, ``/``-separated) to its number of modules.
    init_files : dict of str to bool
        Folder to whether it holds an ``__init__.py``.
    """
    counts: dict[str, int] = {}
    init_files: dict[str, bool] = {}
    for path in files:
        folder = path.parent.relative_to(root).as_posix()
        counts.setdefault(folder, 0)
        init_files.setdefault(folder, False)
        if path.name == "__init__.py":
            init_files[folder] = True
        else:
            counts[folder] += 1
    return dict(sorted(counts.items())), dict(sorted(init_files.items()))


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef, in_class: bool) -> int:
    """Parameters of a function, less a method's leading ``self`` or ``cls``.

    Parameters
    ----------
    node
        The function's ``ast`` node.
    in_class
        Whether the function is defined directly in a class body.

    Returns
    -------
    int
        Positional-only, positional and keyword-only arguments, plus one each for ``*args``
        and ``**kwargs``.
    """
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    count = len(positional) + len(args.kwonlyargs)
    count += (args.vararg is not None) + (args.kwarg is not None)
    if in_class and positional and positional[0].arg in ("self", "cls"):
        count -= 1
    return count


def functions(tree: ast.Module, rel: str) -> list[dict]:
    """Every function and method of a file, with its qualified name, lines and parameters.

    Parameters
    ----------
    tree
        The parsed file.
    rel
        The file's path relative to the root, for the records.

    Returns
    -------
    list of dict
        One record per ``def`` (``path``, ``name``, ``lineno``, ``lines``, ``parameters``).
    """
    records = []

    def visit(node: ast.AST, prefix: str, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                records.append(
                    {
                        "path": rel,
                        "name": name,
                        "lineno": child.lineno,
                        "lines": child.end_lineno - child.lineno + 1,
                        "parameters": parameter_count(child, in_class),
                    }
                )
                visit(child, f"{name}.<locals>.", False)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", True)
            else:
                visit(child, prefix, in_class)

    visit(tree, "", False)
    return records


def largest(records: list[dict], key: str) -> dict:
    """The record with the largest ``key`` (first in path and line order), with its ties.

    Parameters
    ----------
    records
        Function records from :func:`functions`.
    key
        ``"lines"`` or ``"parameters"``.

    Returns
    -------
    dict
        The record plus ``ties``: how many other records share its value.
    """
    best = max(records, key=lambda r: r[key])
    ties = sum(r[key] == best[key] for r in records) - 1
    return {**best, "ties": ties}


def is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` test is ``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of a dotted name that is one of scvae's modules, else None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_edges(tree: ast.Module, module: str, is_package: bool, modules: set[str]) -> list:
    """The imports of scvae modules in one file, wherever they sit.

    Parameters
    ----------
    tree
        The parsed file.
    module
        The file's dotted module name.
    is_package
        Whether the file is an ``__init__.py`` (relative imports resolve against itself).
    modules
        Every module name of the package.

    Returns
    -------
    list of dict
        ``target``, ``line``, ``text`` (the import statement), ``local`` (inside a ``def``)
        and ``type_checking`` (under ``if TYPE_CHECKING:``); one per imported scvae module
        other than the file itself.
    """
    package = module if is_package else module.rpartition(".")[0]
    edges = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [resolve(alias.name, modules) for alias in node.names]
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        found = []
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            found.append(submodule if submodule in modules else resolve(base, modules))
        return found

    def visit(node: ast.AST, local: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in dict.fromkeys(targets(child)):
                    if target is not None and target != module:
                        edges.append(
                            {
                                "target": target,
                                "line": child.lineno,
                                "text": ast.unparse(child),
                                "local": local,
                                "type_checking": type_checking,
                            }
                        )
            is_def = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            guarded = isinstance(child, ast.If) and is_type_checking(child.test)
            visit(child, local or is_def, type_checking or guarded)

    visit(tree, False, False)
    return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of a directed graph.

    Parameters
    ----------
    graph
        Node to the nodes it points to; every target must be a key.

    Returns
    -------
    list of list of str
        The components, each sorted.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def import_cycles(root: Path, files: list[Path], trees: dict[Path, ast.Module]) -> dict:
    """The import cycles among scvae's modules and the count of function-local imports.

    Parameters
    ----------
    root
        Folder holding the ``scvae/`` package.
    files
        The package's ``.py`` files.
    trees
        Each file's parsed tree.

    Returns
    -------
    dict
        ``cycles`` (each: ``modules`` and the ``edges`` inside the component),
        ``runtime_cycles`` (the components left without the ``TYPE_CHECKING`` imports),
        ``function_local_imports``, ``type_checking_imports`` and ``n_edges``.
    """
    names = {path: module_name(root, path) for path in files}
    modules = set(names.values())
    edges = {
        names[path]: import_edges(trees[path], names[path], path.name == "__init__.py", modules)
        for path in files
    }
    graph = {module: {e["target"] for e in found} for module, found in edges.items()}
    cycles = []
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        members = set(component)
        inside = [
            {"from": module, **edge}
            for module in component
            for edge in edges[module]
            if edge["target"] in members
        ]
        cycles.append({"modules": component, "edges": inside})
    runtime = {
        module: {e["target"] for e in found if not e["type_checking"]}
        for module, found in edges.items()
    }
    every = [edge for found in edges.values() for edge in found]
    return {
        "cycles": cycles,
        "runtime_cycles": [c for c in strongly_connected(runtime) if len(c) > 1],
        "function_local_imports": sum(edge["local"] for edge in every),
        "type_checking_imports": sum(edge["type_checking"] for edge in every),
        "n_edges": sum(len(targets) for targets in graph.values()),
    }


def static_metrics(root: Path) -> dict:
    """Every metric that reads the files only (all but ``files_entered_by_fit``).

    Parameters
    ----------
    root
        Folder holding the ``scvae/`` package.

    Returns
    -------
    dict
        The metrics, named as in the module docstring.
    """
    files = python_files(root)
    texts = {path: path.read_text(encoding="utf-8") for path in files}
    trees = {path: ast.parse(text, filename=str(path)) for path, text in texts.items()}
    counts, init_files = folder_counts(root, files)
    lengths = {path: len(text.splitlines()) for path, text in texts.items()}
    longest = max(files, key=lambda path: lengths[path])
    records = [
        record
        for path in files
        for record in functions(trees[path], path.relative_to(root).as_posix())
    ]
    return {
        "modules_per_folder": counts,
        "init_files": init_files,
        "n_modules": sum(counts.values()),
        "largest_module": {
            "path": longest.relative_to(root).as_posix(),
            "lines": lengths[longest],
        },
        "largest_function": largest(records, "lines"),
        "most_parameters": largest(records, "parameters"),
        "import_cycles": import_cycles(root, files, trees),
        "lines_of_code": sum(
            sum(bool(line.strip()) for line in text.splitlines()) for text in texts.values()
        ),
        "total_lines": sum(lengths.values()),
    }


def trace_fit(root: Path) -> dict:
    """In this process: the scvae files a tiny fit enters up to the Pyro model's first call.

    Meant to run in the subprocess that :func:`files_entered_by_fit` starts, with
    ``PYTHONPATH=<root>``; the definitions are those of the module docstring.

    Parameters
    ----------
    root
        Folder holding the ``scvae/`` package; ``scvae.__file__`` must lie under it.

    Returns
    -------
    dict
        ``n_files``, ``files`` (in entry order, relative to root), ``climbs_back_up``,
        ``climb_edges``, ``reached_model`` and ``model_file``.
    """
    import importlib
    import inspect

    import scvae

    package_dir = os.path.realpath(root / PACKAGE) + os.sep
    imported = os.path.realpath(scvae.__file__)
    if not imported.startswith(package_dir):
        raise RuntimeError(f"imported {imported}, not the checkout under {root}")
    module_cls = None
    for candidate in MODULE_CANDIDATES:
        try:
            module_cls = importlib.import_module(candidate).SCVAEModule
            break
        except (ImportError, AttributeError):
            continue
    if module_cls is None:
        raise RuntimeError(f"no SCVAEModule in {MODULE_CANDIDATES}")
    model_file = os.path.realpath(inspect.getsourcefile(module_cls))

    adata = scvae.datasets.simulate(200, 30, n_groups=2, seed=0)
    real: dict[str, str | None] = {}

    def scvae_file(filename: str) -> str | None:
        if filename not in real:
            path = os.path.realpath(filename)
            real[filename] = path if path.startswith(package_dir) else None
        return real[filename]

    order: dict[str, int] = {}
    climbs: Counter[tuple[str, str]] = Counter()
    state = {"reached": False}

    def profile(frame, event: str, arg: object) -> None:
        if event != "call":
            return
        callee = scvae_file(frame.f_code.co_filename)
        if callee is None:
            return
        caller_frame = frame.f_back
        caller = None
        while caller_frame is not None and caller is None:
            caller = scvae_file(caller_frame.f_code.co_filename)
            caller_frame = caller_frame.f_back
        if callee in order and caller is not None and order.get(caller, -1) > order[callee]:
            climbs[(caller, callee)] += 1
        order.setdefault(callee, len(order))
        if frame.f_code.co_name == "model" and callee == model_file:
            state["reached"] = True
            sys.setprofile(None)

    sys.setprofile(profile)
    try:
        scvae.fit(adata, max_epochs=1, progress=False)
    finally:
        sys.setprofile(None)

    top = os.path.realpath(root)

    def rel(path: str) -> str:
        return Path(os.path.relpath(path, top)).as_posix()

    return {
        "n_files": len(order),
        "files": [rel(path) for path in order],
        "climbs_back_up": sum(climbs.values()),
        "climb_edges": [
            {"from": rel(caller), "to": rel(callee), "calls": calls}
            for (caller, callee), calls in climbs.most_common()
        ],
        "reached_model": state["reached"],
        "model_file": rel(model_file),
    }


def files_entered_by_fit(root: Path) -> dict:
    """Run :func:`trace_fit` in a subprocess that imports scvae from ``root``.

    Parameters
    ----------
    root
        Folder holding the ``scvae/`` package.

    Returns
    -------
    dict
        What :func:`trace_fit` returns.
    """
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--root", str(root), "--trace-fit"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"traced fit failed under {root}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results: dict[str, dict]) -> str:
    """A summary table, one column per root.

    Parameters
    ----------
    results
        Root to its metrics.

    Returns
    -------
    str
        A markdown table.
    """

    def function(record: dict, key: str) -> str:
        return f"{record[key]} (`{record['path']}:{record['name']}`)"

    rows = {
        "modules (excl. `__init__`)": lambda m: str(m["n_modules"]),
        "folders": lambda m: str(len(m["modules_per_folder"])),
        "max modules in a folder": lambda m: str(max(m["modules_per_folder"].values())),
        "largest module": lambda m: (
            f"{m['largest_module']['lines']} (`{m['largest_module']['path']}`)"
        ),
        "largest function (lines)": lambda m: function(m["largest_function"], "lines"),
        "most parameters": lambda m: function(m["most_parameters"], "parameters"),
        "import cycles (SCCs > 1)": lambda m: str(len(m["import_cycles"]["cycles"])),
        "runtime import cycles": lambda m: str(len(m["import_cycles"]["runtime_cycles"])),
        "modules in cycles": lambda m: str(
            sum(len(c["modules"]) for c in m["import_cycles"]["cycles"])
        ),
        "function-local scvae imports": lambda m: str(
            m["import_cycles"]["function_local_imports"]
        ),
        "files entered by fit": lambda m: (
            str(m["files_entered_by_fit"]["n_files"]) if "files_entered_by_fit" in m else "-"
        ),
        "climbs back up": lambda m: (
            str(m["files_entered_by_fit"]["climbs_back_up"])
            if "files_entered_by_fit" in m
            else "-"
        ),
        "lines of code (non-blank)": lambda m: str(m["lines_of_code"]),
    }
    lines = [
        "| metric | " + " | ".join(f"`{root}`" for root in results) + " |",
        "|---" * (len(results) + 1) + "|",
    ]
    for label, cell in rows.items():
        lines.append(f"| {label} | " + " | ".join(cell(m) for m in results.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    """Parse the arguments, measure each root and print the JSON (and the table)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, nargs="+", required=True)
    parser.add_argument("--markdown", action="store_true", help="also print a summary table")
    parser.add_argument("--no-fit", action="store_true", help="skip the traced fit")
    parser.add_argument("--trace-fit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    roots = [root.resolve() for root in args.root]
    if args.trace_fit:
        print(json.dumps(trace_fit(roots[0])))
        return
    results = {}
    for root in roots:
        metrics = static_metrics(root)
        if not args.no_fit:
            metrics["files_entered_by_fit"] = files_entered_by_fit(root)
        results[str(root)] = metrics
    print(json.dumps(results[str(roots[0])] if len(roots) == 1 else results, indent=2))
    if args.markdown:
        print()
        print(markdown(results))


if __name__ == "__main__":
    main()
