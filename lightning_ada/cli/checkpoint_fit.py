"""A checkpoint given with ``--ckpt_path`` and the config it runs under: what each decides.

LightningCLI reads the hyper-parameters saved in a ``--ckpt_path`` file and makes them the model's
config, over whatever the config files and the command line said: a changed network shape was
silently dropped (the checkpoint's was used) and so was any evaluation option
(``--model.mirror_tta true``, ``--model.lesion_wise true``, ``--model.roi_size``). :func:`reconcile`
puts it right after Lightning's merge:

- the network of the checkpoint cannot change: ``net`` and ``filters`` set (to other than their
  defaults) and different from the checkpoint's, an input-channel count (``data.modalities``) or a
  label set other than the checkpoint's (:func:`~lightning_ada.cases.classes_differ`: another
  count, or a class that keeps neither its name nor its value), and,
  for ``validate``/``test``/``predict``/``query``, the modalities in another channel order than
  the checkpoint's data had, are refused in one line naming the file, the setting and what is
  expected (``fit`` resumes compare modalities in the run definition,
  :mod:`lightning_ada.run.guard`);
- every other option the config sets (other than its default) keeps the config's value; the
  checkpoint's fills in the options left at their defaults (as Lightning intends: ``test
  --ckpt_path X`` runs X's network without repeating its options).

:func:`check_source` does the same for ``model.source_checkpoint`` at ``fit``: the source model's
modalities listed in another channel order are refused before anything is written
(:func:`~lightning_ada.models.module.source_fits`; the model warns about the rest at setup).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from lightning_ada.cases import classes_differ
from lightning_ada.errors import CheckpointError
from lightning_ada.models.module import source_fits
from lightning_ada.weights import read_checkpoint

#: model options that fix the network's shape when set explicitly
SHAPE_OPTIONS = ("net", "filters")


def plain(value: Any) -> Any:
    """A config value as a plain comparable type (namespaces and mappings as dicts of plain
    values, tuples as lists)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _classes(labels: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in (plain(labels) or {}).items())


def reconcile(
    ckpt_path: str | None, subcommand: str, given: Namespace, merged: Namespace,
    defaults: Namespace | None, data: Namespace | None,
) -> None:
    """Refuse a config whose network the checkpoint cannot be; let the config's explicit
    options win over the checkpoint's hyper-parameters (``merged`` is updated in place).

    Args:
        ckpt_path: the ``--ckpt_path`` value (a file, ``last``, None ...).
        subcommand: ``fit``, ``validate``, ``test``, ``predict`` or ``query``.
        given: the model section as configured, before Lightning merged the checkpoint's.
        merged: the model section after Lightning's merge (the one instantiated).
        defaults: the model section's defaults.
        data: the data section (its ``modalities`` and ``labels``).

    Raises:
        CheckpointError: one line naming the checkpoint, the settings that differ and the
            checkpoint's values.
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        return
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    hp = ckpt.get("hyper_parameters") or {}
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    if not hp:
        return
    defaults = defaults or Namespace()
    wrong = []
    for key in SHAPE_OPTIONS:
        mine = plain(given.get(key))
        if key in hp and mine != plain(hp[key]) and mine != plain(defaults.get(key)):
            wrong.append(f"model.{key}={mine} (the checkpoint's network: {plain(hp[key])})")
    modalities = plain(data.get("modalities")) if data is not None else None
    if "in_channels" in hp and given.get("in_channels") is not None and \
            int(given.in_channels) != int(hp["in_channels"]):
        wrong.append(f"{given.in_channels} input channels (data.modalities {modalities}) where the "
                     f"checkpoint's network takes {hp['in_channels']}"
                     + (f" ({plain(dm['modalities'])})" if dm.get("modalities") else ""))
    elif subcommand != "fit" and modalities is not None and dm.get("modalities") is not None \
            and modalities != plain(dm["modalities"]):
        wrong.append(f"data.modalities {modalities} (the checkpoint's, in channel order: "
                     f"{plain(dm['modalities'])})")
    if "labels" in hp and given.get("labels") is not None and \
            classes_differ(plain(hp["labels"]), plain(given.labels)):
        wrong.append(f"data.labels {{{_classes(given.labels)}}} (the checkpoint's classes, in "
                     f"order: {{{_classes(hp['labels'])}}})")
    if wrong:
        raise CheckpointError(
            f"{ckpt_path}: the config does not fit this checkpoint: {'; '.join(wrong)}; a trained "
            "network keeps its shape, channels and classes: drop these options or use the "
            "checkpoint's own config (its run folder's config.yaml)"
        )
    for key, value in given.items():  # the config's explicit options win over the checkpoint's
        if key in hp and key != "in_channels" and (
            key == "labels" or plain(value) != plain(defaults.get(key))
        ):
            merged[key] = value  # labels: the data's names (the values may differ, same classes)


def check_source(subcommand: str | None, model: Namespace | None, data: Namespace | None) -> None:
    """Refuse, before anything is written, a ``fit`` whose data lists the source checkpoint's
    modalities in another channel order (:func:`~lightning_ada.models.module.source_fits`).

    Raises:
        CheckpointError: one line naming the source checkpoint and both orders.
    """
    if subcommand != "fit" or model is None or data is None:
        return
    path = model.get("source_checkpoint")
    if not path or not Path(path).is_file():
        return  # a missing file is named when the model loads it
    ckpt = read_checkpoint(path)
    source_fits(path, dict(ckpt.get("hyper_parameters") or {}),
                dict(ckpt.get("datamodule_hyper_parameters") or {}),
                plain(model), plain(data))
