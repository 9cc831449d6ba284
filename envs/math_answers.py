"""Math answers: extraction from a model's attempt and MATH-style string normalisation (see envs/math.py)."""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

# ================================================================================================================
# Answer extraction
# ================================================================================================================
_FINAL_ANSWER = re.compile(r"final answer is", re.IGNORECASE)
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_I_HOPE = re.compile(r"\bI hope\b", re.IGNORECASE)  # no leading \s*: quadratic on long whitespace
_SENTENCE_END = re.compile(r"\.\s")
_WINDOW = 2000  # characters read after an answer phrase (longer answers never reach sympy anyway)
# how real small models state an answer outside the paper's format ("So, the answer is $4$.", "The answer is 8.")
_ANSWER_IS = re.compile(r"\banswer is\b", re.IGNORECASE)
_VERDICTS = frozenset({"correct", "incorrect", "wrong", "right", "not correct", "not right", "correct!"})
_BRACE_TOKEN = re.compile(r"\\[\s\S]?|[{}]")  # an escape (backslash and the next character) or a brace
_BARE_TOKEN = re.compile(r"[^\s$]+")


def _braced(text: str, open_pos: int) -> Optional[Tuple[str, int]]:
    """The content of the brace group opening at text[open_pos] == '{' and the index after it; None if unbalanced.

    Escaped braces (``\\{``, ``\\}``) are literal characters, not grouping."""
    depth, i = 0, open_pos
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_pos + 1:i], i + 1
        i += 1
    return None


def _balanced(text: str) -> bool:
    depth, i = 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
        i += 1
    return depth == 0


def _closing_braces(text: str, start: int) -> Dict[int, int]:
    """Index of the matching ``}`` of every ``{`` from ``start`` on that has one, as ``_braced`` pairs them (escaped
    braces are literal): one pass, however many groups are left open."""
    closing: Dict[int, int] = {}
    opened = []
    for token in _BRACE_TOKEN.finditer(text, start):
        ch = text[token.start()]
        if ch == "{":
            opened.append(token.start())
        elif ch == "}" and opened:
            closing[opened.pop()] = token.start()
    return closing


def last_boxed(text: str) -> Optional[str]:
    """Content of the last well-formed ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed X``) in text, else None.

    Linear time: the braces are paired once, not rescanned from every unclosed ``\\boxed{``."""
    candidates = []  # (command end, first non-space after it)
    for match in _BOX_COMMAND.finditer(text):
        i = match.end()
        while i < len(text) and text[i] == " ":
            i += 1
        candidates.append((match.end(), i))
    closing: Optional[Dict[int, int]] = None
    for end, i in reversed(candidates):
        if i < len(text) and text[i] == "{":
            if closing is None:  # from the first brace that follows a command: every later one is read in step
                closing = _closing_braces(text, next(j for _, j in candidates if j < len(text) and text[j] == "{"))
            if i in closing:
                return text[i + 1:closing[i]].strip()
        elif i > end:  # "\boxed 5": one token
            token = _BARE_TOKEN.match(text, i)
            if token:
                return token.group().rstrip(".,;")
    return None


def _dollar_delimited(text: str, start: int) -> Optional[str]:
    """``$X$`` or ``$$X$$`` starting at text[start]; escaped dollars (``\\$``) inside X are kept."""
    n = 2 if text.startswith("$$", start) else 1
    i = start + n
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith("$" * n, i):
            return text[start + n:i]
        i += 1
    return None


def _unwrap_box(answer: str) -> str:
    """``\\boxed{X}`` (the whole answer) → X."""
    s = answer.strip()
    m = _BOX_COMMAND.match(s)
    if m:
        rest = s[m.end():].lstrip()
        if rest.startswith("{"):
            group = _braced(rest, 0)
            if group is not None and group[1] == len(rest):
                return group[0].strip()
    return s


def _stated_answer(text: str, phrase: "re.Pattern[str]") -> Optional[str]:
    """The answer after the last ``phrase`` that states one: ``$X$`` / ``$$X$$`` (a whole ``\\boxed{X}`` unwrapped),
    else the rest of its sentence (up to ". " or the line's end) without "I hope it is correct"; when the line ends
    right after the phrase, the next non-blank line if it starts with ``$`` or ``\\boxed``. Only a phrase that states
    no answer at all lets an earlier one count: a verdict ("The final answer is correct.") or the very end of the text
    (a response cut off after "The final answer is"); anything else unreadable (an unclosed ``$``, an answer on the
    next line in words) is no answer rather than a guess. Each phrase reads at most ``_WINDOW`` characters: linear
    time on any input."""
    n = len(text)
    for match in reversed(list(phrase.finditer(text))):
        pos = match.end()
        limit = min(n, pos + _WINDOW)
        while pos < limit and text[pos] in " \t:":
            pos += 1
        if pos < limit and text[pos] in "\r\n":  # the answer on a later line: only a formula counts
            while pos < limit and text[pos].isspace():
                pos += 1
            if pos < limit and not (text.startswith("$", pos) or _BOX_COMMAND.match(text, pos)):
                return None
        if pos == n:
            continue  # cut off after the phrase
        if pos >= limit:
            return None
        if text[pos] == "$":
            answer = _dollar_delimited(text, pos)
            if answer is None:
                return None  # an unclosed "$"
        else:
            end = text.find("\n", pos, limit)
            end = end if end >= 0 else limit
            stop = _SENTENCE_END.search(text, pos, end)  # up to the sentence's end
            line = text[pos:stop.start() if stop else end]
            hope = _I_HOPE.search(line)
            answer = (line[:hope.start()] if hope else line).strip()
            if answer.endswith("."):
                answer = answer[:-1]
        answer = _unwrap_box(answer).strip()
        if answer.lower() in _VERDICTS:
            continue
        return answer or None
    return None


def extract_answer_with_source(text: str) -> Tuple[Optional[str], Optional[str]]:
    """(answer, "final_answer" | "boxed" | "answer_is") or (None, None); see the module docstring for the rules."""
    answer = _stated_answer(text, _FINAL_ANSWER)
    if answer:
        return answer, "final_answer"
    boxed = last_boxed(text)
    if boxed:
        return boxed, "boxed"
    answer = _stated_answer(text, _ANSWER_IS)
    if answer:
        return answer, "answer_is"
    return None, None


def extract_answer(text: str) -> Optional[str]:
    """The final answer of a response: the paper's "The final answer is $X$" line, else the last \\boxed{X}, else the
    last "the answer is X"."""
    return extract_answer_with_source(text)[0]


# ================================================================================================================
# String normalisation (MATH style) and unit stripping
# ================================================================================================================
# Units written without \text{} ("5 cm"): a whitelist, as a bare letter after a number is usually a variable
_BARE_UNITS = [
    "millimeter", "millimetre", "centimeter", "centimetre", "meter", "metre", "kilometer", "kilometre", "mm", "cm",
    "km", "inch", "inches", "foot", "feet", "ft", "yard", "yd", "mile", "unit", "liter", "litre", "milliliter",
    "millilitre", "ml", "gallon", "quart", "pint", "acre", "hectare", "milligram", "gram", "kilogram", "mg", "kg",
    "pound", "lb", "lbs", "ounce", "oz", "ton", "tonne", "second", "sec", "minute", "min", "hour", "hr", "day",
    "week", "month", "year", "yr", "mph", "kph", "degree", "deg", "radian", "dollar", "cent", "cents", "euro",
]
_BARE_ALT = "|".join(sorted((re.escape(u) for u in _BARE_UNITS), key=len, reverse=True))
_POWER = r"(?:\s*\^\s*(?:\{\s*[23]\s*\}|[23]))?"
_TEXT_CMD = r"\\(?:text|textrm|textnormal|textit|mbox|mathrm|rm)"
# The end-anchored patterns below start at a literal, never at whitespace: re.search would rescan a long run of
# whitespace from each of its characters (quadratic). The whitespace before a match is stripped by their callers.
# a trailing \text{...} group of a few words: a unit or a counted noun ("5 \text{ cm}^2", "12 \text{ students}")
_TEXT_TAIL = re.compile(rf"{_TEXT_CMD}\s*\{{(?:[\s~]|\\[ ,;])*([A-Za-z][A-Za-z.\-/ ]{{0,40}}?)"
                        rf"(?:[\s~]|\\[ ,;])*\}}{_POWER}\s*$")
_BARE_TAIL = re.compile(rf"(?<=[\d}}\s])(?:(?:square|cubic)\s+)?(?:{_BARE_ALT})(?:e?s)?\.?{_POWER}\s*$")
# Words that turn a trailing text into a statement about the answer ("4 \text{ or 3}", "4 \text{ is wrong}"): such
# a text is not stripped (math-verify's own unit rule would drop any trailing \text{...}; it is switched off).
_HEDGE_WORDS = frozenset(
    "or and not nor no yes either neither maybe perhaps possibly probably approximately approx about roughly nearly "
    "almost wrong incorrect false true correct except but unless if otherwise else than is are was be".split()
)
_PERCENT_WORD = re.compile(rf"(?:{_TEXT_CMD}\s*\{{\s*percent\s*\}}|\bpercent)\s*$")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree(?![a-zA-Z])")


def _strip_tail_once(s: str) -> str:
    m = _TEXT_TAIL.search(s)
    if m and not (set(re.split(r"[\s.\-/]+", m.group(1).lower())) & _HEDGE_WORDS):
        return s[:m.start()].strip()
    return _BARE_TAIL.sub("", s).strip()


def strip_units(answer: str) -> str:
    """Remove trailing units and counted nouns (``5 \\text{ cm}^2``, ``12 \\text{ students}``, ``5 cm``,
    ``30^\\circ``); a trailing "percent" becomes ``\\%``. Never returns an empty string."""
    s = _DEGREES.sub("", answer).strip()
    percent = _PERCENT_WORD.search(s)
    if percent:
        s = s[:percent.start()].rstrip() + "\\%"
    for _ in range(2):
        new = _strip_tail_once(s)
        if not new or new == s:
            break
        s = new
    return s or answer.strip()


_SPACING = re.compile(r"(?<!\\)\\[,;:!> ]|\\q?quad(?![a-zA-Z])|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|bigg|Bigg)(?![a-zA-Z])")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|textit|textnormal|mbox|mathrm|mathbf|mathit|rm|operatorname)"
                           r"\s*\{([^{}]*)\}")
_ASSIGNMENT = re.compile(r"^[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?=(?!=)")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"-?\d+\.\d+")


def normalize_answer(answer: str) -> str:
    """A canonical string for MATH-style string comparison (see the module docstring)."""
    s = _unwrap_box(str(answer)).replace("\n", " ")
    s = _SPACING.sub(" ", s)
    s = _LEFT_RIGHT.sub("", s)
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = s.replace("\\displaystyle", "")
    s = strip_units(s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")  # a percent sign is optional (MATH convention)
    for _ in range(3):  # nested wrappers
        s = _TEXT_WRAPPER.sub(r"\1", s)
    s = re.sub(r"\s+", "", s)
    s = s.replace("\\varnothing", "\\emptyset").replace("\\infinity", "\\infty")
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1]
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)  # .5 → 0.5
    if _DECIMAL.fullmatch(s):
        s = s.rstrip("0").rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if m:
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    m = re.fullmatch(r"\(([A-Za-z])\)", s)
    if m:
        s = m.group(1)
    if re.fullmatch(r"[A-Za-z]{2,}", s):
        s = s.lower()
    return s


def strings_equivalent(pred: str, gold: str) -> bool:
    """MATH-style string equivalence; a leading ``x =`` is dropped when only one side has one."""
    a, b = normalize_answer(pred), normalize_answer(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    a_assign, b_assign = _ASSIGNMENT.match(a), _ASSIGNMENT.match(b)
    if bool(a_assign) != bool(b_assign):
        if a_assign and a.count("=") == 1:
            a = a[a_assign.end():]
        if b_assign and b.count("=") == 1:
            b = b[b_assign.end():]
        return bool(a) and a == b
    return False


# ================================================================================================================
# math-verify, run inside the pool's worker processes
# ================================================================================================================
