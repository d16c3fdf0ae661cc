"""User-facing errors of the search package (importable without Ray or torch, for the CLI)."""


class SearchError(RuntimeError):
    """A search that cannot start or resume; the message says what to do."""


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the key."""


class TrackingError(RuntimeError):
    """The tracking server cannot be used (unreachable, refused, misconfigured)."""
