"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class WbcError(Exception):
    """A problem the user can fix (bad folder, missing file, bad argument); the message says how."""


class LayoutError(WbcError):
    """A dataset folder does not have the expected layout."""


class DownloadError(WbcError):
    """A download failed, was incomplete, or did not match its checksum."""
