"""Random identifiers that are safe everywhere they travel."""

from __future__ import annotations

import secrets


def new_id(nbytes: int = 12) -> str:
    """A URL-safe random id that starts with a letter or digit.

    ``secrets.token_urlsafe`` starts with ``-`` one time in 32: such an id is
    read as an option by ``vcounter hold <id>`` (argparse) and by most Unix
    tools, so it is drawn again.
    """
    while True:
        value = secrets.token_urlsafe(nbytes)
        if value[0].isalnum():
            return value
