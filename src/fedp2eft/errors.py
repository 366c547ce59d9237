"""User-facing errors: one line that names the bad input, turned into a non-zero exit by the CLI."""


class UserError(Exception):
    """An error caused by the user's input (a file, a config value, a name).

    The CLI prints ``error: <message>`` on one line and exits with status 2.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
