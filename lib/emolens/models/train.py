"""The reproducible recipe that trains emolens-tiny on the emotion world (`emolens train-tiny`).

Training data: the world's *train* split (disjoint seeds from validation/test), low noise
(eps in {0, 0.5, 1, 1.5}) and consistent modalities, so that high eps and CA-MER conflicts stay a
real test-time shift. A fraction of samples has only one informative modality (the others carry no
emotion evidence, they do not contradict), so the model learns to read each modality.

Prompt mixture (what the methods need at test time):

* fine lettered query over the view's labels (SEPM's "Answer directly with the letter ..."), half of
  them with WETR's Q_pos/Q_neg spans, some with the "Please focus on emotion." prefix, a few with the
  zero-shot-CoT sentence;
* fine query restricted to the label's valence group (SEPM stage 2, PEC / NEC; neutral kept in both);
* ambiguous-branch query (all labels + ambiguity description);
* coarse positive/negative query, mostly with the FoE prefix (neutral samples are never given a coarse
  target: their coarse answer is genuinely ambiguous, which is what SEPM's confidence should detect);
* emotion-irrelevant questions (background colour, number of objects): what Q_neg is about.

The loss is the cross-entropy of the answer letter at the last prompt position. Nothing here looks at
test data; hyperparameters were set once for CPU speed, not tuned for any method.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import prompts as P


def _worlds(seed: int):
    from ..world import EmoWorld

    ws = {}
    for view in ("mer", "emoset"):
        for eps in (0.0, 0.5, 1.0, 1.5):
            for inf in (("visual", "audio", "text"), ("visual",), ("audio",), ("text",)):
                if view == "emoset" and inf == ("audio",):
                    continue
                inf_e = tuple(m for m in inf if not (view == "emoset" and m == "audio")) if view == "emoset" else inf
                if view == "emoset" and inf == ("visual", "audio", "text"):
                    inf_e = ("visual", "text")
                pt = 1.0 if inf == ("text",) else 0.5
                ws[(view, eps, inf)] = EmoWorld(view, eps=eps, informative=inf_e, p_text_emotion=pt, seed=seed)
    return ws


def _vocab() -> list:
    from ..world import vocabulary
    from .pretrain import all_texts

    words = set(vocabulary()) | set(P.vocabulary()) | {"Subtitle", ":"}
    for t in all_texts():
        words.update(P.split_words(t))
    from ..world import EMOTIONS

    words |= set(EMOTIONS)
    return sorted(words)


def make_example(ws: dict, rng: np.random.Generator):
    """Draw one (sample, prompt-with-target) from the training mixture."""
    view = "mer" if rng.random() < 0.6 else "emoset"
    eps = float(rng.choice([0.0, 0.5, 1.0, 1.5]))
    r = rng.random()
    # 45% all modalities; the rest one informative modality, visual twice as often (it is the
    # hardest to learn and the one the methods act on)
    inf = ("visual", "audio", "text") if r < 0.45 else (("visual",), ("visual",), ("audio",), ("text",))[int(rng.integers(4))]
    if view == "emoset" and inf == ("audio",):
        inf = ("visual",)
    w = ws[(view, eps, inf)]
    s = w.sample("train", int(rng.integers(0, 10_000_000)))
    labels = list(w.labels)
    groups = w.valence_groups
    k = rng.random()
    if k < 0.15:
        attr = "bg_color" if rng.random() < 0.5 else "n_objects"
        from ..world.taxonomy import BG_COLORS

        values = [c if isinstance(c, str) else c[0] for c in BG_COLORS] if attr == "bg_color" else ["1", "2", "3", "4"]
        prompt = P.irrelevant_query(attr, values)
        truth = str(s.meta[attr])
        return s, prompt.with_target(truth)
    if k < 0.35 and s.label != "neutral":
        prompt = P.coarse_query(groups, foe=rng.random() < 0.7)
        return s, prompt.with_target(w_valence(s.label))
    if k < 0.50:
        grp = [lab for lab in labels if w_valence(lab) in (w_valence(s.label), "neutral")]
        prompt = P.fine_query(grp, foe=rng.random() < 0.5, contrastive=rng.random() < 0.5)
        return s, prompt.with_target(s.label)
    if k < 0.60:
        prompt = P.fine_query(labels, foe=rng.random() < 0.5, contrastive=rng.random() < 0.5,
                              ambiguity=P.ambiguity_description(groups))
        return s, prompt.with_target(s.label)
    prompt = P.fine_query(labels, foe=rng.random() < 0.3, contrastive=rng.random() < 0.5, cot=rng.random() < 0.05)
    return s, prompt.with_target(s.label)


def pretrain_vision(model, proc, seed: int, steps: int, batch_size: int = 64, lr: float = 3e-3,
                    progress: bool = True, version: int = 1) -> list:
    """Stage 0 (like the pretrained vision tower every real MLLM starts from): train the patch encoder
    with a linear probe on max-pooled visual tokens to name the face glyph's emotion (all 12 world
    emotions), on visual-only low-noise samples. The probe is discarded; the encoder is then frozen
    for stage 1 (LLaVA's recipe keeps its vision tower frozen too). Max pooling over tokens makes the
    features token-local: the glyph's own tokens must carry them."""
    from tqdm.auto import tqdm

    from ..world import EMOTIONS, EmoWorld

    ws = [EmoWorld(v, eps=e, informative=("visual",), seed=seed + 1, version=version)
          for v in ("mer", "emoset") for e in (0.0, 0.5, 1.0, 1.5)]
    rng = np.random.default_rng(seed + 1)
    hidden = model.config.text_config.hidden_size
    probe = torch.nn.Linear(hidden, len(EMOTIONS))
    params = list(model.vision.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    losses = []
    for _ in tqdm(range(steps), desc="stage 0: vision", disable=not progress):
        ss = [ws[int(rng.integers(len(ws)))].sample("train", int(rng.integers(0, 10_000_000))) for _ in range(batch_size)]
        feats = []
        for s in ss:
            px = proc.frames_tensor(s.frames)
            tok = model.vision(px, torch.arange(px.shape[0]))  # [T, g*g, hidden]
            feats.append(tok.reshape(-1, hidden).max(0).values)
        y = torch.tensor([EMOTIONS.index(s.labels_by_modality.get("visual") or s.label) for s in ss])
        loss = torch.nn.functional.cross_entropy(probe(torch.stack(feats)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    for p in model.vision.parameters():
        p.requires_grad_(False)
    return losses


def _fit(model, proc, tok, draw, ws, rng, *, steps: int, batch_size: int, lr: float, time_budget_s=None,
         hard_budget_s=None, progress: bool = True, desc: str = "train emolens-tiny"):
    """The stage-1 loop shared by :func:`train_tiny`, :func:`derive_variant` and :func:`finetune_tiny`:
    AdamW (betas 0.9/0.98, wd 0.01), linear warm-up over 5 % of the steps then a cosine decay, gradient
    clipping at 1.0; the loss is the cross-entropy of the answer token at the last prompt position.

    ``time_budget_s``: after 10 steps the step count shrinks to what the budget allows (so the cosine
    still anneals); ``hard_budget_s``: stop when the wall clock passes it.
    Returns ``(losses, steps_done, stopped_early, steps_planned, seconds)``."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01,
                            betas=(0.9, 0.98))
    plan = {"steps": steps}
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / plan["steps"]))))
    model.train()
    t0 = time.time()
    losses, letter_acc, done, stopped_early = [], [], 0, False
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        ex = [draw(ws, rng) for _ in range(batch_size)]
        batch = proc([e[0] for e in ex], [e[1] for e in ex])
        target = torch.tensor([tok.convert_tokens_to_ids(e[1].target) for e in ex])
        out_ = model(**batch.inputs, logits_to_keep=1, use_cache=False)
        loss = torch.nn.functional.cross_entropy(out_.logits[:, -1].float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        is_letter = torch.tensor([len(e[1].target) == 1 and e[1].target.isupper() for e in ex])
        if is_letter.any():  # running accuracy of the letter answers (chance ~ 1 / #options): progress only
            hits = (out_.logits[:, -1].argmax(-1) == target)[is_letter].float()
            letter_acc.append(float(hits.mean()))
        done = step + 1
        if time_budget_s is not None and step == 9:
            per = (time.time() - t0) / 10
            plan["steps"] = max(10, min(steps, int(time_budget_s / per)))
        if step + 1 >= plan["steps"]:
            break
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", letter_acc=f"{np.mean(letter_acc[-20:] or [0]):.2f}")
        if hard_budget_s is not None and time.time() - t0 > hard_budget_s:
            stopped_early = True
            break
    return losses, done, stopped_early, plan["steps"], time.time() - t0


def w_valence(label: str) -> str:
    from ..world.taxonomy import VALENCE

    return VALENCE[label]


def train_tiny(out: str, *, seed: int = 0, steps: int = 800, batch_size: int = 32, lr: float = 3e-3,
               vision_steps: int = 300, time_budget_s: Optional[float] = None, progress: bool = True,
               recipe: str = "v1", audio_tokens: int = 1, word_p: float = 1.0, lookup: bool = False) -> dict:
    """Train emolens-tiny and save it (model, tokenizer, ``train_log.json``) to ``out``.

    Args:
        out: output folder (created; an existing non-empty folder is refused to avoid overwriting).
        seed: seeds the init, the data stream and the world.
        steps: optimizer steps (cosine schedule with warm-up).
        batch_size: examples per step.
        vision_steps: stage-0 steps pretraining the vision encoder (see :func:`pretrain_vision`).
        time_budget_s: stop early (and say so in the log) when the wall clock exceeds this. With
            ``recipe="v2"`` the step count is also shrunk after 10 steps to what the budget allows at the
            measured s/step, so the cosine schedule still anneals.
        recipe: ``"v1"`` (the shipped emolens-tiny: benchmark-view mixture, 32-px frames) or ``"v2"``
            (issue 12: the generic pretraining mixture of :mod:`emolens.models.pretrain` on EmoWorld
            version 2 scenes, 64-px frames, no method prompt text).
        audio_tokens: audio placeholder tokens per clip (MoSEAR Fig. 3c variants).
        word_p, lookup: recipe v2's answer form (:func:`emolens.models.pretrain.make_pretraining_example`): the
            shipped model names every answer (``word_p=1.0``, no look-up task; calibration log entries 3-6).
    Returns:
        the training log dict.
    """
    from .tiny import TinyProcessor, build_model, build_tokenizer

    outp = _empty_out(out)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if recipe not in ("v1", "v2"):
        raise ValueError(f"recipe must be 'v1' or 'v2', got {recipe!r}")
    v2 = recipe == "v2"
    if v2:
        from .pretrain import make_pretraining_example, pretraining_worlds

        import functools

        ws = pretraining_worlds(seed)
        draw = functools.partial(make_pretraining_example, word_p=word_p, lookup=lookup)
    else:
        ws, draw = _worlds(seed), make_example
    tok = build_tokenizer(_vocab())
    model = build_model(tok, seed=seed, image_size=64 if v2 else 32, audio_tokens=audio_tokens)
    if v2:  # recipe v2 names every answer: answers are read by the option's word (survey Eq. 25)
        model.config.verbalizer = "word"
    proc = TinyProcessor(tok, model.config)
    n_params = sum(p.numel() for p in model.parameters())
    t_start = time.time()
    vision_losses = pretrain_vision(model, proc, seed, vision_steps, progress=progress,
                                    version=2 if v2 else 1) if vision_steps else []
    vision_s = time.time() - t_start
    fit = _fit(model, proc, tok, draw, ws, rng, steps=steps, batch_size=batch_size, lr=lr,
               time_budget_s=time_budget_s if v2 else None, progress=progress, hard_budget_s=time_budget_s)
    log = {"seed": seed, "recipe": recipe, "audio_tokens": audio_tokens, **({"word_p": word_p, "lookup": lookup} if v2 else {}),
           "batch_size": batch_size, "lr": lr, **_fit_log(*fit), "vision_seconds": round(vision_s, 1),
           "vision_steps": vision_steps, "vision_final_loss": float(np.mean(vision_losses[-20:])) if vision_losses else None,
           "n_params": int(n_params)}
    log["train_seconds"] = round(fit[4] + vision_s, 1)  # both stages
    return _save(model, tok, outp, log)


def _empty_out(out) -> Path:
    outp = Path(out)
    if outp.exists() and any(outp.iterdir()):
        raise FileExistsError(f"{outp} exists and is not empty; choose a new --out folder (nothing is overwritten)")
    return outp


def _save(model, tok, outp: Path, log: dict) -> dict:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    outp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(outp))
    tok.save_pretrained(str(outp))
    log = {**log, "torch": torch.__version__, "threads": torch.get_num_threads()}
    (outp / "train_log.json").write_text(json.dumps(log, indent=2))
    return log


def _load_base(base):
    from .tiny import TinyProcessor, load_tiny

    model, proc = load_tiny(Path(base), torch.device("cpu"), torch.float32)
    base_log = json.loads((Path(base) / "train_log.json").read_text()) if (Path(base) / "train_log.json").is_file() else {}
    return model, proc, base_log


def _fit_log(losses, done, stopped, planned, secs) -> dict:
    return {"steps_planned": planned, "steps_done": done, "stopped_early_by_time_budget": stopped,
            "train_seconds": round(secs, 1), "final_loss_mean_last50": float(np.mean(losses[-50:])),
            "loss_curve": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, len(losses), 50)]}


def derive_variant(base, out, *, audio_tokens: int, steps: int = 300, batch_size: int = 32, lr: float = 1e-3,
                   seed: int = 0, progress: bool = True, word_p: float = 1.0, lookup: bool = False) -> dict:
    """An emolens-tiny variant with ``audio_tokens`` audio tokens per clip (MoSEAR Fig. 3c's token-imbalance
    study, which the paper ran by retraining), derived from the checkpoint ``base`` by the same recipe.

    The variant starts from ``base``'s weights (vision tower frozen, as in stage 1). The audio MLP's last
    layer ``[h*1 -> h*N]`` is tiled from the base's single audio token, so at step 0 every audio token
    carries the base's audio embedding. It then continues stage 1 of the base's recipe (the same pretraining
    mixture, :func:`_fit`) for ``steps`` steps with a fresh data seed. Warm-starting keeps the four variants
    (1/4/16/64 tokens) comparable, because they differ only in the audio tokens, and keeps each one's
    training to minutes on a CPU. Choice documented in the model card.

    With ``audio_tokens`` equal to the base's, this *continues* the base's training (the default model's
    stage 1b: ``word_p=1.0, lookup=False``, every perception question answered by its word).
    """
    from .tiny import TinyProcessor, build_model

    if int(audio_tokens) < 1:
        raise ValueError(f"audio_tokens must be >= 1, got {audio_tokens}")
    outp = _empty_out(out)
    base_model, proc, base_log = _load_base(base)
    tok = proc.tokenizer
    torch.manual_seed(seed)
    cfg = base_model.config
    model = build_model(tok, seed=seed, image_size=cfg.image_size, audio_tokens=int(audio_tokens),
                        vision_encoder=cfg.vision_encoder)
    model.config.verbalizer = getattr(cfg, "verbalizer", "letter")
    sd = base_model.state_dict()
    h = cfg.text_config.hidden_size
    w, b = sd["audio.2.weight"], sd["audio.2.bias"]  # [h * n_base, h], [h * n_base]
    n_base = w.shape[0] // h
    if n_base != 1:
        raise ValueError(f"derive_variant expects a base with 1 audio token, {base} has {n_base}")
    sd["audio.2.weight"] = w[:h].repeat(int(audio_tokens), 1)
    sd["audio.2.bias"] = b[:h].repeat(int(audio_tokens))
    model.load_state_dict(sd)
    for p in model.vision.parameters():
        p.requires_grad_(False)
    proc = TinyProcessor(tok, model.config)
    recipe = base_log.get("recipe", "v1")
    if recipe == "v2":
        from .pretrain import make_pretraining_example, pretraining_worlds

        import functools

        ws = pretraining_worlds(seed + 1)
        draw = functools.partial(make_pretraining_example, word_p=word_p, lookup=lookup)
    else:
        ws, draw = _worlds(seed + 1), make_example
    rng = np.random.default_rng(seed + 1000 + int(audio_tokens))
    fit = _fit(model, proc, tok, draw, ws, rng, steps=steps, batch_size=batch_size, lr=lr, progress=progress,
               desc=f"variant audio{audio_tokens}")
    return _save(model, tok, outp, {"recipe": recipe, "derived_from": str(Path(base).name), "seed": seed,
                                    "audio_tokens": int(audio_tokens), "batch_size": batch_size, "lr": lr,
                                    "word_p": word_p, "lookup": lookup,
                                    "how": "warm start from the base, audio MLP's last layer tiled over the tokens, "
                                           "stage 1 of the base's recipe continued", **_fit_log(*fit),
                                    "n_params": int(sum(p.numel() for p in model.parameters()))})


def finetune_tiny(base, out, *, dataset: str = "world-mer", steps: int = 300, batch_size: int = 32, lr: float = 1e-3,
                  seed: int = 0, progress: bool = True) -> dict:
    """``emolens-tiny-ft``: ``base`` fine-tuned on ``dataset``'s *train* split with the benchmark's own query
    (the plain fine query over its labels, options shuffled on half of the examples; the target is the label's
    verbalizer: its word for a word-verbalizer model, else its letter), vision tower frozen: the supervised upper bound the training-free methods are compared against.
    Validation and test splits are never seen (the world's splits use disjoint seeds)."""
    from ..data import load_dataset

    outp = _empty_out(out)
    model, proc, base_log = _load_base(base)
    tok = proc.tokenizer
    torch.manual_seed(seed)
    for p in model.vision.parameters():
        p.requires_grad_(False)
    ds = load_dataset(dataset, "train", seed=0)

    word = getattr(model.config, "verbalizer", "letter") == "word"

    def draw(_ws, rng):
        s = ds[int(rng.integers(len(ds)))]
        pr = P.fine_query(ds.labels, contrastive=False)
        if rng.random() < 0.5:
            pr = P.shuffle_options(pr, rng)
        # the target is what the model's verbalizer reads: the label word, or its letter
        return s, (P.Prompt(list(pr.segments), dict(pr.options), pr.kind, s.label) if word else pr.with_target(s.label))

    rng = np.random.default_rng(seed + 7)
    fit = _fit(model, proc, tok, draw, None, rng, steps=steps, batch_size=batch_size, lr=lr, progress=progress,
               desc=f"fine-tune on {dataset}")
    return _save(model, tok, outp, {"recipe": base_log.get("recipe", "v1"), "derived_from": str(Path(base).name),
                                    "finetuned_on": f"{dataset}:train", "seed": seed, "batch_size": batch_size, "lr": lr,
                                    "audio_tokens": int(model.config.audio_tokens), **_fit_log(*fit),
                                    "n_params": int(sum(p.numel() for p in model.parameters()))})
