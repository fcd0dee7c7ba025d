"""Finding a gest-api generator named "module:Class": a module file beside the campaign file first, else an importable one."""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import threading
from pathlib import Path

from gest_api import Generator

GENERATOR_SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_lock = threading.Lock()


class GeneratorLoadError(ValueError):
    """The generator named in `policy.generator` cannot be imported or is not a generator."""


def _import(module_name: str, base_dir: Path | None):
    """The module, loaded from base_dir/<module>.py (or a package there) when that file exists, else imported."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    rel = Path(*module_name.split("."))
    for candidate in ([base_dir / rel.with_suffix(".py"), base_dir / rel / "__init__.py"] if base_dir else []):
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location(module_name, candidate)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(module_name, None)
                raise
            return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        where = f" (looked beside the campaign file in {base_dir} and on sys.path)" if base_dir else ""
        raise GeneratorLoadError(f"cannot import module {module_name!r}{where}: {exc}") from None


def load_generator(spec: str, base_dir: Path | None = None) -> type:
    """The generator class of "module:Class"; a module that raises at import raises here (SystemExit included)."""
    if not GENERATOR_SPEC.match(spec):
        raise GeneratorLoadError(f"expected 'module:Class', got {spec!r}")
    module_name, _, class_name = spec.partition(":")
    with _lock:
        module = _import(module_name, base_dir)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise GeneratorLoadError(f"module {module_name!r} has no attribute {class_name!r}")
    duck = all(callable(getattr(cls, m, None)) for m in ("suggest", "ingest"))
    if not isinstance(cls, type) or not (issubclass(cls, Generator) or duck):
        raise GeneratorLoadError(f"{spec} is not a gest-api generator (a gest_api.Generator subclass with suggest and ingest)")
    return cls
