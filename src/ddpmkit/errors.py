"""User-facing errors: the CLI prints these as one line and exits with status 2."""


class DdpmkitError(Exception):
    """A problem with the user's input, stated with its fix. Printed as one line by the CLI."""


class DdpmkitWarning(UserWarning):
    """Something the user should know that does not stop the command (e.g. skipped files). Printed as one line
    (``ddpmkit: warning: ...``) by the CLI."""
