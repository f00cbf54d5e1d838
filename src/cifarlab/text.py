"""Words for numbers: "1 epoch", "2 epochs", "1,800 images", never "1 epochs" or "epoch(s)".

    >>> from cifarlab.text import plural
    >>> plural(1, "epoch"), plural(1800, "image"), plural(2, "class", "classes")
    ('1 epoch', '1,800 images', '2 classes')
"""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`count` and the noun, singular for exactly one; thousands separated by commas."""
    word = noun if count == 1 else (many or noun + "s")
    return f"{count:,} {word}"
