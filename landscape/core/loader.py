"""One way to import a user's `module:callable` (models, losses, data set factories).

`load_callable(spec, what)` is the only place that imports user code named on the command line
(`--model package.module:factory`, `--loss package.module:callable`,
`--data dataset:package.module:factory`).

Semantics
- `spec` is `MODULE:ATTR`: MODULE an absolute dotted module name (`pkg.sub`), ATTR an attribute
  path inside it, possibly dotted (`Factory.build`); the result must be callable.
- The module is imported with the current working directory importable, as `python -m` has it,
  whether `landscape` runs as the console script, `python -m landscape` or from an API call:
  unless the working directory is already on `sys.path` (as an absolute path, `""` or `"."`), its
  absolute path is put at the FRONT of `sys.path` for the import only and taken out again
  afterwards. So a module in the working directory wins over an installed module of the same name,
  and whatever the module imports at import time (siblings in the working directory included)
  resolves the same way; the rest of the run sees `sys.path` unchanged, so a file in the working
  directory cannot shadow the libraries `landscape` imports later. An import the user's code
  defers to call time (inside a function) does not see the working directory: import at the top
  of the module, or set PYTHONPATH. A module already in `sys.modules` is reused as Python does.
  (Changing `sys.path` for the import is not thread-safe; specs are loaded at start-up.)
- Every failure is a `LandscapeError` with a one-line message that starts with
  `{what} {spec!r}` (or `{what} {shown!r}`), e.g. `model spec 'mymodel:make'`:
  a malformed spec (`malformed {what} ...: expected {expected}`), a module that is not found
  (`cannot import module 'm': No module named 'm'`), a module that raises while it is imported
  (`cannot import module 'm': it raised ZeroDivisionError: division by zero`, a module that it
  imports and is missing included), a missing attribute or a non-callable one.
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any, Callable

from .errors import LandscapeError

DEFAULT_EXPECTED = "package.module:callable"


def split_spec(spec: str) -> tuple[str, str] | None:
    """(module, attr) of `module:attr`, or None when the spec is malformed (no colon, an empty or
    relative module name, an empty attribute or an empty part of a dotted name)."""
    module_name, sep, attr = str(spec).strip().partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not sep or not module_name or not attr:
        return None
    if not all(module_name.split(".")) or not all(attr.split(".")):
        return None
    return module_name, attr


def _cwd_on_path(cwd: str) -> bool:
    here = os.path.normcase(os.path.realpath(cwd))
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        try:
            if os.path.normcase(os.path.realpath(entry or ".")) == here:
                return True
        except (OSError, ValueError):
            continue
    return False


def import_user_module(module_name: str) -> ModuleType:
    """Import `module_name` with the working directory importable (see the module docstring).
    Raises what the import raises."""
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed: import from sys.path as it is
        cwd = None
    added = cwd is not None and not _cwd_on_path(cwd)
    if added:
        sys.path.insert(0, cwd)
    try:
        importlib.invalidate_caches()  # files written since the interpreter started are seen
        return importlib.import_module(module_name)
    finally:
        if added:
            try:
                sys.path.remove(cwd)
            except ValueError:  # the user's module took it out itself
                pass


def _not_found(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether the ModuleNotFoundError is about the named module (or a package above it), not
    about something that module imports."""
    parts = module_name.split(".")
    return exc.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def load_callable(spec: str, what: str, *, expected: str = DEFAULT_EXPECTED,
                  shown: str | None = None) -> Callable[..., Any]:
    """The callable named by `spec` (`package.module:attr`, attr possibly dotted).

    `what` names the user's input in messages (`"model spec"`, `"--loss"`, `"data spec"`);
    `shown` is the text quoted after it (default: `spec`; e.g. the whole `dataset:...` data spec);
    `expected` is what a well-formed spec looks like, for the malformed-spec message.
    Raises LandscapeError (one line) for a malformed spec, a module that cannot be imported (not
    found, or raising while it is imported), a missing attribute or a non-callable one."""
    label = f"{what} {(spec if shown is None else shown)!r}"
    parts = split_spec(spec) if isinstance(spec, str) else None
    if parts is None:
        raise LandscapeError(f"malformed {label}: expected {expected}")
    module_name, attr = parts
    try:
        module = import_user_module(module_name)
    except ModuleNotFoundError as exc:
        if _not_found(exc, module_name):
            raise LandscapeError(f"{label}: cannot import module {module_name!r}: {exc} "
                                 "(looked in the working directory and on sys.path)") from None
        raise LandscapeError(f"{label}: cannot import module {module_name!r}: it raised "
                             f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # an error inside the user's module, reported as such
        raise LandscapeError(f"{label}: cannot import module {module_name!r}: it raised "
                             f"{type(exc).__name__}: {exc}") from None
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = f"module {module_name!r}" if i == 0 else repr(".".join(attr.split(".")[:i]))
            raise LandscapeError(f"{label}: {where} has no attribute {part!r}") from None
        except Exception as exc:  # a property or module __getattr__ of the user's
            raise LandscapeError(f"{label}: reading {attr!r} from module {module_name!r} raised "
                                 f"{type(exc).__name__}: {exc}") from None
    if not callable(obj):
        raise LandscapeError(f"{label}: {attr!r} in module {module_name!r} is not callable "
                             f"(it is a {type(obj).__name__})")
    return obj
