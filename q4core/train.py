"""Train a model under a precision policy: the ``train(...)`` API and the command line.

``python -m q4core.train --task TASK --recipe fp32|fp16|q4|NAME|JSON [--ablation NAME ...] --epochs N --seed S
--out result.json [--data file.npz --model mlp|cnn|resnet] [--no-progress]`` writes a JSON with the config, the
per-epoch train loss and validation metric, wall time and the final test metric.

Tasks: ``digits`` (sklearn 8x8), ``mnist`` (MNIST 5k, 28x28), ``speech`` (spoken digits, 50 x 32 log-mel),
``chars`` (BBC News characters, bits per character), or ``--data file.npz`` holding ``X_train, y_train,
X_test, y_test`` (optionally ``X_val, y_val``) with images N x H x W / N x C x H x W or vectors N x D.

Result (the dict :func:`train` returns and the CLI writes, NaN/Inf written as null): ``task``, ``model``,
``recipe`` (the full precision recipe as a dict), ``seed``, ``epochs``, ``batch_size``, ``optimizer``,
``lr``, ``schedule``, ``weight_decay``, ``metric`` (``accuracy`` or ``bpc``), ``history`` (per epoch:
``train_loss`` in nats, ``val_<metric>``, ``epoch_seconds``, ``skipped_steps``; and ``step_loss``, the
loss of every step, including the one that stopped training), ``test_<metric>``,
``steps``, ``loss_scale``, ``wall_seconds`` and ``stopped`` (None, or why training stopped early).

Determinism: every random choice (initial weights, batch order, dropout, stochastic rounding) comes from
``seed``; the 4-bit integer kernels give the same numbers for any thread count.  A non-finite loss,
gradient or weight (checked after every optimizer step, the last one included) or non-finite model outputs on
the validation or test split stop training with a message in ``result["stopped"]``, the history so far and no
checkpoint of the diverged model.

Command line exit status: 0 trained, 1 stopped early (the result is written), 2 bad arguments or data (nothing
written), 130 interrupted (SIGINT / Ctrl-C: ``--out`` not written, ``--checkpoint`` the last complete epoch's or
absent, no temporary left).
Dynamic loss scaling (a recipe with FP16 layers, or with ``loss-scale`` gradient scaling): the loss gradient
is multiplied by the loss scale, a step whose gradients overflow is skipped and halves the scale, a step on
which a 4-bit layer relying on the loss scale saturated halves it (the step is kept: its values are finite),
``loss_scale_window`` good steps double it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from ._io import check_replaceable, write_atomic
from ._validation import check_int, check_real
from .formats import NonFiniteError
from .nn.losses import softmax_cross_entropy
from .nn.models import build_model
from .nn.optim import SGD, Adam, lr_schedule
from .recipe import ABLATIONS, get_recipe, recipe_names
from .tasks import DEFAULT_MODEL, DEFAULTS, TASKS, Classification, load_npz_task, load_task

__all__ = ["train", "load_npz_task", "TASKS", "main", "TrainingDiverged", "StepRecorder"]

#: the exit status of the command line after Ctrl-C / SIGINT (128 + SIGINT, what a shell reports)
INTERRUPTED_EXIT_CODE = 130


class TrainingDiverged(FloatingPointError):
    """Raised inside the loop; :func:`train` catches it and returns the history so far."""


# ---------------------------------------------------------------------------------------------- recording
class StepRecorder:
    """An ``on_step`` callback that records, every ``every`` steps and for every GEMM layer, the ranges a
    notebook plots: weight/input min and max, max |output gradient|, the layer's scales (weight, activation,
    gradient), PACT alpha and GradScale scale, plus the step's loss and learning rate.

    ``records`` is a list of flat dicts (one per layer and recorded step), ready for a table or a plot;
    ``samples`` (when ``keep_gradients``) holds a copy of each layer's output gradient at recorded steps
    (at most ``max_values`` values each, taken with a fixed stride) for histograms of real gradients.
    """

    def __init__(self, every=1, keep_gradients=False, max_values=4096):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every!r}")
        self.every, self.keep_gradients, self.max_values = int(every), bool(keep_gradients), int(max_values)
        self.records, self.samples = [], []

    def __call__(self, step, model, info):
        if step % self.every:
            return
        for name, layer in model.gemm_layers():
            last = layer.gemm.last
            w, x, g = last.get("weight"), last.get("input"), last.get("grad_output")
            rec = {"step": step, "layer": name, "loss": info["loss"], "lr": info["lr"]}
            rec.update(layer.gemm.quantizer_state())
            if w is not None and w.size:
                rec.update(weight_min=float(w.min()), weight_max=float(w.max()))
            if x is not None and x.size:
                rec.update(input_min=float(x.min()), input_max=float(x.max()))
            if g is not None and g.size:
                rec["grad_absmax"] = float(np.abs(g).max())
                if self.keep_gradients:
                    flat = g.reshape(-1)
                    stride = max(1, flat.size // self.max_values)
                    self.samples.append({"step": step, "layer": name, "grad": flat[::stride][:self.max_values].copy()})
            self.records.append(rec)


# ---------------------------------------------------------------------------------------------- loop
def _grads_finite(params):
    return all(np.isfinite(p.grad).all() for p in params)


def _non_finite_weights(named):
    """Names of the parameters holding a NaN or Inf (empty when all are finite)."""
    return [name for name, p in named if not np.isfinite(p.data).all()]


def _evaluate(ds, net, split):
    """``ds.evaluate`` with overflow in a model gone astray reported as divergence, not as a RuntimeWarning and a
    chance-level accuracy from the argmax of NaN logits."""
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            value = ds.evaluate(net, split)
        except (FloatingPointError, NonFiniteError) as exc:
            raise TrainingDiverged(str(exc)) from exc
    if not math.isfinite(value):
        raise TrainingDiverged(f"the {'validation' if split == 'val' else split} {ds.metric} became {value}")
    return value


def train(task="digits", recipe="fp32", ablation=None, epochs=5, seed=0, model=None, data=None,
          batch_size=None, optimizer=None, lr=None, momentum=0.9, weight_decay=5e-4, schedule="cosine",
          warmup=0, max_steps=None, on_step=None, progress=True, checkpoint=None, max_chars=None,
          model_kwargs=None, return_model=False, max_loss=None, **config_overrides):
    """Train and evaluate; returns a JSON-serialisable result dict.

    ``recipe``: a registered name (``fp32``, ``fp16``, ``fp8``, ``q4``, ``q4+no-tpr``, ...; see
    :func:`q4core.recipe.recipe_names`), a dict of :class:`~q4core.recipe.Recipe` fields or a Recipe;
    ``ablation``: a name or list of names from :data:`q4core.recipe.ABLATIONS`; further keyword
    arguments override recipe fields (e.g. ``simulate=True``).  ``data``: a ``.npz`` path (user data) or a
    :class:`q4core.data.Dataset` (then ``model`` is ``mlp``, ``cnn`` or ``resnet``).  ``on_step(step, model,
    info)`` is called after every optimizer step with ``info`` =
    ``{"epoch", "loss", "lr", "loss_scale"}``; each GEMM layer's ``gemm.last`` holds its last input,
    weight and output gradient and ``gemm.quantizer_state()`` its scales.  ``checkpoint``: a ``.npz`` path
    written after every epoch.  ``max_steps`` stops early (for tests and benchmarks).  Training counts as
    diverged when a loss is NaN/Inf or above ``max_loss`` (default ``50 * ln(classes)``, far above any
    loss of a model that learns: chance level is ``ln(classes)``).
    ``return_model=True`` returns ``(result, model)``.
    """
    epochs = check_int(epochs, "epochs", min_value=0)
    seed = check_int(seed, "seed", min_value=0)
    max_steps = check_int(max_steps, "max_steps", min_value=1, allow_none=True)
    if checkpoint is not None:
        from .checkpoint import check_checkpoint_path
        check_checkpoint_path(checkpoint)     # before the work, not after the first epoch
    config = get_recipe(recipe, ablation, **{"seed": int(seed), **config_overrides})
    if data is not None:
        if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
            ds = load_npz_task(data, seed)
        elif hasattr(data, "X_train") and not hasattr(data, "batches"):     # a q4core.data.Dataset
            n_classes = len(data.classes) if getattr(data, "classes", None) else int(data.y_train.max()) + 1
            ds = Classification(data.X_train, data.y_train, data.X_val, data.y_val, data.X_test, data.y_test,
                                 n_classes, "dataset")
        else:
            ds = data
        key = "npz"
    else:
        ds = load_task(task, seed, max_chars)
        key = task
    model_name = model or DEFAULT_MODEL.get(key, "cnn" if len(ds.input_shape) == 3 else "mlp")
    if data is not None and model_name not in ("mlp", "cnn", "resnet"):
        raise ValueError(f"with --data the model must be 'mlp', 'cnn' or 'resnet', got {model_name!r}")
    net = build_model(model_name, ds.input_shape, ds.n_classes, seed=seed, **(model_kwargs or {}))
    net.set_policy(config)
    net.input_grad = False      # the input is data: its first layer skips the dL/dx GEMM nobody reads
    d_bs, d_opt, d_lr = DEFAULTS.get(key, DEFAULTS["npz"])
    # None means the task's default; 0 is an error, not the default
    batch_size = check_int(d_bs if batch_size is None else batch_size, "batch_size", min_value=1)
    opt_name = optimizer or d_opt
    # the float32 master weights see lr as a float32: beyond its range it would be inf
    lr = check_real(d_lr if lr is None else lr, "lr", positive=True, max_value=float(np.finfo(np.float32).max))
    named = list(net.named_parameters())
    if opt_name == "sgd":
        opt = SGD(named, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif opt_name == "adam":
        opt = Adam(named, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {opt_name!r}")
    steps_per_epoch = ds.n_batches(batch_size)
    total = steps_per_epoch * max(epochs, 1) if max_steps is None else min(max_steps, steps_per_epoch * max(epochs, 1))
    lr_at = lr_schedule(schedule, lr, total, warmup=warmup)
    # one global dynamic loss scale where a layer needs it: FP16 operands, or 4-bit gradients scaled by it alone
    fp16 = any(layer.gemm.spec_gx.format == "fp16" or layer.gemm.spec_gx.scaling == "loss-scale"
               for _, layer in net.gemm_layers())
    loss_scale = config.loss_scale_init if fp16 else 1.0
    state = net.precision_state
    good_steps = 0
    params = net.parameters()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))

    history = {"train_loss": [], "val_" + ds.metric: [], "epoch_seconds": [], "skipped_steps": [], "step_loss": []}
    result = {"task": ds.name, "model": model_name, "recipe": config.to_dict(), "seed": int(seed),
              "epochs": int(epochs), "batch_size": batch_size, "optimizer": opt_name, "lr": lr,
              "schedule": schedule, "weight_decay": weight_decay, "metric": ds.metric, "history": history,
              "stopped": None, "steps": 0}
    max_loss = 50.0 * math.log(ds.n_classes) if max_loss is None else float(max_loss)
    step = 0
    t_start = time.perf_counter()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with papermill
        tqdm = None
    done = False
    try:
        for epoch in range(epochs):
            t0 = time.perf_counter()
            net.train()
            losses, skipped = [], 0
            it = ds.batches(rng, batch_size)
            bar = None
            if progress and tqdm is not None:
                bar = tqdm(it, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs} {config.name}",
                           leave=False, file=sys.stderr)
                it = bar
            for xb, yb in it:
                lr_now = lr_at(step)
                net.zero_grad()
                state.loss_scale, state.saturated = loss_scale, False
                # overflow is expected under fp16 loss scaling and on divergence; both are handled below
                with np.errstate(over="ignore", invalid="ignore"):
                    try:
                        logits = net.forward(xb)
                    except NonFiniteError as exc:
                        # the batch is finite (checked at load): an activation overflowed inside the model
                        raise TrainingDiverged(f"an activation became NaN or Inf before a quantizer at step "
                                               f"{step} (epoch {epoch + 1})") from exc
                    loss, g = softmax_cross_entropy(logits, yb)
                    history["step_loss"].append(loss)
                    if not math.isfinite(loss) or loss > max_loss:
                        raise TrainingDiverged(f"the training loss became {loss} at step {step} "
                                               f"(epoch {epoch + 1}; limit {max_loss:.4g})")
                    try:
                        net.backward(g * np.float32(loss_scale) if fp16 else g)
                    except (FloatingPointError, NonFiniteError) as exc:
                        if not fp16:
                            raise TrainingDiverged(f"a non-finite gradient at step {step}: {exc}") from exc
                        ok = False
                    else:
                        ok = _grads_finite(params)
                if fp16:
                    if not ok:     # overflow: skip the step, halve the loss scale
                        loss_scale = max(loss_scale / 2, 1.0)
                        good_steps = 0
                        skipped += 1
                        losses.append(loss)
                        step += 1
                        continue
                    inv = np.float32(1.0 / loss_scale)
                    for p in params:
                        p.grad *= inv
                    if state.saturated:     # a 4-bit layer saturated at this loss scale: lower it, keep the step
                        loss_scale = max(loss_scale / 2, 1.0)
                        good_steps = 0
                    else:
                        good_steps += 1
                        if good_steps >= config.loss_scale_window:
                            loss_scale *= 2
                            good_steps = 0
                elif not ok:
                    raise TrainingDiverged(f"a non-finite gradient at step {step} (epoch {epoch + 1})")
                net.add_regularisation()
                with np.errstate(over="ignore", invalid="ignore"):    # checked just below, by name
                    opt.step(lr=lr_now)
                bad = _non_finite_weights(named)
                if bad:
                    names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                    raise TrainingDiverged(f"the weights {names} became non-finite at step {step} "
                                           f"(epoch {epoch + 1}; lr {lr_now:.4g})")
                losses.append(loss)
                step += 1
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}")
                if on_step is not None:
                    on_step(step, net, {"epoch": epoch, "loss": loss, "lr": lr_now, "loss_scale": loss_scale})
                if max_steps is not None and step >= max_steps:
                    done = True
                    break
            if bar is not None:
                bar.close()
            net.eval()
            history["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
            history["epoch_seconds"].append(time.perf_counter() - t0)
            history["skipped_steps"].append(skipped)
            try:
                history["val_" + ds.metric].append(_evaluate(ds, net, "val"))
            except TrainingDiverged as exc:
                history["val_" + ds.metric].append(float("nan"))
                raise TrainingDiverged(f"{exc} after epoch {epoch + 1}") from exc
            if checkpoint is not None:
                from .checkpoint import save_checkpoint
                save_checkpoint(checkpoint, net, opt, meta={"epoch": epoch + 1, "step": step,
                                                             "recipe": config.to_dict(), "seed": int(seed)})
            if done:
                break
        net.eval()
        result["test_" + ds.metric] = _evaluate(ds, net, "test")
    except TrainingDiverged as exc:
        result["stopped"] = f"training stopped: {exc}"
        result["test_" + ds.metric] = None
        print(result["stopped"], file=sys.stderr)
    result["steps"] = step
    result["loss_scale"] = loss_scale
    result["wall_seconds"] = time.perf_counter() - t_start
    return (result, net) if return_model else result


# ---------------------------------------------------------------------------------------------- CLI
def _parser():
    p = argparse.ArgumentParser(prog="python -m q4core.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=TASKS, default=None, help="built-in task (or use --data)")
    p.add_argument("--data", default=None, help=".npz with X_train, y_train, X_test, y_test [, X_val, y_val]")
    p.add_argument("--model", default=None, help="mlp | cnn | resnet (with --data); also speech_cnn, speech_lstm, "
                                                 "speech_gru, char_gru, "
                                                 "char_lstm, char_transformer for the built-in tasks")
    p.add_argument("--recipe", default="fp32",
                   help="a registered recipe name (" + ", ".join(recipe_names()) + ") or a JSON object of Recipe "
                        "fields")
    p.add_argument("--ablation", action="append", default=None, choices=list(ABLATIONS),
                   help="ablation of a 4-bit recipe (repeatable)")
    p.add_argument("--simulate", action="store_true", help="fake quantization (float GEMMs) in place of the "
                                                          "integer kernels (same numbers)")
    p.add_argument("--config", default=None,
                   help="JSON object of Recipe fields to override, e.g. '{\"grad_dw\": {\"phase\": 0}}'")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="threads of the 4-bit integer kernels")
    p.add_argument("--checkpoint", default=None, help=".npz checkpoint written after every epoch")
    p.add_argument("--out", required=True, help="result JSON path")
    p.add_argument("--no-progress", action="store_true")
    return p


def _json_safe(obj):
    """NaN/Inf -> None so the file is strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _check_distinct_files(args):
    """``ValueError`` if two of --data, --checkpoint and --out are the same file: the result would overwrite the
    data or the checkpoint it was trained from."""
    given = [(opt, value) for opt, value in (("--data", args.data), ("--checkpoint", args.checkpoint),
                                             ("--out", args.out)) if value is not None]
    seen = {}
    for opt, value in given:
        real = os.path.realpath(value)
        if real in seen:
            raise ValueError(f"{seen[real]} and {opt} are the same file ({value}); the run would overwrite it")
        seen[real] = opt


def main(argv=None):
    args = _parser().parse_args(argv)
    if (args.task is None) == (args.data is None):
        print("error: give exactly one of --task and --data", file=sys.stderr)
        return 2
    extra = {"simulate": True} if args.simulate else {}
    recipe = args.recipe
    if recipe.lstrip().startswith("{"):
        try:
            recipe = json.loads(recipe)
        except json.JSONDecodeError as exc:
            print(f"error: --recipe is not valid JSON ({exc})", file=sys.stderr)
            return 2
    if args.config is not None:
        try:
            fields = json.loads(args.config)
        except json.JSONDecodeError as exc:
            print(f"error: --config is not valid JSON ({exc})", file=sys.stderr)
            return 2
        if not isinstance(fields, dict):
            print("error: --config must be a JSON object of config fields", file=sys.stderr)
            return 2
        # one value per setting: the option must not silently override --config (or the other way round)
        clashes = [f"--{key}" for key, flagged in (("threads", args.threads is not None), ("simulate", args.simulate),
                                                   ("seed", fields.get("seed", args.seed) != args.seed))
                   if key in fields and flagged]
        if clashes:
            print(f"error: {', '.join(clashes)} and --config both set {', '.join(c[2:] for c in clashes)}; "
                  "give each setting once", file=sys.stderr)
            return 2
        extra.update(fields)
    if args.threads is not None:
        extra["threads"] = args.threads
    try:
        # checked here too so that the message names the option as typed; None is the task's default, 0 an error
        check_int(args.epochs, "--epochs", min_value=0)
        check_int(args.seed, "--seed", min_value=0)
        check_int(args.batch_size, "--batch-size", min_value=1, allow_none=True)
        check_int(args.max_steps, "--max-steps", min_value=1, allow_none=True)
        check_int(args.threads, "--threads", min_value=1, allow_none=True)
        check_real(args.lr, "--lr", positive=True, max_value=float(np.finfo(np.float32).max), allow_none=True)
        _check_distinct_files(args)
        check_replaceable(args.out, "--out")
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
            raise ValueError(f"--out {args.out}: its folder does not exist")
        result = train(task=args.task, data=args.data, model=args.model, recipe=recipe,
                       ablation=args.ablation, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                       lr=args.lr, optimizer=args.optimizer, max_steps=args.max_steps,
                       checkpoint=args.checkpoint, progress=not args.no_progress, **extra)
        def write(tmp):
            with open(tmp, "w") as fh:
                json.dump(_json_safe(result), fh, indent=2, sort_keys=True, allow_nan=False)
        write_atomic(args.out, write, "--out")
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # write_atomic and save_checkpoint removed their temporaries on the way out: every file is old or new
        print(f"interrupted: {args.out} was not written"
              + (f"; {args.checkpoint} holds the last completed epoch, if any" if args.checkpoint else ""),
              file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    m = result["metric"]
    print(f"{result['task']} {result['recipe']['name']}: test {m} = {result.get('test_' + m)}"
          + (f" ({result['stopped']})" if result["stopped"] else ""))
    return 1 if result["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
