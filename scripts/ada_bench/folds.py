"""Folds on the phantom: which target cases form the pool and which the test set.

The paper runs 5-fold cross-validation over 100 target cases (80 pool / 20 test). On the phantom
the target population is the cases of the ``test`` and ``pool`` splits of one generated phantom
(per task and seed). The generator is prefix-stable (adding cases never changes earlier ones), so
the fold phantom is the usual one with extra pool cases:

* target order ``T = test_000 .. test_{t-1}, pool_000 .. pool_{k-1}`` with ``t = n_test`` and
  ``k = n_folds * n_test - n_test`` (at least ``n_pool``), i.e. ``n_folds`` disjoint blocks of
  ``n_test`` cases;
* fold ``f`` tests on block ``f`` (``T[f*t : (f+1)*t]``) and its pool is the ``n_pool`` cases
  that follow that block, cyclically in ``T``.

Every target case is a test case in exactly one fold; pool and test never overlap within a fold;
every fold has the same pool and test sizes. Fold 0 is exactly the phantom's own split
(``pool_000 .. pool_{n_pool-1}`` / ``test_*``), so results of runs made without folds are fold 0.
Source cases (``source``, ``source_test``) are the same in every fold, hence one source model per
task and seed. Cases are identical across folds; only their role changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FoldScheme:
    """Sizes of the fold protocol on a phantom.

    Attributes:
        n_folds: number of disjoint test blocks.
        n_pool: pool cases per fold.
        n_test: test cases per fold.
        size: phantom edge length in voxels.
        n_source: source training cases.
        n_source_test: source test cases.
    """

    n_folds: int = 5
    n_pool: int = 30
    n_test: int = 12
    size: int = 32
    n_source: int = 20
    n_source_test: int = 6

    def __post_init__(self) -> None:
        if self.n_folds < 1 or self.n_test < 1 or self.n_pool < 1:
            raise ValueError(f"n_folds, n_pool and n_test must be >= 1, got {self}")

    @property
    def n_target(self) -> int:
        """Target cases generated: ``n_folds`` test blocks, at least ``n_pool + n_test``."""
        return max(self.n_folds * self.n_test, self.n_pool + self.n_test)

    @property
    def n_pool_generated(self) -> int:
        """Cases of the phantom's ``pool`` split (the target cases after the first test block)."""
        return self.n_target - self.n_test

    def phantom(self, task: str, seed: int) -> dict[str, Any]:
        """Keyword arguments of :func:`lightning_ada.phantom.simulator.generate_phantom`."""
        return {
            "task": task,
            "size": self.size,
            "n_source": self.n_source,
            "n_source_test": self.n_source_test,
            "n_pool": self.n_pool_generated,
            "n_test": self.n_test,
            "seed": seed,
            "progress": False,
        }

    def root(self, task: str, seed: int, base: str = "data/phantom") -> str:
        """Folder of the phantom of ``task`` and ``seed`` (its name carries the target count)."""
        return f"{base}/{task}_{self.size}_seed{seed}_t{self.n_target}"

    def target_ids(self, task: str) -> list[str]:
        """The target order ``T`` (case ids as written by the phantom generator)."""
        return [f"{task}_test_{i:03d}" for i in range(self.n_test)] + [
            f"{task}_pool_{i:03d}" for i in range(self.n_pool_generated)
        ]

    def splits(self, task: str, fold: int) -> dict[str, list[str]]:
        """``{"pool": [...], "test": [...]}`` of ``fold`` (see the module doc).

        Raises:
            ValueError: fold outside ``0 .. n_folds - 1``.
        """
        if not 0 <= fold < self.n_folds:
            raise ValueError(f"fold must be in 0..{self.n_folds - 1}, got {fold}")
        t, ids = self.n_test, self.target_ids(task)
        n = len(ids)
        test = ids[fold * t : (fold + 1) * t]
        pool = [ids[((fold + 1) * t + k) % n] for k in range(self.n_pool)]
        return {"pool": pool, "test": test}
