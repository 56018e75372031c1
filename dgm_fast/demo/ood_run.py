"""``dgm-fast ood``: Likelihood Regret OOD detection (§4.2) end to end, on one process or under ``torchrun``.

Train (or load) the DCGAN VAE of Table 4.6 (nc = 1) on scikit-learn's digits,
then score the held-out test digits and each OOD set (``dgm_fast.demo.ood_data``)
by LR_Z and LR_E (4.4) and the baselines likelihood, IC(png) and LMD
(``dgm_fast.models.ood``); write per-image scores, AUROC / AUPRC / FPR80 per
method and OOD set (Tables 4.1, 4.7, 4.8), score histograms (Figures 4.1 / 4.3)
and ROC curves (Figure 4.4).

Past one machine: under ``torchrun`` (WORLD_SIZE and RANK set) every rank
joins a process group (gloo on CPU, nccl on CUDA, one GPU per local rank).
Without ``--load``, rank 0 trains and broadcasts the weights while the others
wait in the broadcast, which times out after the process group's default (30
minutes for gloo, 10 for nccl): train longer runs once with ``--save`` and
score with ``--load``. Every rank scores a contiguous run of whole score
batches of each set, with the images' global indices (so the same noise and the
same batches as one process), and rank 0 gathers the rows and writes the same
files as a single process.
"""

from __future__ import annotations

import csv
import importlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from dgm_fast.demo import ood_data
from dgm_fast.demo.plots import _figure, _save
from dgm_fast.models.dcgan_vae import DCGANVAE
from dgm_fast.models.ood import (
    LatentMahalanobis,
    encode,
    input_complexity,
    iwae_nll,
    likelihood_regret,
    ood_metrics,
    roc,
    train_vae,
)

IN_SET = "digits"  # the in-distribution test images' set name
BASELINES = ("likelihood", "IC(png)", "LMD")
VALIDATION_FRACTION = 0.1  # of the digits' train split, held out of training: LMD's validation images
METRICS = (("AUROC", "higher is better"), ("AUPRC", "higher is better"), ("FPR80", "lower is better"))
FILES = ("ood_scores.csv", "ood_metrics.csv", "ood_metrics.md", "ood_histograms.png", "ood_roc.png")


@dataclass(frozen=True)
class OODConfig:
    nf: int  # DCGAN VAE width (Table 4.6: 32 for 1-channel images)
    nz: int  # latent size (Table 4.6: 100)
    epochs: int
    batch_size: int  # of training (appendix 4.2.6: 64)
    lr: float  # of training (appendix 4.2.6: 5e-4)
    n_train: int | None  # training images (None: all 1294 of the train split not held out)
    n_in: int  # in-distribution test images scored (the test split has 359)
    n_ood: int  # images of each OOD set scored (appendix 4.2.6: 5000)
    n_samples: int  # K of the likelihood (2.2) (§4.2.3: 1000)
    z_steps: int  # LR_Z (appendix 4.2.6: 300 steps of Adam at 1e-4)
    z_lr: float
    e_steps: int  # LR_E (official code: 100 steps of Adam at 2e-4, weight decay 5e-5)
    e_lr: float
    duration: str
    e_weight_decay: float = 5e-5
    beta: float = 1.0  # of the beta-VAE's KL term (Table 4.3)
    chunk: int = 64  # likelihood samples per image decoded at once
    score_batch: int = 16  # images scored (optimised) at once


# The default spends the CPU where it pays: LR separates the sets only once the VAE fits the digits
# (after 2 epochs its OOD regrets drowned in the noise of two K = 32 likelihoods; after 4-5 they are
# 10x the in-distribution ones), so 4 epochs at batch 16 (lr 3e-3: 4x the steps per image of batch
# 64), then LR_Z and LR_E with fewer steps at a proportionally larger learning rate (Adam moves a
# parameter about lr per step), K = 32, a smaller network and 16 images per set.
MODES = {
    "quick": OODConfig(nf=4, nz=8, epochs=1, batch_size=16, lr=3e-3, n_train=256, n_in=8, n_ood=8, n_samples=8,
                       z_steps=5, z_lr=1e-2, e_steps=5, e_lr=2e-3, duration="about half a minute"),
    "default": OODConfig(nf=8, nz=16, epochs=4, batch_size=16, lr=3e-3, n_train=None, n_in=16, n_ood=16,
                         n_samples=32, z_steps=20, z_lr=1e-2, e_steps=10, e_lr=2e-3, duration="5 to 10 minutes"),
    "full": OODConfig(nf=32, nz=100, epochs=100, batch_size=64, lr=5e-4, n_train=None, n_in=359, n_ood=359,
                      n_samples=1000, z_steps=300, z_lr=1e-4, e_steps=100, e_lr=2e-4, chunk=200, score_batch=64,
                      duration="days on 2 CPU cores, hours on a GPU"),
}


def in_distribution(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(train, validation, test)`` digits: the train split less its last ``VALIDATION_FRACTION`` (held
    out for LMD's scales), and the test split."""
    train = ood_data.digits("train", seed)
    n_val = round(VALIDATION_FRACTION * len(train))
    return train[:-n_val], train[-n_val:], ood_data.digits("test", seed)


def score_sets(config: OODConfig, ood_sets: Sequence[str], extra: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """The scored sets in order: the first ``n_in`` test digits, the named OOD sets (``n_ood`` each) and
    ``extra`` (a user's sets, first ``n_ood`` images)."""
    sets = {IN_SET: in_distribution(seed)[2][:config.n_in]}
    sets |= {name: ood_data.OOD_SETS[name](config.n_ood, 1, seed) for name in ood_sets}
    return sets | {name: x[:config.n_ood] for name, x in extra.items()}


def new_model(config: OODConfig) -> DCGANVAE:
    return DCGANVAE(nc=1, nf=config.nf, nz=config.nz)


def load_model(path: Path, config: OODConfig) -> DCGANVAE:
    """The VAE of ``config`` with the state_dict saved at ``path``, or a one-line ValueError."""
    model = new_model(config)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a state_dict of DCGANVAE(nc=1, nf={config.nf}, nz={config.nz}) ({reason})") \
            from None
    return model


def _distributed(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """``(rank, world_size, device, started)``: joins the torchrun process group when WORLD_SIZE/RANK are set."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return 0, 1, device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        # Imported after the group exists (torch.optim does so), torch._dynamo keeps references to it that
        # destroy_process_group does not drop: the gloo group then lives on, threads and sockets, into
        # interpreter exit, where its teardown aborted a rank now and then ("terminate called without an
        # active exception", torch 2.13). Imported first, it holds none, and run_ood's destroy ends the group.
        importlib.import_module("torch._dynamo")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, started


def _trained(model: DCGANVAE | None, train: Tensor, config: OODConfig, seed: int, rank: int, world: int,
             save: Path | None, progress: bool) -> tuple[DCGANVAE, list[float]]:
    """``model`` as given (loaded), or trained on rank 0 (on ``train``'s device) and broadcast to the others."""
    losses: list[float] = []
    if model is None:
        torch.manual_seed(seed)  # the initial weights
        model = new_model(config).to(train.device)
        if rank == 0:
            losses = train_vae(model, train, config.epochs, config.batch_size, config.lr, beta=config.beta, seed=seed,
                               progress=progress)
        if world > 1:
            state = [{k: v.cpu() for k, v in model.state_dict().items()} if rank == 0 else None]
            dist.broadcast_object_list(state, src=0)
            model.load_state_dict(state[0])
    if save is not None and rank == 0:
        torch.save(model.state_dict(), save)
    return model.eval(), losses


def _shard(n: int, batch: int, rank: int, world: int) -> range:
    """The contiguous run of whole batches of a set of ``n`` images that ``rank`` scores, as image positions."""
    n_batches = math.ceil(n / batch)
    first, last = (r * n_batches // world * batch for r in (rank, rank + 1))
    return range(min(first, n), min(last, n))


def score_batch(model: DCGANVAE, lmd: LatentMahalanobis, x: Tensor, index: Tensor, config: OODConfig,
                methods: Sequence[str], seed: int) -> dict[str, Tensor]:
    """Likelihood Regret by each of ``methods`` and the ``BASELINES`` of images ``x`` (global indices
    ``index``), every score higher = more OOD."""
    mu, logvar = encode(model, x)
    nll = iwae_nll(model, x, mu, logvar, config.n_samples, chunk=config.chunk, seed=seed, index=index)
    scores = {}
    for method in methods:
        steps, lr, wd = ((config.z_steps, config.z_lr, 0.0) if method == "LR_Z" else
                         (config.e_steps, config.e_lr, config.e_weight_decay))
        scores[method] = likelihood_regret(model, x, method=method, n_samples=config.n_samples, steps=steps, lr=lr,
                                           weight_decay=wd, beta=config.beta, chunk=config.chunk, seed=seed,
                                           index=index, nll_before=nll)["regret"]
    scores |= {"likelihood": nll, "IC(png)": input_complexity(nll, x), "LMD": lmd.score(x)}
    return {k: v.detach().double().cpu() for k, v in scores.items()}


def _score(model, lmd, sets: dict[str, Tensor], config: OODConfig, methods, seed: int, rank: int, world: int,
           device: torch.device, progress: bool) -> list[tuple[int, str, str, float]]:
    """Rows ``(image id, set, method, score)`` of this rank's shards; image ids count through all sets."""
    shards, offset = [], 0
    for name, x in sets.items():
        shards.append((name, x, offset, _shard(len(x), config.score_batch, rank, world)))
        offset += len(x)
    rows = []
    with tqdm(total=sum(len(s) for *_, s in shards), desc=f"score (rank {rank})" if world > 1 else "score",
              unit="img", disable=not progress or rank != 0) as bar:
        for name, x, offset, shard in shards:
            for start in range(shard.start, shard.stop, config.score_batch):
                stop = min(start + config.score_batch, shard.stop)
                index = torch.arange(offset + start, offset + stop, device=device)
                scores = score_batch(model, lmd, x[start:stop].to(device), index, config, methods, seed)
                rows += [(int(i), name, m, float(s)) for m, v in scores.items() for i, s in zip(index, v)]
                bar.update(stop - start)
    return rows


def _gathered(rows: list, rank: int, world: int) -> list | None:
    """Every rank's rows on rank 0, sorted by image id (as one process orders them); None elsewhere."""
    if world > 1:
        parts = [None] * world if rank == 0 else None
        dist.gather_object(rows, parts, dst=0)
        rows = [r for part in parts for r in part] if rank == 0 else None
    return None if rows is None else sorted(rows, key=lambda r: r[0])


def metrics_table(rows, methods: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """``{ood set: {method: {AUROC, AUPRC, FPR80}}}`` of each OOD set against the in-distribution images."""
    by = {}
    for _, name, method, score in rows:
        by.setdefault(name, {}).setdefault(method, []).append(score)
    return {name: {m: ood_metrics(by[IN_SET][m], scores[m]) for m in methods}
            for name, scores in by.items() if name != IN_SET}


def markdown(table: dict, methods: Sequence[str]) -> str:
    """One Table 4.1-style block per metric: a row per OOD set, a column per method."""
    lines = []
    for metric, better in METRICS:
        arrow = "↑" if better.startswith("higher") else "↓"
        lines += [f"**{metric} {arrow}** ({better}; OOD is the positive class, every score is higher = more OOD)", "",
                  "| OOD set | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
        lines += [f"| {name} | " + " | ".join(f"{table[name][m][metric]:.3f}" for m in methods) + " |"
                  for name in table]
        lines.append("")
    return "\n".join(lines)


def _write_csvs(out: Path, rows, table: dict, methods) -> None:
    with open(out / "ood_scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "set", "method", "score"])
        writer.writerows((i, name, m, repr(s)) for i, name, m, s in rows)
    with open(out / "ood_metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ood_set", "method", *(f"{m} ({b})" for m, b in METRICS)])
        writer.writerows([name, m, *(table[name][m][k] for k, _ in METRICS)] for name in table for m in methods)


def plot_histograms(rows, methods, path: Path, caption: str) -> Path:
    """Figures 4.1 / 4.3: per method, the histograms of its scores on every set (in-distribution first)."""
    by = {}
    for _, name, method, score in rows:
        by.setdefault(method, {}).setdefault(name, []).append(score)
    fig = _figure(3.0 * len(methods), 2.6)
    for ax, method in zip(fig.subplots(1, len(methods), squeeze=False)[0], methods):
        bins = np.histogram_bin_edges(np.concatenate([np.asarray(v) for v in by[method].values()]), bins=30)
        for name, scores in by[method].items():
            ax.hist(scores, bins=bins, histtype="stepfilled", alpha=0.45, label=name)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("score (higher = more OOD)", fontsize=8)
        ax.set_ylabel("images", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return _save(fig, path, caption)


def plot_roc(rows, methods, table: dict, path: Path, caption: str) -> Path:
    """Figure 4.4: per OOD set, every method's ROC curve (OOD positive) with its AUROC."""
    by = {}
    for _, name, method, score in rows:
        by.setdefault((name, method), []).append(score)
    fig = _figure(3.3 * len(table), 3.6)
    axes = fig.subplots(1, len(table), squeeze=False)[0]
    for ax, name in zip(axes, table):
        for method in methods:
            fpr, tpr = roc(by[(IN_SET, method)], by[(name, method)])
            ax.plot(fpr, tpr, label=f"{method} (AUROC {table[name][method]['AUROC']:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title=f"{IN_SET} vs {name}")
        ax.set_xlabel("false positive rate (digits called OOD)", fontsize=8)
        ax.set_ylabel("true positive rate (OOD found)", fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
    return _save(fig, path, caption)


def _write(out: Path, rows, methods, config: OODConfig, seconds: float) -> dict:
    table = metrics_table(rows, methods)
    text = markdown(table, methods)
    settings = (f"DCGAN VAE nf={config.nf}, nz={config.nz}, K={config.n_samples}, LR_Z {config.z_steps} steps at "
                f"lr {config.z_lr:g}, LR_E {config.e_steps} steps at lr {config.e_lr:g}; {config.n_in} test digits, "
                f"{config.n_ood} images per OOD set")
    (out / "ood_metrics.md").write_text(f"# OOD detection on scikit-learn's digits\n\n{settings}.\n\n{text}")
    _write_csvs(out, rows, table, methods)
    plot_histograms(rows, methods, out / "ood_histograms.png",
                    f"Each method's scores of the test digits and of each OOD set, higher = more OOD, as Figures "
                    f"4.1 (likelihood: the NLL -L_K) and 4.3 (Likelihood Regret (4.4)). {settings}.")
    plot_roc(rows, methods, table, out / "ood_roc.png",
             f"ROC curves of each score for telling each OOD set (positive) from the test digits, as Figure 4.4; "
             f"the diagonal is chance. {settings}.")
    return {"table": table, "markdown": text, "files": [str(out / f) for f in FILES], "seconds": seconds}


def run_ood(out: Path, config: OODConfig, *, ood_sets: Sequence[str] = tuple(ood_data.OOD_SETS),
            extra_sets: dict[str, Tensor] | None = None, methods: Sequence[str] = ("LR_Z", "LR_E"),
            model: DCGANVAE | None = None, save: Path | None = None, seed: int = 0, device: str = "cpu",
            progress: bool = True) -> dict | None:
    """Train (unless ``model`` is given, e.g. ``load_model``'s) and score; on rank 0 write ``FILES`` to ``out``
    and return ``{"table", "markdown", "files", "seconds", "losses"}`` (None on the other ranks)."""
    start = time.perf_counter()
    rank, world, device, started = _distributed(torch.device(device))
    try:
        train, validation, _ = in_distribution(seed)
        train, validation = train[:config.n_train].to(device), validation.to(device)
        sets = score_sets(config, ood_sets, extra_sets or {}, seed)
        model = None if model is None else model.to(device)
        model, losses = _trained(model, train, config, seed, rank, world, save, progress)
        lmd = LatentMahalanobis(model, train, validation)
        rows = _gathered(_score(model, lmd, sets, config, methods, seed, rank, world, device, progress), rank, world)
        if rows is None:
            return None
        return _write(out, rows, [*methods, *BASELINES], config, time.perf_counter() - start) | {"losses": losses}
    finally:
        if started:
            dist.destroy_process_group()

