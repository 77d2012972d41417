"""JSON-schema pieces the DAGs' Params share.

Airflow checks a Param's ``pattern`` with Python's ``re.search``, where ``$`` also matches before a final newline:
``^[a-z]+$`` accepts ``"abc\\n"``. ``whole(pattern)`` refuses every control character anywhere in the value first
(a lookahead that JavaScript's regular expressions, which the UI's form uses, read the same way).
"""

from __future__ import annotations

NO_CONTROL = r"(?![\s\S]*[\x00-\x1f\x7f])"


def whole(pattern: str) -> str:
    """``pattern`` (anchored with ``^``/``$``) for values without control characters, trailing newline included."""
    return f"{NO_CONTROL}(?:{pattern})"
