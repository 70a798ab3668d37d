"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class FlexpaftError(Exception):
    """A mistake in the user's input (file, config, template, data) that they can fix."""
