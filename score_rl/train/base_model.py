"""A base policy without downloads: a locally trained tokenizer, a tiny Qwen2/Llama model, a supervised warm-up.

The result is an ordinary Hugging Face model directory, cached under ``model.cache_dir`` by a hash of everything
that defines it, so later runs reuse it. Any other HF directory given as ``model.path`` is used the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import List, Tuple

import torch

from score_rl.config import Config
from score_rl.errors import ConfigError

EOS, PAD = "<|endoftext|>", "<|pad|>"


def resolve_model_path(cfg: Config, log=print) -> str:
    """The model directory to train from: model.path if given (must exist), else the cached tiny base model."""
    if cfg.model.path is not None:
        path = Path(os.path.expanduser(cfg.model.path))
        check_model_dir(path, f"model.path '{cfg.model.path}'")
        return str(path)
    key = _cache_key(cfg)
    path = Path(os.path.expanduser(cfg.model.cache_dir)) / f"tiny-{cfg.env.name}-{key}"
    if (path / "config.json").is_file():
        log(f"using cached base model {path}")
        return str(path)
    from score_rl.envs import make_env

    env = make_env(cfg.env, cfg.prompt)  # bad env input (a data file, a parameter) is one line before any build log
    if not hasattr(env, "demonstrations"):
        raise ConfigError(f"env '{cfg.env.name}' has no demonstrations for a tiny base model; set model.path")
    log(f"building the tiny base model (tokenizer, model, supervised warm-up) into {path}")
    build_tiny_base(cfg, path, log=log, env=env)
    return str(path)


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_model_dir(path, what: str) -> None:
    """A ConfigError (one line starting with ``what``) unless ``path`` holds a causal-LM config, weights and a
    tokenizer, checked cheaply (config and tokenizer files, weight file names; no weights are read) before any
    worker or learner loads it."""
    path = Path(path)
    if not path.is_dir():
        why = "not a directory" if path.exists() else "not found"
        raise ConfigError(f"{what} is not a Hugging Face model directory ({why})")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{what} is not a Hugging Face model directory (no config.json)")
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as err:  # ValueError (no / unknown model_type), OSError (not JSON), ...
        raise ConfigError(f"{what}: {path / 'config.json'} is not a model's config ({_first_sentence(err)})") from None
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - a transformers without the mapping: the load will say
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES = None
    if MODEL_FOR_CAUSAL_LM_MAPPING_NAMES is not None and config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"{what}: model_type '{config.model_type}' in {path / 'config.json'} is not a causal "
                          f"language model")
    for index in WEIGHT_INDEXES:
        if (path / index).is_file():
            try:
                shards = set(json.loads((path / index).read_text())["weight_map"].values())
            except Exception as err:
                raise ConfigError(f"{what}: {path / index} is not a weight index ({_first_sentence(err)})") from None
            missing = sorted(name for name in shards if not (path / name).is_file())
            if missing:
                raise ConfigError(f"{what}: weight file(s) {missing[:3]} named in {index} are missing")
            break
    else:
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            raise ConfigError(f"{what} has no weights ({' or '.join(WEIGHT_FILES + WEIGHT_INDEXES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:
        raise ConfigError(f"{what} has no usable tokenizer ({_first_sentence(err)})") from None
    # transformers builds an empty one when the vocabulary files are missing
    if not tokenizer("1 + 1 = 2")["input_ids"]:
        raise ConfigError(f"{what} has no usable tokenizer (it encodes text to no tokens: tokenizer.json or the "
                          f"vocabulary files are missing)")


# Bump when the build's inputs change in code rather than config (2: the arithmetic env holds out unordered pairs,
# so the demonstrations come from a different train split).
BUILD_VERSION = 2


def _cache_key(cfg: Config) -> str:
    blob = json.dumps(
        {"tiny": asdict(cfg.model.tiny), "env": [cfg.env.name, dict(cfg.env.params), cfg.env.seed],
         "prompt": asdict(cfg.prompt), "version": BUILD_VERSION},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train_tokenizer(texts: List[str], vocab_size: int):
    """Byte-level BPE with single-digit tokens (numbers stay digit by digit), trained on the given texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def build_tiny_base(cfg: Config, out_dir: Path, log=print, env=None) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from score_rl.envs import make_env
    from score_rl.prompting import PromptBuilder

    tiny = cfg.model.tiny
    env = env if env is not None else make_env(cfg.env, cfg.prompt)
    if not hasattr(env, "demonstrations"):
        raise ConfigError(f"env '{cfg.env.name}' has no demonstrations for a tiny base model; set model.path")
    demos = env.demonstrations(tiny.warmup_examples, seed=tiny.seed)
    corpus = []
    for problem, attempts in demos[:5000]:
        corpus += [env.first_attempt_prompt(problem), env.correction_instruction(), *attempts]
    tokenizer = train_tokenizer(corpus, tiny.vocab_size)

    torch.manual_seed(tiny.seed)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=tiny.hidden_size, num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads, num_key_value_heads=tiny.num_heads,
        intermediate_size=tiny.intermediate_size, max_position_embeddings=1024, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    if tiny.architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))

    builder = PromptBuilder(tokenizer, env, max_prompt_tokens=cfg.rollout.max_prompt_tokens)
    examples = [_demo_example(builder, tokenizer, problem, attempts) for problem, attempts in demos]
    _supervised_warmup(model, examples, tokenizer.pad_token_id, tiny, log)
    imitation = imitation_rate(model, tokenizer, builder, demos[:256])
    log(f"warm-up done: greedy first attempts match the demonstrations on {100 * imitation:.0f}% of 256 problems")
    if imitation < 0.8:
        log(f"warning: the warm-up did not converge (imitation {100 * imitation:.0f}% < 80%): the base model is "
            f"weaker than intended; try more epochs (model.tiny.warmup_epochs={tiny.warmup_epochs * 2}) or another "
            "model.tiny.seed")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".building-"))
    try:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "score_rl_base.json").write_text(json.dumps(
            {"env": cfg.env.name, "tiny": asdict(tiny), "first_attempt_imitation": imitation}, indent=2))
        os.replace(tmp, out_dir) if not out_dir.exists() else shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@torch.no_grad()
def imitation_rate(model, tokenizer, builder, demos) -> float:
    """Share of demonstrations whose greedy first attempt the model reproduces exactly (a convergence check)."""
    from score_rl.rollout.engines.hf import HFGenerator

    model.eval()
    prompts = [builder.first_attempt(problem) for problem, _ in demos]
    gens = HFGenerator(model, tokenizer, max_new_tokens=16).generate(prompts, temperature=0.0)
    hits = [tokenizer.decode(g.response_ids, skip_special_tokens=True).strip() == attempts[0].strip()
            for g, (_, attempts) in zip(gens, demos)]
    return sum(hits) / max(len(hits), 1)


def _demo_example(builder, tokenizer, problem, attempts) -> Tuple[List[int], List[int]]:
    """Token ids of a demonstration episode and labels that train only the attempts (each ending in EOS)."""
    eos = [tokenizer.eos_token_id]
    first = builder.first_attempt(problem)
    attempt1 = builder._encode(attempts[0]) + eos
    second = builder.correction(first, attempt1, problem.id)
    attempt2 = builder._encode(attempts[1]) + eos
    ids = second + attempt2
    labels = [-100] * len(first) + attempt1 + [-100] * (len(second) - len(first) - len(attempt1)) + attempt2
    return ids, labels


def _supervised_warmup(model, examples, pad_id: int, tiny, log) -> None:
    rng = random.Random(tiny.seed)
    steps_per_epoch = math.ceil(len(examples) / tiny.warmup_batch_size)
    total = steps_per_epoch * tiny.warmup_epochs
    opt = torch.optim.AdamW(model.parameters(), lr=tiny.warmup_lr, weight_decay=tiny.warmup_weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    model.train()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="warm-up", disable=None)  # None: off where stderr is not a terminal
    done = 0
    from score_rl.train.run_log import ProgressLines

    lines = ProgressLines(total, 0, 30.0, log, label="warm-up step") if bar.disable else None
    for _ in range(tiny.warmup_epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), tiny.warmup_batch_size):
            batch = [examples[i] for i in order[start:start + tiny.warmup_batch_size]]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([x + [pad_id] * (width - len(x)) for x, _ in batch])
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            done += 1
            if lines is not None:
                lines.update(done, f"loss {loss.item():.3f}")
    bar.close()
    model.eval()
