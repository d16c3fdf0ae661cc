"""User-facing errors of the search package (importable without Ray or torch, for the CLI)."""


class SearchError(RuntimeError):
    """A search that cannot start or resume; the message says what to do."""


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the key."""


class TrackingError(RuntimeError):
    """The tracking server cannot be used (unreachable, refused, misconfigured)."""


class SearchOptionError(SearchError):
    """A bad `ecgtune search` invocation (an option out of range, a `--set` that names no
    config key or has a bad value, an unwritable `--storage`), found before anything starts.
    The console script prints it as one line and exits 2, like any usage error."""

    exit_code = 2


class NonRetryableTrialError(RuntimeError):
    """A trial failure that a retry from the last checkpoint would only repeat (a NaN loss
    diverges again from the same weights and batches): the search fails that trial once,
    with its reason, instead of spending `--max-failures` retries on it (see search.faults)."""


class CheckpointError(RuntimeError):
    """A trial checkpoint that cannot be found or read (missing file, foreign format, labels
    that do not match the data); the message names the file."""
