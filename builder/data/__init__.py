"""Data: from text to training windows.

    tokenizers  char, word, byte-level BPE, GPT-2 BPE; ``tokenizer_from_dict``
    corpus      the embedded CPython text, a UTF-8 file or folder, the generated adjectives language
    adjectives  the generated language whose next words depend on adjectives (the lecture's example)
    cache       the corpus tokenised once into a memory-mapped flat file
    windows     random training windows, fixed validation windows, the exact-order sampler
    datamodule  the Lightning datamodule tying them together (the only module here that imports Lightning)

Nothing is imported here, so ``builder.data.tokenizers`` can be read without Lightning.
"""
