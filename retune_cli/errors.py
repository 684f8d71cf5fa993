"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class InputError(Exception):
    """Bad input (file, option, config value): the message names it and says what to do."""
