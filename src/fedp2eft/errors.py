"""User-facing errors: one line that names the bad input, turned into a non-zero exit by the CLI."""


class UserError(Exception):
    """An error caused by the user's input (a file, a config value, a name).

    The CLI prints ``error: <message>`` on one line and exits with status 2.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class SettingError(UserError):
    """A settings dataclass rejected one of its values in ``__post_init__``. ``key`` is the field; the
    config loader prefixes the section, so the message reads ``config key <section>.<key>: …``."""

    def __init__(self, key: str, message: str):
        self.key, self.reason = key, message
        super().__init__(f"{key}: {message}")


def require(ok: bool, key: str, message: str) -> None:
    """Raise :class:`SettingError` for ``key`` unless ``ok``."""
    if not ok:
        raise SettingError(key, message)
