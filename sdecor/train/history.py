"""Per-epoch training records (what :func:`sdecor.train.fit` returns)."""

from __future__ import annotations

import json

__all__ = ["History"]


class History:
    """Per-epoch training records: ``history.epochs`` is a list of dicts.

    Keys of a record: ``epoch`` (1-based), ``loss``, every scalar part, ``train_acc`` (if logits
    were given), ``lr`` (at epoch end), ``time_s``, ``eval_acc`` / eval_fn keys when asked for.
    ``len(h)``, ``h[i]``, iteration, ``h.last``, ``h.series(key)``, ``h.to_dict()`` /
    ``History.from_dict``, ``h.to_json(path)``.
    """

    def __init__(self, epochs: list | None = None):
        self.epochs: list[dict] = [dict(e) for e in (epochs or [])]

    def append(self, record: dict) -> None:
        self.epochs.append(dict(record))

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, i):
        return self.epochs[i]

    def __iter__(self):
        return iter(self.epochs)

    @property
    def last(self) -> dict:
        """The last record ({} when empty)."""
        return self.epochs[-1] if self.epochs else {}

    def series(self, key: str) -> list:
        """``key`` of every record (NaN where a record lacks it)."""
        return [e.get(key, float("nan")) for e in self.epochs]

    def to_dict(self) -> dict:
        return {"epochs": [dict(e) for e in self.epochs]}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(d.get("epochs", []))

    def to_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    def __repr__(self) -> str:
        return f"History({len(self)} epochs, last={self.last})"
