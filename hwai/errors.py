"""Errors a user can cause. The CLI prints them as one line and exits 2."""


class UserError(Exception):
    """A mistake in the user's input (unknown name, missing file, bad number).

    The message says what was wrong and what to do instead; it is shown as-is.
    """
