"""The token cache of a big corpus: build speed against the raw tokenizer, peak memory, and a second run's setup.

    python benchmarks/data_throughput.py [--mb 1024] [--dir DIR] [--kinds char,byte_bpe]

Generates a corpus of ``--mb`` MiB (English-like words, some multi-byte characters) twice: as one file, and as a
folder of many files. For each layout and tokenizer, in this process (its peak RSS reset before each layout and
tokenizer, through ``/proc/self/clear_refs``; Python, torch and Lightning already imported count in it):

    first setup    TokenDataModule.setup() on an empty cache: the vocabulary (char) or training (byte_bpe), then
                   the token cache
    tokenise       setup() again with only the token cache removed (the tokenizer file kept): the streaming
                   pipeline alone (read, decode, cut, encode on all cores, write); its MiB/s is the table's, and
                   peak RSS is that of the first setup and this one
    second setup   setup() with the cache in place: what every later run pays
    raw            the tokenizer's own encoder on the same cores over text already in memory (the first 64 MiB):
                   ``encode_batch_fast`` for byte_bpe, ``CharTokenizer.encode_array`` for char

Targets (issue 12): peak RSS under 1 GB whatever the size; tokenise within 1.5x of raw (ratio = raw / tokenise);
second setup under 2 s. MB here is MiB.
"""

from __future__ import annotations

import argparse
import gc
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
RAW_MAX_MB = 64
WORDS = ("the of and to in is was for that with as on by his at from it an were are which this be or has had "
         "not first one their its new after who they have her she two been other when there all during into "
         "school time may years more most only over city some world would where later up such used many can "
         "state about national out known university united then made café naïve über straße 日本 東京 émigré "
         "année œuvre 😀 transformer attention model token layer data").split()


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``/proc/self/clear_refs``); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> int:
    """This process's peak resident set since the last reset (``VmHWM``), else since it started, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak / (MIB if sys.platform == "darwin" else 1024))


def _blocks(seed: int, n: int = 4) -> list[bytes]:
    """``n`` distinct blocks of about a MiB: lines of 5 to 19 random words and a punctuation mark."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.array(WORDS, dtype=object)
    blocks = []
    for _ in range(n):
        ids = rng.integers(0, len(WORDS), 200_000)
        ends = np.cumsum(rng.integers(5, 20, 40_000))
        ends = ends[ends < len(ids)]
        marks = np.array([".", ",", "!", "?"], dtype=object)[rng.integers(0, 4, len(ids))]
        seps = np.full(len(ids), " ", dtype=object)
        seps[ends] = np.char.add(marks[ends].astype(str), "\n").astype(object)
        data = "".join((words[ids] + seps).tolist()).encode("utf-8")
        blocks.append(data[: data.rfind(b"\n", 0, MIB) + 1])
    return blocks


def generate(path: Path, mb: float, blocks: list[bytes], first: int = 0) -> None:
    """``mb`` MiB of ``blocks``, cycled from ``first``, written a block at a time."""
    target, written, i = int(mb * MIB), 0, first
    with open(path, "wb") as f:
        while written < target:
            block = blocks[i % len(blocks)]
            if len(block) > target - written:  # the last one: whole lines, then a line of x (no character cut)
                block = block[: block.rfind(b"\n", 0, target - written) + 1]
                block += b"x" * (target - written - len(block) - 1) + b"\n"
            f.write(block)
            written += len(block)
            i += 1


def make_corpora(root: Path, mb: float, n_files: int) -> dict[str, Path]:
    one = root / "one_file" / "corpus.txt"
    many = root / "many_files"
    blocks = _blocks(0)
    if not one.exists():
        one.parent.mkdir(parents=True, exist_ok=True)
        generate(one, mb, blocks)
    if not many.exists():
        many.mkdir(parents=True)
        for i in range(n_files):
            generate(many / f"part-{i:04d}.txt", mb / n_files, blocks, first=i)
    return {"one file": one, "many files": many}


# ---------------------------------------------------------------------------------------- the steps


def datamodule(path: Path, kind: str, cache: Path):
    from builder.data.datamodule import TokenDataModule

    return TokenDataModule(source="text", path=str(path), tokenizer=kind, cache_dir=str(cache), bpe_vocab_size=4096,
                           context_length=64, batch_size=4, samples_per_epoch=16)


def timed_setup(path: Path, kind: str, cache: Path):
    dm = datamodule(path, kind, cache)
    start = time.perf_counter()
    dm.setup()
    return dm, time.perf_counter() - start


def raw_mb_s(path: Path, tok) -> float:
    """The tokenizer's own encoder, on the same cores, over up to RAW_MAX_MB MiB of the corpus held in memory."""
    from builder.data.corpus import Corpus
    from builder.data.stream import BATCH_PIECES_PER_CORE, PIECE_CHARS, cpu_count

    text, size = [], 0
    for block in Corpus("text", path).blocks():
        text.append(block)
        size += len(block)
        if size >= RAW_MAX_MB * MIB:
            break
    text = "".join(text)
    n_bytes = len(text.encode("utf-8"))
    pieces = [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]
    del text
    batch = cpu_count() * BATCH_PIECES_PER_CORE
    start = time.perf_counter()
    if tok.kind == "char":
        for piece in pieces:
            tok.encode_array(piece)
    else:
        hf = tok.hf_tokenizer
        for i in range(0, len(pieces), batch):
            hf.encode_batch_fast(pieces[i : i + batch], add_special_tokens=False)
    return n_bytes / MIB / (time.perf_counter() - start)


def corpus_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=1024, help="corpus size in MiB (default 1024)")
    parser.add_argument("--files", type=int, default=0, help="files of the folder layout (default: one per 8 MiB, >= 4)")
    parser.add_argument("--kinds", default="char,byte_bpe")
    parser.add_argument("--dir", default=None, help="where the corpora and caches go (default: a temporary folder)")
    args = parser.parse_args()

    from builder.data.stream import cpu_count

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="data_throughput-"))
    try:
        n_files = args.files or max(4, int(args.mb // 8))
        start = time.perf_counter()
        corpora = make_corpora(root / f"corpus-{args.mb:g}mb", args.mb, n_files)
        print(f"corpus: {args.mb:g} MiB as one file and as {n_files} files (generated in "
              f"{time.perf_counter() - start:.1f} s); {cpu_count()} cores; MB = MiB")
        import builder.data.datamodule  # noqa: F401  (imported before any peak is taken)

        exact_peaks = reset_peak_rss()
        print(f"resident at rest (Python, numpy, torch, Lightning, tokenizers imported): {peak_rss_mb()} MB")
        notes = []
        for layout, path in corpora.items():
            mb = corpus_mb(path)
            for kind in args.kinds.split(","):
                cache = root / "cache" / f"{layout.replace(' ', '_')}-{kind}"
                shutil.rmtree(cache, ignore_errors=True)
                gc.collect()
                reset_peak_rss()
                first, first_s = timed_setup(path, kind, cache)
                for f in cache.glob("tokens-*.bin"):  # the tokenizer file stays: tokenise alone
                    f.unlink()
                tokenised, tokenise_s = timed_setup(path, kind, cache)
                peak = peak_rss_mb()
                second, second_s = timed_setup(path, kind, cache)
                assert first.cache_hit is False and tokenised.cache_hit is False and second.cache_hit is True
                raw = raw_mb_s(path, second.tokenizer)
                mb_s = mb / tokenise_s
                print(f"{layout:<10} {kind:<8} {mb_s:8.1f} MB/s  raw {raw:8.1f} MB/s  "
                      f"ratio {raw / mb_s:5.2f}x  peak RSS {peak:5d} MB  second setup {second_s:.2f} s", flush=True)
                notes.append(f"{layout:<10} {kind:<8} first setup {first_s:7.1f} s (vocabulary or training, then "
                             f"tokenise), {first.num_tokens:,} tokens")
                del first, tokenised, second
        print("\n".join(notes))
        if not exact_peaks:
            print("peak RSS: the process's since it started (this system cannot reset it)")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
