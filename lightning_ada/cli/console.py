"""What the command line prints: Lightning's tips, banners and deprecations are filtered out.

Kept: errors, real warnings, the project's own lines (``[active] ...``, ``[stdr anchors] ...``)
and Lightning's end-of-fit line. Dropped: the hardware banners (``GPU available ...``), the
``litlogger`` tip, ``Seed set to ...``, ``Loading `train_dataloader` to estimate ...``, the
``_pytree`` deprecation Lightning triggers with this torch, the jsonargparse deprecations
LightningCLI triggers, and the data-loader worker hint (the configs choose ``num_workers`` on
purpose).
"""

from __future__ import annotations

import logging
import re
import warnings

#: Lightning log lines the CLI drops (matched at the start of the message)
DROPPED_LINES = re.compile(
    r"^(GPU available|TPU available|HPU available|💡 Tip|Seed set to|"
    r"Loading `train_dataloader` to estimate|LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES)"
)
#: warnings the CLI ignores (regular expressions on the message)
IGNORED_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*was deprecated in v4\.\d+\.\d+ and will be removed in v5\.0\.0.*",
    r".*does not have many workers which may be a bottleneck.*",
    r".*always_return_as_numpy.*",
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not DROPPED_LINES.match(str(record.getMessage()))


def quiet() -> None:
    """Install the filters (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed",
                 "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines())
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
