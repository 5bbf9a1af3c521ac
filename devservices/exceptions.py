"""Why a throwaway service is not there."""

from __future__ import annotations


class ServiceError(RuntimeError):
    """A service did not start; the message ends with the tail of its log."""


class NotInstalled(ServiceError):
    """What a service needs is not on this machine; the message says which package provides it."""

    def __init__(self, what: str, package: str) -> None:
        super().__init__(f"{what} is not installed: {package}")
        self.what = what
        self.package = package

    @classmethod
    def debian(cls, what: str, package: str) -> NotInstalled:
        """Missing ``what`` of a Debian package (``make services`` installs those)."""
        return cls(
            what,
            f"Debian package {package} (`make services` installs it: apt-get install -y {package})",
        )
