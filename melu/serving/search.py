"""Title search as a person types it: article-, accent-, punctuation- and case-insensitive,
tolerant of typos.

MovieLens titles are stored library-style ("Godfather, The (1972)", "Cité des enfants
perdus, La"), so every title is normalised once into search keys: accents and case folded,
a trailing ", The" moved to the front and then dropped with any leading article,
punctuation removed, the year kept apart. Alternative titles in parentheses ("City of Lost
Children, The (Cité des enfants perdus, La) (1995)") are keys of the same row. A query is
normalised the same way and matched in tiers: a key starting with it, a word of a key
starting with it, the query anywhere in a key (all three ignore spaces, so "starwars" finds
"Star Wars"), then typo-tolerant matches from ``rapidfuzz`` (partial ratio ≥
``FUZZY_CUTOFF``, only for queries of at least ``FUZZY_MIN`` letters). Within a tier the
more often rated movies come first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np
from rapidfuzz import fuzz, process

ARTICLES = ("the", "a", "an", "les", "la", "le", "l", "il", "das", "der", "die", "el", "los",
            "las", "une", "un", "lo", "i")  # fmt: skip
FUZZY_CUTOFF = 85.0  # rapidfuzz partial ratio (0..100) a typo match needs
FUZZY_MIN = 5  # shorter queries match exactly only (one typo in 4 letters is another word)

_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_PAREN = re.compile(r"\(([^()]*)\)")
_TRAILING_ARTICLE = re.compile(r"^(.*?),\s*(" + "|".join(ARTICLES) + r"|l')\s*$")
_LEADING_ARTICLE = re.compile(r"^(?:" + "|".join(ARTICLES) + r")\s+")
_APOSTROPHE = re.compile(r"['’`´]")
_NOT_WORD = re.compile(r"[\W_]+")


def fold(text: str) -> str:
    """Accents stripped and case folded: ``"Cité"`` → ``"cite"``."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def normalise(text: str) -> str:
    """One title (without its year) or a query → its search key.

    ``"Godfather: Part II, The"`` → ``"godfather part ii"``; ``"Schindler's List"`` →
    ``"schindlers list"``; ``"the godfather"`` → ``"godfather"``.
    """
    text = fold(text).replace("&", " and ")
    text = _TRAILING_ARTICLE.sub(r"\2 \1", text.strip())
    text = _NOT_WORD.sub(" ", _APOSTROPHE.sub("", text)).strip()
    stripped = _LEADING_ARTICLE.sub("", text)
    return stripped or text  # "The" alone stays "the"


def title_keys(title: str) -> list[str]:
    """Every search key of one stored title: the main title, the main title with its year,
    and each alternative title in parentheses (``a.k.a.`` dropped)."""
    match = _YEAR.search(title)
    year = match.group(1) if match else ""
    bare = title[: match.start()] if match else title
    aliases = [a.strip() for a in _PAREN.findall(bare)]
    main = _PAREN.sub(" ", bare)
    keys = [normalise(main)]
    if year:
        keys.append(f"{keys[0]} {year}")
    for alias in aliases:
        alias = re.sub(r"^a\.?k\.?a\.?\s+", "", alias, flags=re.IGNORECASE)
        if alias and not alias.isdigit():
            keys.append(normalise(alias))
    return [k for k in keys if k]


class _Blob:
    """Many strings joined by newlines, so that one ``re.finditer`` (in C) finds a needle
    in all of them at once."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.text = "\n".join(texts)
        self.lengths = np.array([len(t) for t in texts], dtype=np.int64)  # (K,)
        self.starts = np.cumsum(self.lengths + 1) - (self.lengths + 1)  # (K,)

    def find(self, needle: str) -> tuple[np.ndarray, np.ndarray]:
        """Every (non-overlapping) occurrence of ``needle``: (F,) which string, (F,) where
        in it. Each string holding the needle appears at least once."""
        at = np.fromiter(
            (m.start() for m in re.finditer(re.escape(needle), self.text)), dtype=np.int64
        )  # (F,)
        which = np.searchsorted(self.starts, at, side="right") - 1
        return which, at - self.starts[which]


class TitleIndex:
    """Search keys of every catalog row, built once; ``match`` ranks rows for a query.

    The exact tiers search all keys at once (:class:`_Blob`), the typo tier is one
    ``rapidfuzz.process.cdist`` call: tens of milliseconds for 87k titles on one core.
    """

    def __init__(self, titles: Sequence[str], popularity: np.ndarray) -> None:
        """``titles``: one per row; ``popularity``: (I,) training rating counts (ties)."""
        keys, owners, typo = [], [], []
        for row, title in enumerate(titles):
            for i, key in enumerate(title_keys(title)):
                typo.append(not (i == 1 and key[-4:].isdigit()))  # "title year": exact only
                keys.append(key)
                owners.append(row)
        self._compact = _Blob([k.replace(" ", "") for k in keys])  # "starwars"
        self._words = _Blob([" " + k for k in keys])  # " star wars": word starts
        self._typo = np.flatnonzero(np.array(typo, dtype=bool))  # (T,) keys with typo matches
        self._typo_keys = [keys[i] for i in self._typo]
        self._typo_len = np.array([len(k) for k in self._typo_keys], dtype=np.int64)  # (T,)
        self._owner = np.asarray(owners, dtype=np.int64)  # (K,) key → row
        self._rows = len(titles)
        self._popularity = np.asarray(popularity, dtype=np.int64)  # (I,)

    def scores(self, text: str) -> np.ndarray:
        """(I,) float64 relevance of every row for ``text`` (its best key): 300 a key starts
        with it, 200 a word of a key does, 150 it is inside a key, 85..100 a typo match
        (the rapidfuzz score), 0 no match."""
        query = normalise(text)
        compact = query.replace(" ", "")
        best = np.zeros(self._rows, dtype=np.float64)
        if not compact or not len(self._owner):
            return best
        tier = np.zeros(len(self._owner), dtype=np.float64)  # (K,)
        if len(compact) >= FUZZY_MIN:
            tier[self._typo] = self._fuzzy(query)
        inside, at = self._compact.find(compact)
        np.maximum.at(tier, inside, np.where(at == 0, 300.0, 150.0))
        word, _ = self._words.find(" " + query)
        np.maximum.at(tier, word, 200.0)
        np.maximum.at(best, self._owner, tier)
        return best

    def _fuzzy(self, query: str) -> np.ndarray:
        """(T,) rapidfuzz score of the typo tier's keys, 0 below ``FUZZY_CUTOFF``: the
        partial ratio (the key's best window) for keys at least as long as the query, else
        the plain ratio (a short title is no perfect match for a long query)."""
        score = process.cdist(
            [query], self._typo_keys, scorer=fuzz.partial_ratio, score_cutoff=FUZZY_CUTOFF,
            workers=1,
        )[0].astype(np.float64)  # fmt: skip
        short = np.flatnonzero(self._typo_len < len(query))
        if len(short):
            keys = [self._typo_keys[i] for i in short]
            ratio = process.cdist([query], keys, scorer=fuzz.ratio, score_cutoff=FUZZY_CUTOFF)
            score[short] = ratio[0]
        return score

    def best(self, text: str) -> np.ndarray:
        """The rows ``text`` names best, most rated first: those with a key equal to it
        (``"heat"``, ``"Shaft (2000)"``), else those sharing the top score; empty if none."""
        compact = normalise(text).replace(" ", "")
        which, at = self._compact.find(compact) if compact else (np.zeros(0, np.int64),) * 2
        equal = which[(at == 0) & (self._compact.lengths[which] == len(compact))]
        rows = np.unique(self._owner[equal])
        if not len(rows):
            score = self.scores(text)
            top = score.max(initial=0.0)
            rows = np.flatnonzero(score == top) if top > 0 else rows
        return rows[np.argsort(-self._popularity[rows], kind="stable")]  # type: ignore[no-any-return]

    def match(self, text: str, keep: np.ndarray | None = None) -> np.ndarray:
        """Rows matching ``text`` (and ``keep``, an (I,) bool mask), best first: by
        relevance, then training rating count, then row."""
        score = self.scores(text)
        hit = score > 0 if keep is None else (score > 0) & keep
        rows = np.flatnonzero(hit)
        order = np.lexsort((rows, -self._popularity[rows], -score[rows]))
        return rows[order]  # type: ignore[no-any-return]
