"""Pull the Python program out of a model response (used by the code environment's verifier).

Rules, in order:

1. Fenced blocks (```python / ```py / ```python3 / bare ```): among the *complete* ones, take the last block that
   defines the entry point (``def name(``), else the last one. Blocks tagged with another language (```text,
   ```bash, ```output, ...) are ignored.
2. An opening fence that is never closed (a generation cut off by the token limit): the text after it.
3. Otherwise the whole response, if it looks like Python (a ``def``/``return``/``import``/assignment/... line);
   prose without any code gives ``None`` ("no code extracted").
4. HumanEval-style continuation: if the extracted code does not define the entry point, it is taken as the function
   body and the problem prompt (signature + docstring) is prepended, as HumanEval's own harness does; a body written
   without indentation is indented by four spaces first. If it does define the entry point, the prompt still goes in
   front: it is valid Python on its own (the stub's body is its docstring) and brings the imports and helper
   functions that responses often leave out (``from typing import List``; ``is_palindrome`` for
   ``make_palindrome``); the response's own definitions come later and win.
"""

from __future__ import annotations

import re
import textwrap
from typing import List, Optional, Tuple

# Every pattern is applied to one line at a time or is anchored: a long line, a long run of whitespace or many
# unclosed fences are read in linear time (fences are paired by one pass over the lines, see _fenced_blocks).
_FENCE_OPEN = re.compile(r"[ \t]*```[ \t]*([\w+#.-]*+)")  # on one line: the tag of an opening fence
_FENCE_CLOSE = re.compile(r"[ \t]*```[ \t]*")  # fullmatch of one line: a closing fence
_OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*+(python3?|py)?[ \t]*\n", re.M)
_PYTHON_TAGS = {"", "python", "py", "python3"}
# [^\S\n]: leading whitespace stays on its line (a blank line is not rescanned from every line above it); possessive
# runs never give back characters that could not start the next part anyway
_CODE_LINE = re.compile(
    r"^[^\S\n]*+(def |class |import |from \S+ import |return\b|if .*:|for .*:|while .*:|try:|with .*:|@\w|print\(|"
    r"[A-Za-z_][\w.\[\], ]*+\s*+[-+*/%|&^]?=[^=])", re.M)
# Responses longer than this (characters) are not read at all: no code extracted. A generation budget of a few
# thousand tokens stays far below it.
MAX_RESPONSE_CHARS = 200_000


def _fenced_blocks(response: str) -> List[Tuple[str, str]]:
    """(tag, body) of every complete fenced block: an opening line (```tag ...), then the text up to the next line
    that is a bare closing fence. One pass over the lines; a fence never closed ends the search."""
    blocks, tag, body_start, pos = [], None, 0, 0
    n = len(response)
    while pos < n:
        end = response.find("\n", pos)
        line_end = n if end < 0 else end
        if tag is None:
            opened = _FENCE_OPEN.match(response, pos, line_end)
            if opened and end >= 0:
                tag, body_start = opened.group(1).lower(), end + 1
        elif _FENCE_CLOSE.fullmatch(response, pos, line_end):
            blocks.append((tag, response[body_start:pos]))
            tag = None
        if end < 0:
            break
        pos = end + 1
    return blocks


def defines(code: str, name: str) -> bool:
    return re.search(rf"^[^\S\n]*+(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def _select(response: str, entry_point: Optional[str]) -> Optional[str]:
    blocks = _fenced_blocks(response)
    if blocks:
        python = [body for tag, body in blocks if tag in _PYTHON_TAGS]
        if not python:
            return None
        if entry_point:
            defining = [body for body in python if defines(body, entry_point)]
            if defining:
                return defining[-1]
        return python[-1]
    opened = _OPEN_FENCE.search(response)
    if opened:
        return response[opened.end():]
    return response if _CODE_LINE.search(response) else None


def _as_body(code: str) -> str:
    """A function body: indented by four spaces when it starts at column 0."""
    first = next((line for line in code.splitlines() if line.strip()), "")
    return textwrap.indent(code, "    ") if not first[:1].isspace() else code


def extract_code(response: str, entry_point: Optional[str] = None, prompt: Optional[str] = None) -> Optional[str]:
    """The program to run for ``response``, or None when it contains no code or is longer than
    ``MAX_RESPONSE_CHARS`` (see module docstring). Linear time in the response's length."""
    if len(response) > MAX_RESPONSE_CHARS:
        return None
    code = _select(response, entry_point)
    if code is None or not code.strip():
        return None
    code = code.rstrip() + "\n"
    if not (entry_point and prompt):
        return code
    if defines(code, entry_point):  # the prompt (imports, helpers, docstring-only stub) first, redefined below
        return prompt.rstrip() + "\n\n\n" + code
    return prompt + ("" if prompt.endswith("\n") else "\n") + _as_body(code)
