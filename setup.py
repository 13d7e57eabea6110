"""Maps the top-level source folders into the qcc namespace (DESIGN.md §1).

`frontend/`, `passes/`, `targets/` and `examples/` install as `qcc.frontend`, `qcc.passes`,
`qcc.targets` and `qcc.examples`; the package list is computed so no subpackage is dropped.
"""

from setuptools import find_packages, setup

_MAPPED = {"frontend": "qcc.frontend", "passes": "qcc.passes", "targets": "qcc.targets",
           "examples": "qcc.examples"}


def _packages():
    found = {"qcc": "qcc"}
    for sub in find_packages(where="qcc"):
        found[f"qcc.{sub}"] = "qcc/" + sub.replace(".", "/")
    for folder, pkg in _MAPPED.items():
        found[pkg] = folder
        for sub in find_packages(where=folder):
            found[f"{pkg}.{sub}"] = folder + "/" + sub.replace(".", "/")
    return found


_DIRS = _packages()
setup(packages=sorted(_DIRS), package_dir=_DIRS)
