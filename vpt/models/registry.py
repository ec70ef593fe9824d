"""Backend name -> class: what `vpt train <name>`, `vpt sample` and `vpt eval-fvd` look up.

Entries are import paths so that `vpt --help` does not import every model.
"""

from __future__ import annotations

import importlib

from vpt.errors import UsageError

BACKENDS: dict[str, str] = {
    "latte": "vpt.models.latte:Latte",
    "neuralsde": "vpt.models.neuralsde:NeuralSDE",
    "pvdm": "vpt.models.pvdm:PVDM",
    "river": "vpt.models.river:River",
    "rsvp": "vpt.models.rsvp:RSVPM",
    "seer": "vpt.models.seer:Seer",
}


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def get_backend(name: str) -> type:
    if name not in BACKENDS:
        import difflib

        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UsageError(f"unknown backend '{name}'{hint}; available: {', '.join(backend_names()) or 'none yet'}")
    module_name, class_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
