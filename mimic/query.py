"""What a person asks the linker: a `Query`, and the checks of what they typed (`QueryError` says what to fix).

Below the linker and the store, so that everything that takes typed input (the linker, the session overlay,
the CLI, the demo) checks it the same way.
"""
import numbers
import unicodedata
from dataclasses import dataclass

MAX_TOP_K = 100


class QueryError(ValueError):
    """Input a person typed that cannot be linked, with what to do about it."""


@dataclass
class Query:
    sentence: str
    mention: str
    image: object = None  # path, bytes, PIL image or None
    id: object = None


def clean_text(text) -> str:
    """NFC, control characters to spaces (tabs and newlines included), surrounding space removed."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = unicodedata.normalize("NFC", text)
    return "".join(" " if unicodedata.category(c) in ("Cc", "Cf") and c not in "\u200d" else c for c in text).strip()


def check_query(sentence, mention) -> tuple:
    """-> (sentence, mention) cleaned, or QueryError saying what is wrong."""
    sentence, mention = clean_text(sentence), clean_text(mention)
    if not sentence:
        raise QueryError("Please type a sentence that contains the mention.")
    if not mention:
        raise QueryError("Please type the mention: the words of the sentence that name the entity.")
    if len(mention) > len(sentence):
        raise QueryError("The mention is longer than the sentence; it must be a part of the sentence.")
    if mention.casefold() not in sentence.casefold():
        shown = mention if len(mention) <= 60 else mention[:57] + "..."
        raise QueryError(f"The mention \"{shown}\" does not occur in the sentence; copy it from the sentence.")
    return sentence, mention


def check_entity_index(index, count: int) -> int:
    """-> the index as an int, or QueryError: a whole number from 0 to count - 1 (3.0 and "3" are fine)."""
    if isinstance(index, str) and len(index) <= 20 and index.strip().lstrip("-").isdigit():
        index = int(index)
    if isinstance(index, float) and index.is_integer():
        index = int(index)
    if not isinstance(index, numbers.Integral) or isinstance(index, bool) or not 0 <= index < count:
        try:
            shown = str(index) if len(str(index)) <= 40 else str(index)[:37] + "..."
        except ValueError:  # an integer too long to print
            shown = "with so many digits"
        raise QueryError(f"There is no entity {shown} in the KB (it has {count}: indices 0 to {count - 1}).")
    return int(index)


def check_top_k(top_k, count: int) -> int:
    try:
        k = int(top_k)
    except (TypeError, ValueError):
        raise QueryError(f"Top k must be a whole number, got {top_k!r}.")
    if k < 1:
        raise QueryError("Top k must be at least 1.")
    return min(k, count, MAX_TOP_K)
