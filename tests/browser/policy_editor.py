"""What browser tests share about the security officer's policy editor: reading and replacing
the document through the page's CodeMirror instance (it hides the textarea the form posts),
and where a line of the editor is."""

from __future__ import annotations

from playwright.sync_api import Page, expect

#: The page's CodeMirror instance (CodeMirror keeps it on its wrapper element).
EDITOR = "document.querySelector('#policy-form .CodeMirror').CodeMirror"


def policy_text(page: Page) -> str:
    """The document in the editor (once the page has made one)."""
    expect(page.locator("#policy-form .CodeMirror")).to_be_visible()
    return str(page.evaluate(f"{EDITOR}.getValue()"))


def set_policy_text(page: Page, text: str) -> None:
    """Replace the editor's document, as a paste would (it is checked as typed text is)."""
    expect(page.locator("#policy-form .CodeMirror")).to_be_visible()
    page.evaluate(f"(text) => {EDITOR}.setValue(text)", text)


def editor_line(number: int) -> str:
    """A selector for line `number` (from 1) of the editor, gutter included."""
    return f"#policy-form .CodeMirror-code > div:nth-child({number})"
