"""The one exception type hywia raises for bad input; the CLI prints it as a one-line error."""


class HywiaError(ValueError):
    """A user-facing error: the message alone must tell what is wrong and how to fix it."""
