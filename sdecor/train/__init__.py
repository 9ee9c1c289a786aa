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
    through it, and reach attributes / named modules through :mod:`sdecor.models.introspection`
    (``unwrap_model``, ``get_layer``, ``record_features``, which hooks a layer only for a
    ``with`` block). The objective is called in train mode inside the autocast region (on CUDA
    with AMP); it may call the model several times and use
    ``torch.autograd.grad(..., create_graph=True)``. The objectives of :mod:`sdecor.losses`
    (``Standard`` for plain cross-entropy) follow this contract.

``fit(model, objective, train_loader, *, epochs=10, optimizer=None, lr=0.05, momentum=0.9,
weight_decay=5e-4, schedule="onecycle", device=None, amp=None, amp_dtype="bfloat16", seed=0,
checkpoint_dir=None, resume=False, eval_loader=None, eval_fn=None, progress=True, meta=None,
distributed=None, grad_clip=None, max_steps=None, max_grad_norm=None) -> History``: every
argument is documented on :func:`~sdecor.train.loop.fit`. Returns the ``History``; the model is
trained in place (and left unwrapped, in eval mode). ``checkpoint_dir`` + ``resume=True``
continue a killed run exactly (``last.pt`` holds every state the rest of the run depends on,
see :mod:`~sdecor.train.run_state`); a NaN/inf loss or part stops the run with
``TrainingDiverged`` (:mod:`~sdecor.train.divergence`), keeping the last good checkpoint.

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

``resolve_device(device=None) -> torch.device``; ``is_main_process()``; ``get_rank()``;
``get_world_size()`` (:mod:`sdecor.train.distributed`).

Modules: :mod:`~sdecor.train.loop` (``fit``, ``evaluate_accuracy``, ``set_seed``),
:mod:`~sdecor.train.history`, :mod:`~sdecor.train.distributed`, :mod:`~sdecor.train.checkpoint`,
:mod:`~sdecor.train.run_state` (random states and run identity in ``last.pt``),
:mod:`~sdecor.train.divergence` (``TrainingDiverged``, the on-device non-finite watch).
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import get_rank, get_world_size, is_main_process, resolve_device
from .divergence import TrainingDiverged
from .history import History
from .loop import evaluate_accuracy, fit, set_seed

__all__ = [
    "History",
    "TrainingDiverged",
    "evaluate_accuracy",
    "fit",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "set_seed",
]
