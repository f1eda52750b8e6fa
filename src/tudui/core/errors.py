"""One exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class TuduiError(Exception):
    """A problem the user can fix (bad path, unknown model, unusable checkpoint...).

    The message says what was wrong and what to do next; no traceback is shown
    for it unless `--debug` is given.
    """
