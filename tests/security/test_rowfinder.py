"""The red team's measuring instrument: rows are found in every form test_insider searches,
at any position, and nothing is found in text that holds none."""

from __future__ import annotations

import base64
import gzip
import json
import urllib.parse

import pytest

from tests.security.rowfinder import find_rows

ROWS = ["P00000,1975-06-01,F,migraine,21.6", "P00001,1984-10-19,M,asthma moderate,5.8",
        "P00002,1972-06-19,M,diabetes type 2,34.8"]


@pytest.mark.parametrize("pad", ["", "x", "xy", "xyz"])
@pytest.mark.parametrize(("form", "encode"), [
    ("verbatim", lambda b: b.decode()),
    ("url", lambda b: urllib.parse.quote(b.decode())),
    ("base64", lambda b: base64.b64encode(b).decode()),
    ("base64", lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    ("hex", lambda b: b.hex()),
    ("hex", lambda b: b.hex().upper()),
    ("utf-16", lambda b: b.decode().encode("utf-16-le").decode("latin-1")),
    ("utf-16", lambda b: b.decode().encode("utf-16-be").decode("latin-1")),
    ("base64+utf-16", lambda b: base64.b64encode(b.decode().encode("utf-16-le")).decode()),
    ("hex+utf-16", lambda b: b.decode().encode("utf-16-be").hex()),
])
def test_a_row_is_found_in_each_form_at_any_alignment(form: str, encode: object,
                                                       pad: str) -> None:
    assert callable(encode)
    payload = (pad + "\n" + ROWS[1] + ";").encode()
    text = f"key {encode(payload)} and more"
    found = find_rows([text, json.dumps({"k": text})], ROWS)
    assert set(found.rows) == {1}, (form, text)
    assert form in found.rows[1]


def test_ids_count_partial_rows_and_nothing_is_found_in_clean_text() -> None:
    partial = base64.b64encode(ROWS[2].encode()[:12]).decode()
    found = find_rows([f"{partial}.bin"], ROWS)
    assert set(found.ids) == {2} and not found.rows
    clean = [json.dumps({"sha256": "ab" * 32, "label": "file 17 (name withheld)",
                         "token": base64.b64encode(bytes(range(256))).decode()}),
             base64.b64encode(gzip.compress("\n".join(ROWS).encode())).decode()]
    found = find_rows(clean, ROWS)
    assert not found.ids and not found.rows
