"""``prefgen rehearsal-assets``: the paper config's models and data, tiny, in their real formats.

The paper config names a Pick-a-Pic v2 copy, SDXL base 1.0, open_clip ViT-H-14 weights,
LLaVA-OneVision-7B and IDEFICS2-8B, and loads each through its library's own call
(``StableDiffusionXLPipeline.from_pretrained``, ``open_clip.create_model_and_transforms(name,
pretrained=...)``, ``LlavaOnevisionForConditionalGeneration``/``AutoModelForImageTextToText`` +
``AutoProcessor.from_pretrained``). None of them can be downloaded here, and none fits two CPU
cores. This command writes, at exactly the paths a config's pretrained references name, a
**random-weight stand-in of each in the same on-disk format** (nothing downloaded, nothing
trained), so that ``config/rehearsal.yaml`` runs every paper-only code path end to end:

- ``foundation.pretrained``: a ``StableDiffusionXLPipeline.save_pretrained`` folder (both CLIP
  text encoders and tokenizers, the UNet with SDXL's ``text_time`` added embedding, the VAE, the
  Euler scheduler), sizes from the ``foundation`` stand-in keys (``models.build_tiny_sdxl``, the
  builder the mini ``foundation`` rule trains from);
- ``vlm.model``: a LLaVA-OneVision folder (``save_pretrained`` of the model and of its
  ``LlavaOnevisionProcessor``), sizes from ``vlm.stand_in`` (``embeddings.vlm.build_stand_in``
  with ``vision_init: random``);
- ``lpp.vlm.model``: an IDEFICS2 folder (``Idefics2ForConditionalGeneration`` with a SigLIP-style
  vision tower, the perceiver connector and a Mistral language model; ``Idefics2Processor``
  with an offline byte-level BPE tokenizer), sizes from ``vlm.stand_in``;
- ``clip.pretrained_model`` / ``clip.pretrained_tag``: an open_clip architecture JSON (from
  ``clip.model_cfg``) and a safetensors checkpoint of random weights for it;
- ``data.path``: Pick-a-Pic v2 shards (the 18 hub columns, real JPEG bytes) written by the
  synthetic world generator from the config's ``world`` keys (the writer of
  ``tests/data/pickapic_sample``);
- the external judges' files: the aesthetic head, a PickScore CLIP folder, and for ImageReward
  ``ImageReward.pt`` (the state dict of the package's own model class, written by the judges
  environment's interpreter: ``PREFGEN_JUDGES_PYTHON``) with its ``med_config.json``, plus a
  ``bert-base-uncased`` WordPiece tokenizer in the hub-cache layout at
  ``judge.external.hub_cache``, where BLIP's ``BertTokenizer.from_pretrained`` finds it offline.

Every folder carries ``REHEARSAL.md`` saying it is a random-weight stand-in. A path that already
exists is left as it is (delete it to rebuild); every write is atomic.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch

from prefgen.core.config import ConfigError, load_config
from prefgen.core.io import atomic_dir
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed

log = get_logger(__name__)

NOTE = (
    "# Rehearsal stand-in\n\n"
    "Random weights in the real on-disk format of {what}, written offline by "
    "`prefgen rehearsal-assets` so that the paper config's loading code runs on two CPU "
    "cores. Not a trained model: nothing computed with it means anything.\n"
)

#: IDEFICS2's special tokens (the processor adds <fake_token_around_image>, <image> and
#: <end_of_utterance> itself when the tokenizer lacks them).
IDEFICS2_SPECIALS = ["<unk>", "<s>", "</s>"]
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].capitalize() }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config/rehearsal.yaml")
    parser.add_argument(
        "--root", default=".", help="the workflow's working directory (relative paths)"
    )


def _target(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def _note(folder: Path, what: str) -> None:
    (folder / "REHEARSAL.md").write_text(NOTE.format(what=what))


# --- SDXL --------------------------------------------------------------------------------------
def write_sdxl(config: dict[str, Any], out: Path) -> None:
    """``StableDiffusionXLPipeline.save_pretrained`` of a random tiny SDXL (foundation keys)."""
    from prefgen.generation.models import build_tiny_sdxl

    cfg = config["foundation"]
    pipe = build_tiny_sdxl(
        cfg, int(cfg["resolution"]), derive_seed(int(config["seed"]), "rehearsal", "sdxl")
    )
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        _note(tmp, "stabilityai/stable-diffusion-xl-base-1.0 (diffusers pipeline folder)")


# --- LLaVA-OneVision ---------------------------------------------------------------------------
def write_llava_onevision(config: dict[str, Any], out: Path) -> None:
    """The tiny LLaVA-OneVision of ``vlm.stand_in`` saved as a checkpoint folder."""
    from prefgen.embeddings.vlm import build_stand_in

    stand_in = dict(config["vlm"]["stand_in"])
    if stand_in["vision_init"] != "random":
        raise ConfigError(
            "vlm.stand_in.vision_init must be 'random' for rehearsal-assets "
            f"(got {stand_in['vision_init']!r}): the checkpoint is written before any CLIP exists"
        )
    vlm = build_stand_in(stand_in, derive_seed(int(config["seed"]), "rehearsal", "llava"))
    with atomic_dir(out) as tmp:
        vlm.model.save_pretrained(tmp, safe_serialization=True)
        vlm.processor.save_pretrained(tmp)
        _note(tmp, "llava-hf/llava-onevision-qwen2-7b-ov-hf (transformers checkpoint folder)")


# --- IDEFICS2 ----------------------------------------------------------------------------------
def idefics2_tokenizer(vocab_size: int) -> Any:
    """Byte-level BPE built offline (``tokenizers``) with IDEFICS2's specials, as a fast
    tokenizer; the processor adds the image tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from prefgen.embeddings.vlm import TOKENIZER_CORPUS

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=IDEFICS2_SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = TOKENIZER_CORPUS + " The prompt is . Score for this image? + -"
    bpe.train_from_iterator([corpus], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        padding_side="left",
    )


def write_idefics2(config: dict[str, Any], out: Path) -> None:
    """A random tiny ``Idefics2ForConditionalGeneration`` + ``Idefics2Processor`` folder."""
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2ImageProcessor,
        Idefics2Processor,
    )

    stand_in = config["vlm"]["stand_in"]
    vision, text = stand_in["vision"], stand_in["text"]
    tokenizer = idefics2_tokenizer(int(stand_in["vocab_size"]))
    side = int(vision["image_size"])
    n_latents = 4
    image_processor = Idefics2ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": side, "shortest_edge": side},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=n_latents,
        chat_template=IDEFICS2_CHAT_TEMPLATE,
    )
    tok = processor.tokenizer
    config_obj = Idefics2Config(
        vision_config={
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_hidden_layers": vision["num_hidden_layers"],
            "num_attention_heads": vision["num_attention_heads"],
            "patch_size": vision["patch_size"],
            "image_size": side,
            "initializer_range": stand_in["initializer_range"],
        },
        perceiver_config={
            "resampler_n_latents": n_latents,
            "resampler_depth": 1,
            "resampler_n_heads": 2,
            "resampler_head_dim": 8,
            "num_key_value_heads": 1,
        },
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tok),
            "hidden_size": text["hidden_size"],
            "intermediate_size": text["intermediate_size"],
            "num_hidden_layers": text["num_hidden_layers"],
            "num_attention_heads": text["num_attention_heads"],
            "num_key_value_heads": text["num_key_value_heads"],
            "max_position_embeddings": 4096,
            "initializer_range": stand_in["initializer_range"],
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "tie_word_embeddings": False,
        },
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(int(config["seed"]), "rehearsal", "idefics2"))
        model = Idefics2ForConditionalGeneration(config_obj)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        _note(tmp, "HuggingFaceM4/idefics2-8b (transformers checkpoint folder)")


# --- open_clip ---------------------------------------------------------------------------------
def write_open_clip(config: dict[str, Any], arch: Path, weights: Path) -> None:
    """An open_clip architecture file (``clip.model_cfg``) and random weights as safetensors,
    loadable by ``create_model_and_transforms(<name>, pretrained=<weights>)`` once the
    architecture is registered (``open_clip.add_model_config``)."""
    import open_clip

    from prefgen.core.io import atomic_path, save_tensors

    cfg = config["clip"]
    if "model_cfg" not in cfg:
        raise ConfigError("clip.model_cfg: rehearsal-assets sizes the open_clip model from it")
    if arch.suffix != ".json":
        raise ConfigError(f"clip.pretrained_model={str(arch)!r}: must name a .json file here")
    arch.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(arch) as tmp:
        tmp.write_text(json.dumps(cfg["model_cfg"], indent=2, sort_keys=True) + "\n")
    open_clip.add_model_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(int(config["seed"]), "rehearsal", "clip"))
        model = open_clip.create_model(arch.stem, pretrained=None)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(dict(model.state_dict()), weights)


# --- external judges --------------------------------------------------------------------------
def write_aesthetic_mlp(config: dict[str, Any], out: Path) -> None:
    """The LAION aesthetic head (``external_judges.AestheticMLP``, its published layer layout)
    with random weights, sized for the embedding of ``clip.model_cfg`` (the CLIP it reads)."""
    from prefgen.core.io import save_tensors
    from prefgen.evaluation.external_judges import AestheticMLP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(int(config["seed"]), "rehearsal", "aesthetic"))
        mlp = AestheticMLP(int(config["clip"]["model_cfg"]["embed_dim"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(dict(mlp.state_dict()), out)


def write_pickscore(config: dict[str, Any], out: Path) -> None:
    """A random tiny transformers ``CLIPModel`` + ``CLIPProcessor`` folder (PickScore's format:
    ``CLIPModel``/``AutoProcessor.from_pretrained``), with CLIP's real BPE vocabulary.

    The processor is saved as the hub's CLIP repos hold it, ``preprocessor_config.json`` beside
    the tokenizer files, which transformers 4 (the judges environment) and 5 both read.
    transformers 5's ``CLIPProcessor.save_pretrained`` instead nests the image processor in a
    ``processor_config.json``, and transformers 4.49 then passes it to ``CLIPProcessor`` twice."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from prefgen.generation.models import clip_tokenizer

    cfg = config["clip"]["model_cfg"]
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    side = int(vision["image_size"])
    clip_cfg = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": text["width"],
            "intermediate_size": 4 * text["width"],
            "num_hidden_layers": text["layers"],
            "num_attention_heads": text["heads"],
            "max_position_embeddings": 77,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "hidden_size": vision["width"],
            "intermediate_size": 4 * vision["width"],
            "num_hidden_layers": vision["layers"],
            "num_attention_heads": max(1, vision["width"] // vision.get("head_width", 64)),
            "image_size": side,
            "patch_size": vision["patch_size"],
        },
        projection_dim=int(cfg["embed_dim"]),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(int(config["seed"]), "rehearsal", "pickscore"))
        model = CLIPModel(clip_cfg)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        ),
        tokenizer=clip_tokenizer(77),
    )
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.image_processor.save_pretrained(tmp)
        processor.tokenizer.save_pretrained(tmp)
        _note(tmp, "yuvalkirstain/PickScore_v1 and its processor (transformers CLIP folder)")


# --- ImageReward --------------------------------------------------------------------------------
#: The hub repo BLIP's ``init_tokenizer`` loads (``BertTokenizer.from_pretrained``); no revision is
#: pinned there, so the cache's ``refs/main`` names the snapshot.
BERT_REPO = "bert-base-uncased"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
#: BLIP's ``med_config.json`` (BERT-base with cross-attention, as THUDM/ImageReward ships it) with
#: one layer instead of 12; ``vocab_size`` is the tiny vocabulary's + BLIP's ``[DEC]`` and
#: ``[ENC]``. The width stays 768: ImageReward's reward head is ``MLP(768)``, and the BLIP image
#: encoder is ViT-L/16 at 224 px whatever the config (``BLIP_Pretrain(vit='large')``), so neither
#: can be shrunk.
IMAGEREWARD_MED_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 1,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "encoder_width": 768,
    "add_cross_attention": True,
}


def bert_vocab() -> list[str]:
    """An uncased WordPiece vocabulary, deterministic: BERT's specials (``[PAD]`` id 0, as in
    BERT's), every character a-z, 0-9 and of the stand-in corpus, alone and as a ``##``
    continuation (so every such word tokenizes), then the corpus's words whole, split as BERT's
    pre-tokenizer splits them. (``tokenizers``' WordPiece trainer orders tied pieces differently
    from run to run.)"""
    import string

    from tokenizers.pre_tokenizers import BertPreTokenizer

    from prefgen.embeddings.vlm import TOKENIZER_CORPUS

    words = {w for w, _ in BertPreTokenizer().pre_tokenize_str(TOKENIZER_CORPUS.lower())}
    chars = sorted(set(string.ascii_lowercase + string.digits).union(*words))
    whole = sorted(w for w in words if len(w) > 1)
    return BERT_SPECIALS + chars + [f"##{c}" for c in chars] + whole


def hub_snapshot(cache: Path, repo: str) -> Path:
    """The snapshot folder ``refs/main`` names in a hub cache (huggingface_hub's layout)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    ref = folder / "refs" / "main"
    if not ref.is_file():
        raise FileNotFoundError(f"{ref}: no cached revision of {repo} in {cache}")
    return folder / "snapshots" / ref.read_text().strip()


def write_bert_tokenizer_cache(cache: Path) -> None:
    """``bert-base-uncased``'s tokenizer files (``vocab.txt``, ``tokenizer_config.json``) in the
    hub-cache layout (``models--bert-base-uncased/refs/main`` -> ``snapshots/<revision>/``), which
    ``BertTokenizer.from_pretrained('bert-base-uncased')`` reads with ``HF_HUB_OFFLINE=1`` and
    ``HF_HUB_CACHE`` there. The revision is the SHA-1 of the files (a stand-in commit id); the
    files are plain copies, not links into ``blobs/`` (the reader only follows the snapshot)."""
    files = {
        "vocab.txt": "\n".join(bert_vocab()) + "\n",
        "tokenizer_config.json": json.dumps({"do_lower_case": True, "model_max_length": 512})
        + "\n",
    }
    revision = hashlib.sha1("".join(files[k] for k in sorted(files)).encode()).hexdigest()
    out = cache / f"models--{BERT_REPO}"
    with atomic_dir(out) as tmp:
        (tmp / "refs").mkdir()
        (tmp / "refs" / "main").write_text(revision)
        snapshot = tmp / "snapshots" / revision
        snapshot.mkdir(parents=True)
        for name, text in files.items():
            (snapshot / name).write_text(text)
        _note(tmp, f"the {BERT_REPO} tokenizer (hub cache entry; a tiny WordPiece vocabulary)")


def judges_python() -> str:
    """The judges environment's interpreter: ``PREFGEN_JUDGES_PYTHON``, else this one if it has
    the ImageReward package."""
    given = os.environ.get("PREFGEN_JUDGES_PYTHON")
    if given:
        return given
    if importlib.util.find_spec("ImageReward") is not None:
        return sys.executable
    raise ConfigError(
        "judge.external.judges lists imagereward: rehearsal-assets writes its checkpoint with the "
        "ImageReward package, which lives in the judges environment. Run `make judges-env` and "
        "set PREFGEN_JUDGES_PYTHON=.venv-judges/bin/python (`make rehearsal` does both)"
    )


def write_imagereward(
    config: dict[str, Any], out: Path, cache: Path, names: dict[str, str]
) -> None:
    """``med_config.json`` (``IMAGEREWARD_MED_CONFIG``) and ``ImageReward.pt`` in one folder. The
    checkpoint is the state dict of ``ImageReward.ImageReward`` itself, random weights under a
    derived seed, written by the judges environment's interpreter (the package cannot be
    installed beside the core one): ``external_judges.write_imagereward_checkpoint``."""
    import prefgen

    vocab = (hub_snapshot(cache, BERT_REPO) / "vocab.txt").read_text().splitlines()
    med = IMAGEREWARD_MED_CONFIG | {"vocab_size": len(vocab) + 2}  # + [DEC], [ENC]
    workflow = str(Path(prefgen.__file__).resolve().parents[1])
    env = dict(os.environ)
    env.update(
        HF_HUB_CACHE=str(cache.resolve()),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in (workflow, env.get("PYTHONPATH")) if p),
    )
    seed = derive_seed(int(config["seed"]), "rehearsal", "imagereward")
    with atomic_dir(out) as tmp:
        med_path = tmp / names["med_config"]
        med_path.write_text(json.dumps(med, indent=2, sort_keys=True) + "\n")
        cmd = [judges_python(), "-m", "prefgen.evaluation.external_judges"]
        cmd += ["imagereward-checkpoint", str(med_path), str(tmp / names["model"]), str(seed)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        _note(tmp, "THUDM/ImageReward (ImageReward.pt state dict and its med_config.json)")


# --- Pick-a-Pic shards -------------------------------------------------------------------------
def write_pickapic(config: dict[str, Any], out: Path) -> None:
    """Pick-a-Pic v2 shards from the config's ``world`` keys (the synthetic world's writer)."""
    from prefgen.data.world import build_world, write_shards

    if "world" not in config:
        raise ConfigError("world: rehearsal-assets writes data.path's shards from these keys")
    table, _, _ = build_world({"seed": config["seed"], "world": config["world"]})
    write_shards(table, out, int(config["world"]["rows_per_shard"]))
    (out / "REHEARSAL.md").write_text(
        NOTE.format(what="Pick-a-Pic v2 shards (synthetic world content)")
    )


def shard_dir(path: str) -> Path:
    """The folder a ``data.path`` names (a folder, or the folder of a glob)."""
    p = Path(path)
    return p if not any(c in p.name for c in "*?[") and p.suffix != ".parquet" else p.parent


def assets(config: dict[str, Any], root: Path) -> dict[str, tuple[Path, Any]]:
    """What to write: name -> (path, writer) for every local pretrained reference."""
    out: dict[str, tuple[Path, Any]] = {}
    if config["data"]["source"] == "pickapic":
        folder = _target(root, str(shard_dir(config["data"]["path"])))
        out["pickapic"] = (folder, partial(write_pickapic, config, folder))
    if config["foundation"].get("pretrained"):
        path = _target(root, config["foundation"]["pretrained"])
        out["sdxl"] = (path, partial(write_sdxl, config, path))
    if config["vlm"]["model"] != "stand-in":
        path = _target(root, config["vlm"]["model"])
        out["llava_onevision"] = (path, partial(write_llava_onevision, config, path))
    lpp = config.get("lpp")
    if lpp and lpp["vlm"]["model"] != "stand-in":
        path = _target(root, lpp["vlm"]["model"])
        out["idefics2"] = (path, partial(write_idefics2, config, path))
    if config["clip"]["source"] == "pretrained":
        arch = _target(root, config["clip"]["pretrained_model"])
        weights = _target(root, config["clip"]["pretrained_tag"])
        out["open_clip"] = (weights, partial(write_open_clip, config, arch, weights))
    external = config["judge"]["external"]
    models = external.get("models", {})
    if "imagereward" in external["judges"]:
        options = models["imagereward"]
        if not options.get("med_config") or not external.get("hub_cache"):
            raise ConfigError(
                "judge.external: imagereward needs models.imagereward.med_config and hub_cache "
                "for rehearsal-assets (else the package fetches its med_config.json and BLIP's "
                "bert-base-uncased tokenizer from the hub)"
            )
        model, med = _target(root, options["model"]), _target(root, options["med_config"])
        if model.parent != med.parent:
            raise ConfigError(
                "judge.external.models.imagereward: rehearsal-assets writes model and "
                "med_config into one folder; give both keys the same folder"
            )
        cache = _target(root, external["hub_cache"])
        out[BERT_REPO] = (
            cache / f"models--{BERT_REPO}",
            partial(write_bert_tokenizer_cache, cache),
        )
        names = {"model": model.name, "med_config": med.name}
        out["imagereward"] = (
            model.parent,
            partial(write_imagereward, config, model.parent, cache, names),
        )
    if "aesthetic" in external["judges"]:
        options = models["aesthetic"]
        if options.get("mlp_repo"):
            raise ConfigError(
                "judge.external.models.aesthetic.mlp_repo is a hub repo: set it to null and "
                "mlp_weights to a local path for rehearsal-assets"
            )
        path = _target(root, options["mlp_weights"])
        out["aesthetic"] = (path, partial(write_aesthetic_mlp, config, path))
    if "pickscore" in external["judges"]:
        options = models["pickscore"]
        path = _target(root, options["model"])
        if _target(root, options["processor"]) != path:
            raise ConfigError(
                "judge.external.models.pickscore: rehearsal-assets writes model and processor "
                "into one folder; give both keys the same path"
            )
        out["pickscore"] = (path, partial(write_pickscore, config, path))
    return out


def run(args: argparse.Namespace) -> None:
    root = Path(args.root)
    config = load_config(args.config)
    if config["scale"] != "rehearsal":
        raise ConfigError(
            f"{args.config}: scale={config['scale']!r}; rehearsal-assets writes random-weight "
            "stand-ins only for a config with scale: rehearsal"
        )
    for name, (path, write) in assets(config, root).items():
        if path.exists():
            log.info("%s: %s exists, kept", name, path)
            continue
        write()
        log.info("%s: wrote %s", name, path)
