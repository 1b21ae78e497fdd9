"""The senses language and the lecture's measurements on it (builder/data/senses.py, builder/interp/probes.py)."""

import torch

import builder
from builder.data import adjectives, senses
from builder.data.tokenizers import WordTokenizer
from builder.interp.probes import homonym_vectors, lens_agreement, sense_head, sense_probes, word_classes


def test_sentences_follow_their_grammar_and_the_next_word_needs_the_cue():
    sents = senses.generate(300, seed=3)
    assert [s.text for s in sents] == [s.text for s in senses.generate(300, seed=3)]  # seeded
    for s in sents:
        assert senses.follows_grammar(s.words)
        cues, nexts = senses.HOMONYMS[s.word][s.sense]
        assert s.words[s.cue] in cues and s.words[s.homonym + 1] in nexts
    assert {(s.word, s.sense) for s in sents} == {(w, k) for w, ks in senses.HOMONYMS.items() for k in ks}
    wrong = list(sents[0].words)
    other = next(k for k in senses.HOMONYMS[sents[0].word] if k != sents[0].sense)
    wrong[sents[0].homonym + 1] = senses.HOMONYMS[sents[0].word][other][1][0]
    assert not senses.follows_grammar(wrong)  # another sense's next word after this cue
    every = [w for ks in senses.HOMONYMS.values() for cues, nexts in ks.values() for w in (*cues, *nexts)]
    assert len(every) == len(set(every))  # each cue and next word belongs to one sense of one homonym


def test_lecture_text_alternates_the_two_languages():
    lines = senses.lecture_text(10, seed=1).splitlines()
    assert len(lines) == 10
    assert all(adjectives.follows_grammar(line.split()) for line in lines[0::2])
    assert all(senses.follows_grammar(line.split()) for line in lines[1::2])


def test_measurements_on_an_untrained_model():
    """Before training the sense cannot be read off the embedding (every sentence gives the same vector)."""
    tok = WordTokenizer.from_text(" ".join(adjectives.VOCABULARY + senses.VOCABULARY))
    torch.manual_seed(0)
    model = builder.build_model(builder.compose(["model.d_model=32", "model.n_layers=2", "model.n_heads=4",
                                                 "model.context_length=16", "model/embedding=rotary",
                                                 f"model.vocab_size={tok.vocab_size}"]).model).eval()
    sents = senses.generate(200, seed=5)
    vectors = homonym_vectors(model, tok, sents)
    moles = [i for i, s in enumerate(sents) if s.word == "mole"]
    assert torch.allclose(vectors[moles, 0], vectors[moles[0], 0].expand(len(moles), -1))  # same word, same vector
    probes = sense_probes(model, tok, sents)
    assert probes["accuracy"][0] <= probes["chance"] + 1e-6 and len(probes["accuracy"]) == 3
    head = sense_head(model, tok, sents)
    assert 0 <= head["score"] <= 1 and len(head["scores"]) == 2 and len(head["scores"][0]) == 4
    classes = word_classes(model, tok)
    assert set(classes) == {"adjectives", "nouns"} and all(0 <= v <= 1 for v in classes.values())
    assert lens_agreement(model, tok, sents[:20]) == 1.0
