"""Import a script of tools/ or datasets/ (not a package) in tests: `load_script("tools/x.py")`."""

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relative_path):
    """
    Execute the script at `relative_path` (from the repository root) and return it as a module.

    As when run with ``python``, the script's folder goes first on ``sys.path``, so its sibling
    imports work (``from prepare_utils import ...``, ``from benchmark import ...``). The module is
    named after its file and registered in ``sys.modules``, because the spawned workers of
    tools/benchmark*.py re-import it by that name; file names are unique across tools/ and
    datasets/, and a clash with another module of that name raises ImportError. Every call
    executes the script afresh; nothing is cached.
    """
    path = os.path.join(REPO, relative_path)
    folder, name = os.path.split(os.path.splitext(path)[0])
    loaded = getattr(sys.modules.get(name), "__file__", None)
    if loaded is not None and os.path.realpath(loaded) != os.path.realpath(path):
        raise ImportError(f"cannot load {path} as {name!r}: that name is {loaded}")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
