"""Data: from text to training windows.

    tokenizers  char, word, byte-level BPE, GPT-2 BPE; ``tokenizer_from_dict``
    corpus      the embedded CPython text, UTF-8 files, .jsonl / .parquet records, the generated languages
    stream      bounded reads, cuts that never split a character or a word, tokenising on all cores
    token_files data=tokens: flat uint16/uint32 token files (nanoGPT's train.bin / val.bin)
    adjectives  the generated language whose next words depend on adjectives (the lecture's example)
    senses      the generated language whose homonyms take their sense from a cue word (data=lecture)
    cache       the corpus tokenised once into a memory-mapped flat file, keyed by path, size and mtime
    windows     random training windows, fixed validation windows, the exact-order sampler
    datamodule  the Lightning datamodule tying them together (the only module here that imports Lightning)

Nothing is imported here, so ``builder.data.tokenizers`` can be read without Lightning.
"""
