"""task=ablate and task=patch: exact properties of the measures, and the tasks on a checkpoint, an export and a
Hugging Face folder."""

import json
import math

import pytest
import torch
from conftest import jittered_model, random_gpt2_dir, run_cli, tiny_checkpoint

from builder.interp.interventions import ablate, patch

SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.vocab_size=40", "model.context_length=16"]
PHRASE = "a fluffy blue creature roamed the verdant forest"


def test_ablating_a_silent_head_changes_nothing_and_others_something():
    """A head whose W_o columns are zero writes nothing: zero- and mean-ablating it change the loss by exactly 0;
    zero-ablating a head is cutting its W_o columns."""
    model = jittered_model(SMALL)
    with torch.no_grad():
        model.blocks[1].attention.o.weight[:, 8:16] = 0  # layer 1, head 1
    inputs = [torch.randint(0, 40, (1, 12), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    for kind in ("zero", "mean"):
        out = ablate(model, inputs, kind)
        assert out["heads"][1][1] == 0.0, kind
        assert min(abs(v) for row in out["heads"] for h, v in enumerate(row) if (row, h) != (out["heads"][1], 1)) > 0
        assert len(out["mlps"]) == 2 and all(v != 0 for v in out["mlps"])
    zeroed = ablate(model, inputs, "zero", mlps=False)
    with torch.no_grad():
        model.blocks[0].attention.o.weight[:, 16:24] = 0  # layer 0, head 2 cut out by hand
    cut = ablate(model, inputs, "zero", heads=False, mlps=False)["baseline"]
    assert zeroed["heads"][0][2] == pytest.approx(cut - zeroed["baseline"], abs=1e-5)


def test_patching_the_one_differing_token_restores_everything():
    """Prompts that differ at one position: patching the stream entering layer 0 there restores the whole
    difference (share 1), elsewhere nothing (share 0); before it nothing differs at any layer."""
    model = jittered_model(SMALL)
    clean = torch.tensor([[3, 7, 9, 11, 5, 2]])
    corrupted = torch.tensor([[3, 7, 20, 11, 5, 2]])
    out = patch(model, clean, corrupted, (4, 6))
    assert out["clean_diff"] != out["corrupted_diff"]
    assert out["resid_pre"][0][2] == pytest.approx(1.0, abs=1e-5)
    assert all(v == 0.0 for p, v in enumerate(out["resid_pre"][0]) if p != 2)
    assert all(v == 0.0 for v in out["resid_pre"][1][:2])  # before the change nothing differs
    assert len(out["heads"]) == 2 and len(out["heads"][0]) == 4
    assert all(v == 0.0 for v in out["mlp_out"][0][:2])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A trained checkpoint (char tokenizer), its export folder, and a random GPT-2 Hugging Face folder."""
    root = tmp_path_factory.mktemp("interventions")
    ckpt, env = tiny_checkpoint(root, PHRASE)
    proc = run_cli("task=export", f"checkpoint={ckpt}", f"hydra.run.dir={root / 'export'}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = next(p.parent for p in (root / "export").rglob("hydraformer.json"))
    hf = random_gpt2_dir(root / "gpt2", [PHRASE, "the creature swims in the blue forest"], n_layer=2)
    return {"checkpoint": (ckpt, 2), "export": (export, 2), "hf": (hf, 4), "env": env}


@pytest.mark.parametrize("which", ["checkpoint", "export", "hf"])
def test_ablate_and_patch_tasks_on_every_kind_of_model(models, which, tmp_path):
    path, n_heads = models[which]
    out = tmp_path / "ablate"
    proc = run_cli("task=ablate", f"checkpoint={path}", "ablation=zero", f"texts=[{PHRASE},the blue forest]",
                   f"hydra.run.dir={out}", env=models["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "ablate.json").read_text())
    assert result["metric"] == "loss" and result["ablation"] == "zero"
    assert len(result["heads"]) == 2 and all(len(row) == n_heads for row in result["heads"])
    assert len(result["mlps"]) == 2 and (out / "ablate.png").read_bytes()[:4] == b"\x89PNG"
    assert "with nothing ablated" in proc.stdout
    clean, corrupted = ("a fluffy", "a bluffy") if which != "hf" else ("a fluffy blue creature", "a fluffy blue forest")
    out = tmp_path / "patch"
    proc = run_cli("task=patch", f"checkpoint={path}", f"clean={clean}", f"corrupted={corrupted}",
                   f"hydra.run.dir={out}", env=models["env"])
    if proc.returncode == 2:  # both prompts predict the same token: the refusal says to name answers
        assert "answers" in proc.stderr and "no difference to restore" in proc.stderr
        first = "e" if which != "hf" else "the"
        proc = run_cli("task=patch", f"checkpoint={path}", f"clean={clean}", f"corrupted={corrupted}",
                       f"answers=[{first},a]", f"hydra.run.dir={out}", env=models["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "patch.json").read_text())
    t = len(result["tokens"])
    assert all(len(result[s]) == 2 and all(len(row) == t for row in result[s])
               for s in ("resid_pre", "attn_out", "mlp_out"))
    differ = [p for p, (a, b) in enumerate(zip(result["tokens"], result["corrupted_tokens"])) if a != b]
    assert len(differ) == 1  # the one differing token, patched as it enters: everything restored
    assert result["resid_pre"][0][differ[0]] == pytest.approx(1.0, abs=1e-4)
    assert (out / "patch.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_named(models, tmp_path):
    path, _ = models["checkpoint"]
    env = models["env"]
    proc = run_cli("task=patch", f"checkpoint={path}", "clean=a fluffy", "corrupted=a blue", f"hydra.run.dir={tmp_path}/a",
                   env=env)
    assert proc.returncode == 2 and "corrupted" in proc.stderr and "as many tokens as clean" in proc.stderr
    assert "clean is 8 tokens" in proc.stderr
    proc = run_cli("task=patch", f"checkpoint={path}", "clean=a fluffy", "corrupted=a fluffZ",
                   f"hydra.run.dir={tmp_path}/b", env=env)
    assert proc.returncode == 2 and "corrupted" in proc.stderr and "tokenizer" in proc.stderr
    proc = run_cli("task=ablate", f"checkpoint={path}", "answers=[ab,c]", f"hydra.run.dir={tmp_path}/c", env=env)
    assert proc.returncode == 2 and "answers" in proc.stderr and "'ab' is 2 tokens" in proc.stderr
    proc = run_cli("task=ablate", f"checkpoint={path}", "ablation=half", f"hydra.run.dir={tmp_path}/d", env=env)
    assert proc.returncode == 2 and "ablation" in proc.stderr and "zero" in proc.stderr and "mean" in proc.stderr
    proc = run_cli("task=patch", f"checkpoint={path}", "clean=a fluffy", f"hydra.run.dir={tmp_path}/e", env=env)
    assert proc.returncode == 2 and "corrupted" in proc.stderr
    assert not any((tmp_path / x).exists() for x in "abcde")


def test_ablate_on_the_validation_split(models, tmp_path):
    """split=val measures on the data config's validation windows, refused for data of another tokenizer."""
    path, _ = models["checkpoint"]
    corpus = path.parent.parent.parent / "corpus.txt"
    out = tmp_path / "val"
    proc = run_cli("task=ablate", f"checkpoint={path}", "split=val", "data=text", f"data.path={corpus}",
                   "data.val_batches=2", f"hydra.run.dir={out}", env=models["env"])  # windows of 128 cut to 64
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "ablate.json").read_text())
    assert result["texts"] == ["validation windows of data.source=text"] and result["tokens"] > 64
    assert "validation windows" in proc.stdout
    other = tmp_path / "other.txt"
    other.write_text("zyxw vut " * 400, encoding="utf-8")
    proc = run_cli("task=ablate", f"checkpoint={path}", "split=val", "data=text", f"data.path={other}",
                   f"hydra.run.dir={tmp_path / 'refused'}", env=models["env"])
    assert proc.returncode == 2 and "data" in proc.stderr and "tokenizer is not the checkpoint's" in proc.stderr


# every family builder/hf.py reads and writes, shrunk (as tests/test_interp_families.py shrinks them)
FAMILY_SHAPE = ["model.d_model=64", "model.n_layers=2", "model.n_heads=8", "model.d_head=8", "model.context_length=64",
                "model.mlp.hidden=96"]
MOE_SHAPE = ["model.mlp.n_experts=4", "model.mlp.top_k=2"]
HF_FAMILIES = {"llama3_8b": ["model.attention.n_kv_heads=2"], "mistral_7b": ["model.attention.n_kv_heads=2",
               "model.mask.window=4"], "qwen2_7b": ["model.attention.n_kv_heads=2"],
               "qwen3_8b": ["model.attention.n_kv_heads=2"], "pythia_160m": [],
               "gemma2_2b": ["model.attention.n_kv_heads=2", "model.mask.window=4"],
               # the mixtures of experts, their routers shrunk to 4 experts (DeepSeek's latent attention to small ranks)
               "mixtral_8x7b": ["model.attention.n_kv_heads=2", *MOE_SHAPE],
               "qwen3_30b_a3b": ["model.attention.n_kv_heads=2", *MOE_SHAPE],
               "deepseek_v3": [*MOE_SHAPE, "model.mlp.n_groups=2", "model.mlp.top_groups=1", "model.mlp.first_dense=1",
                               "model.mlp.dense_hidden=40", "model.attention.q_lora_rank=24",
                               "model.attention.kv_lora_rank=16", "model.attention.qk_rope_head_dim=8",
                               "model.attention.qk_nope_head_dim=12",
                               "model.attention.v_head_dim=10", "model.embedding.original_context=16",
                               # DeepSeek's scale: the heads' width (12 + 8), and YaRN's mscale at the preset's factor 40
                               f"model.attention.query_scale={20 ** -0.5 * (0.1 * math.log(40) + 1) ** 2}"],
               "gpt_oss_20b": ["model.attention.n_kv_heads=2", "model.mask.window=4", *MOE_SHAPE,
                               "model.embedding.original_context=16"]}


@pytest.mark.parametrize("name", list(HF_FAMILIES))
def test_ablate_and_patch_read_a_hugging_face_folder_of_each_family(tmp_path, name):
    """task=ablate and task=patch on a Hugging Face folder of each family (written by task=export's writer from a
    random model of the family's preset, a character tokenizer beside it): both run, and their numbers hold their
    definitions (the unablated loss is the model's; patching restores the clean difference at the last layer)."""
    import builder
    from builder.config.plain import to_plain
    from builder.data.tokenizers import CharTokenizer
    from builder.hf import save_hf

    alphabet = "abcdefghijklmnopqrstuvwxyz "
    cfg = to_plain(builder.compose([f"model={name}", *FAMILY_SHAPE, *HF_FAMILIES[name],
                                    f"model.vocab_size={len(alphabet) + 1}"]).model)
    torch.manual_seed(0)
    model = builder.build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = save_hf(model, CharTokenizer(alphabet), cfg, tmp_path / "hf")
    ablated = run_cli("task=ablate", f"checkpoint={folder}", "text=a fluffy cat", f"hydra.run.dir={tmp_path / 'a'}")
    assert ablated.returncode == 0, ablated.stderr[-3000:]
    result = json.loads((tmp_path / "a" / "ablate.json").read_text())
    assert len(result["heads"]) == 2 and len(result["heads"][0]) == 8 and len(result["mlps"]) == 2
    patched = run_cli("task=patch", f"checkpoint={folder}", "clean=a fluffy cat", "corrupted=a fluffy bat",
                      "answers=[a,b]", f"hydra.run.dir={tmp_path / 'p'}")
    assert patched.returncode == 0, patched.stderr[-3000:]
    out = json.loads((tmp_path / "p" / "patch.json").read_text())
    # the differing token (near the end: inside a sliding window of 4), entering layer 0: all of the difference
    assert out["resid_pre"][0][9] == pytest.approx(1.0, abs=1e-4)
