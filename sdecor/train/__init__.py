"""Training loop for any ``nn.Module`` + ``DataLoader``, with DDP support.

Public API (stable)
-------------------

Objective contract
    ``objective(model, images, labels) -> (loss, parts)``: ``loss`` a scalar tensor to
    minimise; ``parts`` a dict ``str -> tensor``. Scalar entries (e.g. ``"ce"``, ``"kl"``,
    ``"decor"``) are logged: averaged over the epoch (weighted by batch size) into the History.
    The optional entry ``parts["logits"]`` (N, num_classes), the clean logits, is not logged
    but gives the epoch's training accuracy (``"train_acc"``). Objectives may be plain
    functions or ``nn.Module``\\ s (moved to the device; their parameters, if any, are
    optimised with the model's). ``model`` as passed to the objective is the model as wrapped
    for training (a ``DistributedDataParallel`` under torchrun): always run the forward pass
    through it, and reach attributes / named modules with ``unwrap_model(model)`` (e.g.
    ``get_layer(unwrap_model(model), unwrap_model(model).feature_layer)`` for a forward hook).
    The objective is called in train mode inside the autocast region (on CUDA with AMP);
    it may call the model several times and use ``torch.autograd.grad(..., create_graph=True)``.

``CrossEntropyObjective(label_smoothing=0.0)``: the minimal objective, parts ``{"ce",
"logits"}``.

``fit(model, objective, train_loader, *, epochs=10, optimizer=None, lr=0.05, momentum=0.9,
weight_decay=5e-4, schedule="onecycle", device=None, amp=None, amp_dtype="bfloat16", seed=0,
checkpoint_dir=None, resume=False, eval_loader=None, eval_fn=None, progress=True, meta=None,
distributed=None, grad_clip=None, max_steps=None) -> History``
    * optimizer: default SGD(momentum 0.9, nesterov, weight decay 5e-4 on all parameters) at
      ``lr``; pass any ``torch.optim.Optimizer`` (then ``lr`` is only used by the schedule).
    * schedule: ``"onecycle"`` (``OneCycleLR`` with ``max_lr=lr``), ``"cosine"`` (cosine decay
      to 0), ``"constant"``; stepped per batch.
    * device: ``None`` = ``cuda`` (``cuda:LOCAL_RANK`` under torchrun) if available, else cpu.
    * amp: ``None`` = on for CUDA, off on CPU; ``amp_dtype`` ``"bfloat16"`` (no loss scaling)
      or ``"float16"`` (with ``torch.amp.GradScaler``).
    * seed: ``set_seed(seed + rank)`` at the start (weights are initialised *before* ``fit``:
      call ``set_seed`` before building the model for fully reproducible runs). A loader without
      its own generator is reseeded through the global RNG; ``make_loaders`` gives it one.
    * checkpoint_dir: rank 0 writes ``last.pt`` after every epoch (model, optimizer, schedule,
      scaler, history, ``meta``) and ``final.pt`` at the end (model + meta only). ``resume=True``
      continues from ``checkpoint_dir/last.pt`` if present.
    * eval_loader: after every epoch ``eval_acc`` = ``evaluate_accuracy`` (on every rank, on the
      full loader). eval_fn: ``eval_fn(model) -> dict[str, float]``, rank 0 only, merged into the
      epoch's record (the unwrapped model, in eval mode; restored to train mode afterwards).
    * distributed: ``None`` = on when launched by torchrun (``WORLD_SIZE > 1``); the process
      group is initialised if needed (nccl on CUDA, gloo on CPU), the model wrapped in DDP,
      the train loader rebuilt with a ``DistributedSampler`` (same batch size per rank),
      logging, progress bar and checkpoints on rank 0 only; loss parts are all-reduced.
    * max_steps: stop after this many optimizer steps in total (smoke tests).
    Returns the ``History``; the model is trained in place (and left unwrapped, in eval mode).

``History``: ``history.epochs`` is a list of per-epoch dicts with keys ``epoch`` (1-based),
``loss``, every scalar part, ``train_acc`` (if logits were given), ``lr`` (at epoch end),
``time_s``, ``eval_acc`` / eval_fn keys when asked for. ``len(h)``, ``h[i]``, ``h.last``,
``h.series("loss")``, ``h.to_dict()`` / ``History.from_dict``, ``h.to_json(path)``.

``evaluate_accuracy(model, loader, device=None, amp=False) -> float`` in [0, 1].

``set_seed(seed, deterministic=False)``: python, numpy, torch (CPU and CUDA) RNGs;
``deterministic=True`` also asks torch for deterministic algorithms.

``save_checkpoint(path, model, meta=None, **extra_state)`` writes ``{"model_state",
"model_spec", "meta", **extra_state}`` with ``torch.save`` (rank-independent: a DDP wrapper is
unwrapped). ``model_spec`` is ``model.config`` (the reference models have one) or
``meta["model"]``, a ``{"name", "kwargs"}`` dict for ``sdecor.models.build_model``.
Convention for ``meta``: ``{"model": spec, "data": DatasetInfo.as_dict(), "objective": str,
...}``; ``sdecor explain`` reads ``meta["data"]["image_shape"]`` and ``["class_names"]``.

``load_checkpoint(path, model=None, map_location="cpu") -> (model, meta)``: rebuilds the model
from the stored spec (or loads the state into ``model`` when given), in eval mode.

``unwrap_model(model)``: the module inside a DDP / DataParallel wrapper (identity otherwise).
``resolve_device(device=None) -> torch.device``; ``is_main_process()``; ``get_rank()``;
``get_world_size()``.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .loop import (
    CrossEntropyObjective,
    History,
    evaluate_accuracy,
    fit,
    get_rank,
    get_world_size,
    is_main_process,
    resolve_device,
    set_seed,
    unwrap_model,
)

__all__ = [
    "CrossEntropyObjective",
    "History",
    "evaluate_accuracy",
    "fit",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "set_seed",
    "unwrap_model",
]
