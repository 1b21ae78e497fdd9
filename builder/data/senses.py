"""The senses language: words of several meanings that only their context tells apart.

The lecture's example: "mole" is an animal that digs, an amount of a chemical, a mark on the skin; the word's
vector starts the same in every sentence, and attention has to move meaning into it from the words around it.
Here every sentence is

    PREP the CUE , the ADJ{0..2} HOMONYM NEXT TAIL .

e.g. ``near the garden , the small mole dug again .`` or ``in the lab , the mole reacted today .``

* Each homonym has two or three senses; each sense has its own *cue* words (garden, lawn, soil for the digging
  mole) and its own *next* words (dug, burrowed). A sentence picks a homonym, a sense, one of its cues and one of
  its next words.
* So the word after the homonym can only be predicted from the cue, a few words back (0-2 neutral adjectives in
  between): the homonym's position must gather its sense from the cue. The vocabulary is closed (``VOCABULARY``).

``lecture_text`` mixes these sentences with the adjectives language's (builder/data/adjectives.py), so one small
model shows the lecture's adjective head, word classes in its embedding and meaning refined by context.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import adjectives as adj

# homonym -> sense -> (cue words, next words); every cue and next word belongs to one sense of one homonym
HOMONYMS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "mole": {"animal": (("garden", "lawn", "soil"), ("dug", "burrowed")),
             "chemistry": (("lab", "chemist", "beaker"), ("reacted", "dissolved")),
             "skin": (("doctor", "clinic", "mirror"), ("itched", "darkened"))},
    "bank": {"river": (("stream", "shore", "flood"), ("eroded", "overflowed")),
             "money": (("loan", "teller", "vault"), ("lent", "paid"))},
    "bat": {"animal": (("attic", "night", "wing"), ("flew", "squeaked")),
            "sport": (("game", "pitch", "umpire"), ("cracked", "swung"))},
    "crane": {"bird": (("marsh", "nest", "feather"), ("waded", "nested")),
              "machine": (("site", "steel", "tower"), ("lifted", "hoisted"))},
}
PREPOSITIONS = ("near", "in", "at", "by")
ARTICLE = "the"
COMMA = ","
MAX_ADJECTIVES = 2
VOCABULARY = tuple(sorted({*PREPOSITIONS, ARTICLE, COMMA, adj.END, *adj.NEUTRAL_ADJECTIVES, *adj.NEUTRAL_TAILS,
                           *HOMONYMS, *(w for senses in HOMONYMS.values() for cues, nexts in senses.values()
                                        for w in (*cues, *nexts))}))


@dataclass
class SenseSentence:
    """One sentence and where its homonym and cue are (word indices), with the homonym's sense."""

    words: list[str]
    homonym: int
    cue: int
    sense: str

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def word(self) -> str:
        return self.words[self.homonym]


def _sentence(rng: random.Random) -> SenseSentence:
    homonym = rng.choice(tuple(HOMONYMS))
    sense = rng.choice(tuple(HOMONYMS[homonym]))
    cues, nexts = HOMONYMS[homonym][sense]
    fillers = rng.sample(adj.NEUTRAL_ADJECTIVES, rng.randint(0, MAX_ADJECTIVES))
    words = [rng.choice(PREPOSITIONS), ARTICLE, rng.choice(cues), COMMA, ARTICLE, *fillers, homonym,
             rng.choice(nexts), rng.choice(adj.NEUTRAL_TAILS), adj.END]
    return SenseSentence(words, homonym=5 + len(fillers), cue=2, sense=sense)


def generate(n_sentences: int, seed: int = 0) -> list[SenseSentence]:
    """``n_sentences`` sentences, the same ones for the same ``(n_sentences, seed)``."""
    if n_sentences < 0:
        raise ValueError(f"n_sentences must be >= 0, got {n_sentences}")
    rng = random.Random(f"senses-{seed}")
    return [_sentence(rng) for _ in range(n_sentences)]


def follows_grammar(words: list[str]) -> bool:
    """True when ``words`` is one sentence of the language: the next word is of the cue's sense and homonym."""
    words = list(words)
    if len(words) < 9 or words[0] not in PREPOSITIONS or words[1] != ARTICLE or words[3] != COMMA \
            or words[4] != ARTICLE or words[-1] != adj.END or words[-2] not in adj.NEUTRAL_TAILS:
        return False
    fillers = words[5:-4]
    homonym, nxt = words[-4], words[-3]
    if len(fillers) > MAX_ADJECTIVES or len(set(fillers)) != len(fillers) \
            or any(f not in adj.NEUTRAL_ADJECTIVES for f in fillers) or homonym not in HOMONYMS:
        return False
    return any(words[2] in cues and nxt in nexts for cues, nexts in HOMONYMS[homonym].values())


def lecture_text(n_sentences: int, seed: int = 0) -> str:
    """Adjectives sentences and senses sentences, alternating, one per line: ``n_sentences`` in all."""
    first = adj.generate((n_sentences + 1) // 2, seed)
    second = generate(n_sentences // 2, seed)
    lines = [s.text for pair in zip(first, second) for s in pair] + [s.text for s in first[len(second):]]
    return "".join(line + "\n" for line in lines)
