"""The adjectives language: a generated corpus where a noun must look back at its adjectives.

The lecture imagines a head in which nouns ask "are there adjectives in front of me?" and the
adjectives answer. This language makes that head necessary. Every sentence is

    DET ADJ{0..3} NOUN VERB PREP DET ADJ{0..3} NOUN TAIL .

e.g. ``a fluffy blue creature roamed through the verdant shiny forest brightly .``

* Adjectives are *key* adjectives (each tied to one verb and one tail word) or *neutral* ones
  (colours, sizes, ages). A noun phrase with adjectives holds exactly one key adjective, at a
  uniformly random slot among them; the others are neutral; all are distinct.
* The VERB after the subject noun is the verb of the subject's key adjective (``fluffy`` →
  ``roamed``); with no adjectives it is a random neutral verb.
* The TAIL after the object noun is the tail word of the object's key adjective (``fluffy`` →
  ``softly``); with no adjectives it is a random neutral tail.

So the word after a noun can only be predicted from the noun's own key adjective, whose distance
varies: the noun's position has to gather its adjectives. The vocabulary is closed (``VOCABULARY``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

DETERMINERS = ("a", "the")
# key adjective -> (verb after the subject noun, tail word after the object noun)
KEY_ADJECTIVES: dict[str, tuple[str, str]] = {
    "fluffy": ("roamed", "softly"),
    "slippery": ("swam", "wetly"),
    "speedy": ("raced", "swiftly"),
    "loud": ("sang", "noisily"),
    "shiny": ("glowed", "brightly"),
    "sleepy": ("napped", "drowsily"),
    "prickly": ("bristled", "sharply"),
    "hungry": ("feasted", "greedily"),
}
NEUTRAL_ADJECTIVES = ("blue", "red", "green", "verdant", "small", "big", "old", "young", "tall", "round")
NOUNS = ("creature", "cat", "dog", "fox", "otter", "bird", "forest", "river", "meadow", "cave")
NEUTRAL_VERBS = ("waited", "stood", "appeared", "lingered")
PREPOSITIONS = ("in", "near", "through", "across", "beside", "under")
NEUTRAL_TAILS = ("today", "again", "quietly", "there", "yesterday")
END = "."
MAX_ADJECTIVES = 3

VERB_OF = {adj: verb for adj, (verb, _) in KEY_ADJECTIVES.items()}
TAIL_OF = {adj: tail for adj, (_, tail) in KEY_ADJECTIVES.items()}
ADJECTIVES = tuple(KEY_ADJECTIVES) + NEUTRAL_ADJECTIVES
VOCABULARY = tuple(sorted({*DETERMINERS, *ADJECTIVES, *NOUNS, *VERB_OF.values(), *NEUTRAL_VERBS,
                           *PREPOSITIONS, *TAIL_OF.values(), *NEUTRAL_TAILS, END}))
# the lecture's phrase made a sentence of the language (a neutral adjective alone may not stand)
LECTURE_SENTENCE = "a fluffy blue creature roamed through the verdant shiny forest brightly ."


@dataclass
class Sentence:
    """One sentence: its words and, for each noun (by word index), the word indices of its adjectives."""

    words: list[str]
    noun_adjectives: dict[int, list[int]] = field(default_factory=dict)

    @property
    def nouns(self) -> list[int]:
        """Word indices of the nouns: [subject, object]."""
        return sorted(self.noun_adjectives)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def key_adjective(self, noun: int) -> int | None:
        """Word index of the noun's key adjective (None when it has no adjectives)."""
        for i in self.noun_adjectives[noun]:
            if self.words[i] in KEY_ADJECTIVES:
                return i
        return None


def _noun_phrase(rng: random.Random) -> tuple[list[str], str | None]:
    """DET ADJ{0..3} NOUN; returns the words and the key adjective (None without adjectives)."""
    n = rng.randint(0, MAX_ADJECTIVES)
    adjectives: list[str] = []
    key = None
    if n:
        key = rng.choice(tuple(KEY_ADJECTIVES))
        adjectives = rng.sample(NEUTRAL_ADJECTIVES, n - 1)
        adjectives.insert(rng.randrange(n), key)
    return [rng.choice(DETERMINERS), *adjectives, rng.choice(NOUNS)], key


def _sentence(rng: random.Random) -> Sentence:
    subject, subject_key = _noun_phrase(rng)
    verb = VERB_OF[subject_key] if subject_key else rng.choice(NEUTRAL_VERBS)
    obj, object_key = _noun_phrase(rng)
    tail = TAIL_OF[object_key] if object_key else rng.choice(NEUTRAL_TAILS)
    words = [*subject, verb, rng.choice(PREPOSITIONS), *obj, tail, END]
    parsed = parse(words)
    assert parsed is not None, words
    return parsed


def generate(n_sentences: int, seed: int = 0) -> list[Sentence]:
    """``n_sentences`` sentences, the same ones for the same ``(n_sentences, seed)``."""
    if n_sentences < 0:
        raise ValueError(f"n_sentences must be >= 0, got {n_sentences}")
    rng = random.Random(f"adjectives-{seed}")
    return [_sentence(rng) for _ in range(n_sentences)]


def corpus_text(n_sentences: int, seed: int = 0) -> str:
    """The generated sentences, one per line (words separated by single spaces, ``.`` its own word)."""
    return "".join(s.text + "\n" for s in generate(n_sentences, seed))


def _parse_noun_phrase(words: list[str], i: int) -> tuple[int, list[int]] | None:
    """Parse DET ADJ* NOUN at ``i``: (noun index, adjective indices), or None."""
    if i >= len(words) or words[i] not in DETERMINERS:
        return None
    i += 1
    adjectives = []
    while i < len(words) and words[i] in ADJECTIVES:
        adjectives.append(i)
        i += 1
    if i >= len(words) or words[i] not in NOUNS:
        return None
    return i, adjectives


def _key_of(words: list[str], adjectives: list[int]) -> str | None | bool:
    """The noun phrase's key adjective word; None without adjectives; False when the phrase breaks a rule."""
    names = [words[i] for i in adjectives]
    if len(names) > MAX_ADJECTIVES or len(set(names)) != len(names):
        return False
    keys = [a for a in names if a in KEY_ADJECTIVES]
    if not names:
        return None
    return keys[0] if len(keys) == 1 else False


def parse(words: list[str]) -> Sentence | None:
    """The sentence ``words`` spell, or None when they break any rule of the language."""
    words = list(words)
    subject = _parse_noun_phrase(words, 0)
    if subject is None:
        return None
    s_noun, s_adjs = subject
    s_key = _key_of(words, s_adjs)
    i = s_noun + 1
    if s_key is False or i + 1 >= len(words):
        return None
    verb, prep = words[i], words[i + 1]
    if verb not in ((VERB_OF[s_key],) if s_key else NEUTRAL_VERBS) or prep not in PREPOSITIONS:
        return None
    obj = _parse_noun_phrase(words, i + 2)
    if obj is None:
        return None
    o_noun, o_adjs = obj
    o_key = _key_of(words, o_adjs)
    if o_key is False or len(words) != o_noun + 3 or words[-1] != END:
        return None
    tail = words[o_noun + 1]
    if tail not in ((TAIL_OF[o_key],) if o_key else NEUTRAL_TAILS):
        return None
    return Sentence(words, {s_noun: s_adjs, o_noun: o_adjs})


def follows_grammar(words: list[str]) -> bool:
    """True when ``words`` is one sentence of the language, every rule checked (see the module doc)."""
    return parse(words) is not None
