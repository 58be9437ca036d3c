"""Errors a user can act on. The CLI prints their message and exits 2, without a traceback."""


class DualencError(Exception):
    """A problem with the user's input, config, data or installed plugins."""


class ConfigError(DualencError):
    """One or more config problems, each already formatted as ``file:line: key.path: message``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
