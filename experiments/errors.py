"""The one exception type for a user's mistake: the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (config, command line, run directory). Never a bug of ours."""
