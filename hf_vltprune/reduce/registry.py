"""Method name -> reducer class. A new method is one file with `@register_reducer("name")` plus its import below."""

from __future__ import annotations

REDUCERS: dict[str, type] = {}


def register_reducer(name: str):
    """Class decorator that makes a reducer available as `PruningConfig(method=name)`."""

    def decorator(cls):
        REDUCERS[name] = cls
        cls.method_name = name
        return cls

    return decorator


def _load_builtin_reducers() -> None:
    # Imported lazily so that `registry` has no import cycle with the method files that use `register_reducer`.
    from . import crossget, fastv, madtp, random_drop, smarttrim, textguided, tome, visionzip  # noqa: F401


def reducer_names(architecture: str | None = None) -> list[str]:
    """Registered method names; with `architecture` ("blip", "llava"), only the methods built for it."""
    _load_builtin_reducers()
    return sorted(name for name, cls in REDUCERS.items() if architecture is None or architecture in cls.architectures)


def get_reducer_class(name: str) -> type:
    _load_builtin_reducers()
    if name not in REDUCERS:
        raise ValueError(f"Unknown pruning method {name!r}: allowed {sorted(REDUCERS)}.")
    return REDUCERS[name]
