"""A reference copy of config/'s model modules backed by real pydantic 2.x.

config/model.py, policy.py, k8s.py, endpoints.py and parse.py take every validation
name from `config.lite` (issue 17: a small pydantic-free engine goes in there). To
check that engine against the library it replaces, `load_reference` reads those
five modules' source, points their ``from config.lite import`` at this module (which
re-exports pydantic's own names) and their imports of each other at the reference
copies, and executes each into a fresh module ``_ref_config.<name>``. The modules
free of pydantic (config.keys, config.errors, config.selector) are shared, so both
copies raise the same `config.errors.ConfigError`.

Used by tests/unit/test_config_lite_diff.py.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pydantic
import pydantic.alias_generators
import pydantic_core

from config import lite

# Each name config.lite exports, taken from pydantic (an AttributeError here: config.lite
# exports a name pydantic does not have), and this module's own.
_FROM = {"to_camel": pydantic.alias_generators, "PydanticCustomError": pydantic_core}
for _name in lite.__all__:
    globals()[_name] = getattr(_FROM.get(_name, pydantic), _name)
__all__ = [*lite.__all__, "MODULES", "PACKAGE", "load_reference", "unload_reference"]

PACKAGE = "_ref_config"
# In dependency order: each imports (at module level) only those before it.
MODULES = ("model", "policy", "k8s", "endpoints", "parse")
CONFIG = Path(__file__).resolve().parents[2] / "config"

_NAMES = "|".join(MODULES)
_FROM_LITE = re.compile(r"^(\s*)from config\.lite import", re.M)
_FROM_MODULE = re.compile(rf"^(\s*)from config\.({_NAMES}) import", re.M)
_FROM_PACKAGE = re.compile(rf"^(\s*)from config import ({_NAMES})\b", re.M)
# What must not be left after the rewrite: any other way to reach the real modules.
_LEFT = re.compile(rf"^\s*(?:from|import)\s+config\.(?:lite|{_NAMES})\b"
                   rf"|^\s*from config import .*\b(?:lite|{_NAMES})\b", re.M)


def reference_source(name: str) -> str:
    """config/<name>.py with its imports of config.lite and of its siblings redirected."""
    text = (CONFIG / f"{name}.py").read_text()
    text = _FROM_LITE.sub(rf"\1from {__name__} import", text)
    text = _FROM_MODULE.sub(rf"\1from {PACKAGE}.\2 import", text)
    text = _FROM_PACKAGE.sub(rf"\1from {PACKAGE} import \2", text)
    left = _LEFT.search(text)
    if left:
        raise AssertionError(f"config/{name}.py: an import the reference loader does not "
                             f"redirect: {left.group(0).strip()!r}")
    return text


def load_reference() -> types.SimpleNamespace:
    """Execute the reference copies; returns a namespace with one attribute per module.

    The modules stay registered in sys.modules (pydantic resolves the deferred models'
    annotations through them, and the modules import each other lazily inside
    functions) until `unload_reference`.
    """
    unload_reference()
    package = types.ModuleType(PACKAGE, "pydantic-backed copies of config/'s models")
    package.__path__ = []  # a package: ``from _ref_config.model import ...`` resolves
    sys.modules[PACKAGE] = package
    out = {}
    try:
        for name in MODULES:
            full = f"{PACKAGE}.{name}"
            module = types.ModuleType(full)
            module.__file__ = str(CONFIG / f"{name}.py")
            module.__package__ = PACKAGE
            sys.modules[full] = module
            code = compile(reference_source(name), module.__file__, "exec")
            exec(code, module.__dict__)
            setattr(package, name, module)
            out[name] = module
    except BaseException:
        unload_reference()
        raise
    return types.SimpleNamespace(**out)


def unload_reference() -> None:
    for key in [k for k in sys.modules if k == PACKAGE or k.startswith(PACKAGE + ".")]:
        del sys.modules[key]
