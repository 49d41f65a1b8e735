"""Whole numbers in URLs and query strings, read the same way by pages and the API.

A number a row id or a cursor can be is 0 to 2**63 - 1 (what SQLite stores); anything else
is the caller's mistake, answered 400 (or 404 for a path), never a 500 from the database.
"""

from __future__ import annotations

import re
from typing import Any

from werkzeug.routing import IntegerConverter, Map

#: The largest whole number the database stores.
ROW_NUMBER_MAX = 2**63 - 1

_DIGITS = re.compile(r"[0-9]{1,19}")


class RowNumberConverter(IntegerConverter):
    """`<int:...>` in a route: ASCII digits up to ROW_NUMBER_MAX; larger ones match nothing."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", ROW_NUMBER_MAX)
        super().__init__(url_map, *args, **kwargs)


def whole_number(text: str | None) -> int | None:
    """`text` as a whole number from 0 to ROW_NUMBER_MAX (ASCII digits only), else None."""
    if text is None or not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= ROW_NUMBER_MAX else None
