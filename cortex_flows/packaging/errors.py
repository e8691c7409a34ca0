"""The one exception type packaging raises, so callers can tell a bad package from an I/O or AWS fault."""


class PackageError(Exception):
    """A package that cannot be built, stored, trusted or extracted; retrying will not help."""
