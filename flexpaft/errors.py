"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class FlexpaftError(Exception):
    """A mistake in the user's input (file, config, template, data) that they can fix."""


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, without ever building the whole repr.

    An error message echoes the user's value; a YAML alias bomb or a recursive structure has a
    repr of hundreds of millions of characters (or none), so ``f"{value!r:.40}"`` would hang
    before it trims. ``reprlib`` stops at a depth and a count instead.
    """
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, limit, limit, limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = 6
    r.maxarray = 6
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
