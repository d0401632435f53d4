"""Train the stacked LSTM with PyTorch (nn.LSTM: cuDNN on CUDA) from a packed token file, for a
time budget, writing a run folder that improvd_train.export reads like a TensorFlow run's.

    python -m improvd_train.torch_train --pack runs/pack.npz --out runs/gpu --device cuda --minutes 7
    python -m improvd_train.export --run runs/gpu --out exported/improvd --quantize     # back here

Needs numpy and torch only (no TensorFlow, no improvd runtime): it runs on a GPU machine that has
nothing else. Windows of --seq-len events are drawn at random from the training pieces played one
after another, each transposed by up to --transpose semitones (on the device: tempo stretch needs
the tokenizer, so it stays with the CPU path). Adam with gradient clipping; the learning rate warms
up over --warmup steps, then decays linearly to lr x --lr-final against the clock. Every
--checkpoint-minutes: validation bits/event, last.weights.npz (+ best.weights.npz when better),
state.json and a log.csv line, so a run cut short still leaves a model.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from improvd_train import torch_lstm

# ---- defaults (a 3 x 512 model for about 9 minutes of an H200, start-up included) ---------
LAYERS = 3
UNITS = 512
EMBEDDING = 256
DROPOUT = 0.05
SEQ_LEN = 512
BATCH = 64
LR = 1e-3
LR_FINAL = 0.05
CLIP_NORM = 3.0
TRANSPOSE = 3
WARMUP = 100
MINUTES = 7.0
CHECKPOINT_MINUTES = 1.0
VALIDATION_EVENTS = 500_000
SEED = 1
GAP = (355,)  # one second of silence between pieces: TIME_SHIFT 100 (improvd.vocab.time_shift_tokens(100))
NOTE_TOKENS, PITCHES = 256, 128  # NOTE_ON 0..127, NOTE_OFF 128..255
# ---------------------------------------------------------------------------------------


def stream(tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The pieces played one after another, a second's silence between them (as training does)."""
    gap = np.asarray(GAP, np.int64)
    parts = []
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        parts += [tokens[a:b].astype(np.int64), gap]
    return np.concatenate(parts)


def transpose(windows: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    """Each window moved by its own random interval in -limit..limit, or left as it is where
    that interval would take one of its notes off the keyboard."""
    if limit == 0:
        return windows
    shift = torch.randint(-limit, limit + 1, (len(windows), 1), device=windows.device, generator=generator)
    note = windows < NOTE_TOKENS
    pitch = windows % PITCHES + shift
    fits = ((pitch >= 0) & (pitch < PITCHES) | ~note).all(dim=1, keepdim=True)
    return torch.where(note & fits, windows + shift, windows)


def validation_windows(tokens: torch.Tensor, seq_len: int, events: int) -> torch.Tensor:
    count = max(1, min(events, len(tokens) - 1) // seq_len)
    return torch.stack([tokens[i * seq_len: i * seq_len + seq_len + 1] for i in range(count)])


@torch.no_grad()
def bits_per_event(model, windows: torch.Tensor, batch: int) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(windows), batch):
        chunk = windows[start:start + batch]
        logits = model(chunk[:, :-1])
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten(),
                                                         reduction="sum"))
    model.train()
    return total / windows[:, 1:].numel() / math.log(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, required=True, help="improvd_train.pack's file")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--units", type=int, default=UNITS)
    parser.add_argument("--embedding", type=int, default=EMBEDDING)
    parser.add_argument("--dropout", type=float, default=DROPOUT)
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--lr-final", type=float, default=LR_FINAL)
    parser.add_argument("--clip-norm", type=float, default=CLIP_NORM)
    parser.add_argument("--transpose", type=int, default=TRANSPOSE)
    parser.add_argument("--warmup", type=int, default=WARMUP, help="steps of linear learning-rate warm-up")
    parser.add_argument("--minutes", type=float, default=MINUTES, help="training time budget")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: the budget decides)")
    parser.add_argument("--checkpoint-minutes", type=float, default=CHECKPOINT_MINUTES)
    parser.add_argument("--validation-events", type=int, default=VALIDATION_EVENTS)
    parser.add_argument("--init", choices=("pack", "none"), default="pack",
                        help="start from the pack's weights (when their shape fits) or from scratch")
    parser.add_argument("--checkpoint-dtype", choices=("float32", "float16"), default="float32",
                        help="float16 halves the checkpoint files (a 3 x 512 model: 12 MB, not 24) for a "
                             "transfer that limits file size; export reads either")
    parser.add_argument("--random-seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    started = time.monotonic()
    device = torch.device(args.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun (torch.distributed.run)
    rank = 0
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
        if args.batch % world:
            raise SystemExit(f"torch_train: --batch {args.batch} (global) must divide among {world} processes")
    batch = args.batch // world  # each process's share of the global batch
    torch.manual_seed(args.random_seed)  # the same initial weights in every process
    generator = torch.Generator(device=device).manual_seed(args.random_seed + rank)  # different windows in each
    packed = np.load(args.pack)
    header = json.loads(packed["header"].tobytes())
    train_tokens = torch.from_numpy(stream(packed["train_tokens"], packed["train_offsets"])).to(device)
    validation = validation_windows(
        torch.from_numpy(stream(packed["validation_tokens"], packed["validation_offsets"])).to(device),
        args.seq_len, args.validation_events)

    model = torch_lstm.LSTMModel(header["vocab_size"], args.layers, args.units, args.embedding, args.dropout)
    init = {k.split(":", 1)[1]: packed[k] for k in packed.files if k.startswith("init:")}
    started_from = None
    if args.init == "pack" and init and init["lstm_0/1"].shape[0] == args.units and \
            init["embedding/0"].shape[1] == args.embedding and f"lstm_{args.layers - 1}/0" in init:
        torch_lstm.load_keras_arrays(model, init)
        started_from = header["init"]
    model.to(device).train()
    trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model  # gradients averaged over the processes at every step
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    out = args.out
    if rank:
        return follow(trained, optimizer, train_tokens, generator, batch, args, device)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    # export reads data, layers, units, embedding, dropout and init from here, as from train.py's runs
    (out / "args.json").write_text(json.dumps({
        **settings, "data": header["data"], "init": started_from, "trainer": "torch", "pack": str(args.pack),
        "data_manifest": header["manifest"], "vocab": header["vocab"]}, indent=2))
    log_path = out / "log.csv"
    with log_path.open("w", newline="") as f:
        csv.writer(f).writerow(["epoch", "loss", "val_loss", "learning_rate", "steps", "events_per_s"])

    budget = args.minutes * 60
    print(f"torch_train: {len(train_tokens)} training events, {len(validation)} validation windows, "
          f"{sum(p.numel() for p in model.parameters())} parameters on {device}, from "
          f"{started_from or 'scratch'}; start-up {time.monotonic() - started:.1f} s", flush=True)
    best = float("inf")
    step, losses, checkpoint = 0, [], 0
    train_started = time.monotonic()
    last_checkpoint = train_started
    last_steps = 0
    while True:
        elapsed = time.monotonic() - train_started
        done = bool(elapsed >= budget or (args.steps and step >= args.steps))
        due = done or time.monotonic() - last_checkpoint >= args.checkpoint_minutes * 60
        if world > 1:  # every process stops at the same step
            dist.broadcast(torch.tensor([int(done)], device=device), 0)
        if due:
            val_bits = bits_per_event(model, validation, args.batch)
            train_loss = float(np.mean(losses)) if losses else float("nan")
            rate = (step - last_steps) * args.batch * args.seq_len / max(1e-9, time.monotonic() - last_checkpoint)
            arrays = {k: v.astype(args.checkpoint_dtype) for k, v in torch_lstm.keras_arrays(model).items()}
            torch_lstm.save_arrays(out / "last.weights.npz", arrays)
            if val_bits < best:
                best = val_bits
                torch_lstm.save_arrays(out / "best.weights.npz", arrays)
            with log_path.open("a", newline="") as f:
                csv.writer(f).writerow([checkpoint, train_loss, val_bits * math.log(2),
                                        optimizer.param_groups[0]["lr"], step, round(rate, 1)])
            (out / "state.json").write_text(json.dumps({
                "epoch": checkpoint + 1, "steps": step, "best_val_loss": best * math.log(2),
                "best_val_bits_per_event": best, "elapsed_s": round(time.monotonic() - train_started, 1),
                "tokens_per_s": round(rate, 1), "device": str(device)}, indent=2))
            print(f"torch_train: checkpoint {checkpoint}: step {step}, train {train_loss / math.log(2):.4f} "
                  f"validation {val_bits:.4f} bits/event, {rate:.0f} events/s", flush=True)
            checkpoint, losses, last_steps, last_checkpoint = checkpoint + 1, [], step, time.monotonic()
            if done:
                break
        fraction = min(1.0, (time.monotonic() - train_started) / budget)
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup)) * (1 - (1 - args.lr_final) * fraction)
        if world > 1:
            dist.broadcast(torch.tensor([lr], device=device), 0)
        losses.append(train_step(trained, optimizer, train_tokens, generator, batch, lr, args, device))
        step += 1
    print(f"torch_train: best validation {best:.4f} bits/event after {step} steps, "
          f"{time.monotonic() - started:.0f} s in all -> {out}")
    finish(model, rank, world)


def train_step(trained, optimizer, tokens, generator, batch, lr, args, device) -> float:
    """One optimizer step on `batch` random windows; the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    starts = torch.randint(0, len(tokens) - args.seq_len - 1, (batch, 1), device=device, generator=generator)
    windows = transpose(tokens[starts + torch.arange(args.seq_len + 1, device=device)], args.transpose, generator)
    logits = trained(windows[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trained.parameters(), args.clip_norm)
    optimizer.step()
    return float(loss.detach())  # a sync per step: negligible beside a 512-step LSTM pass


def follow(trained, optimizer, tokens, generator, batch, args, device) -> None:
    """A process other than the first: train in step with it (it decides when to stop and the
    learning rate), write nothing."""
    model = trained.module
    while True:
        done = torch.tensor([0], device=device)
        dist.broadcast(done, 0)
        if int(done):
            break
        lr = torch.tensor([0.0], device=device)
        dist.broadcast(lr, 0)
        train_step(trained, optimizer, tokens, generator, batch, float(lr), args, device)
    finish(model, dist.get_rank(), dist.get_world_size())


def finish(model, rank: int, world: int) -> None:
    """Every process names a checksum of its weights (the same in all, when training was in step)."""
    if world > 1:
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
        print(f"torch_train: process {rank} of {world}: weights checksum {checksum:.10e}", flush=True)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
