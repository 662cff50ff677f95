"""SegmentationModule: a MONAI 3D segmenter with Dice+CE, sliding-window inference and region metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from monai.data.utils import affine_to_spacing
from monai.inferers import sliding_window_inference

from lightning_ada.cases import canonical_modality, classes_differ
from lightning_ada.errors import ChangedRunError, CheckpointError
from lightning_ada.metrics.lesions import LesionMetrics
from lightning_ada.metrics.regions import RegionMetrics
from lightning_ada.models.losses import PartialDiceCELoss
from lightning_ada.models.nets import FeatureTap, NetName, build_net, decoder_head_input
from lightning_ada.weights import check_finite_weights, read_checkpoint

#: hyper-parameters that fix the network's shape (a checkpoint of another shape cannot load)
SHAPE_KEYS = ("net", "in_channels", "filters")


class SegmentationModule(L.LightningModule):
    """Multi-modal 3-D tumour segmentation.

    Args:
        in_channels: number of input modalities.
        labels: region name -> on-disk label value, in class order (class index = position + 1).
        eval_regions: extra evaluation regions as unions of label names (e.g. BraTS
            ``{"WT": ["NCR", "ED", "ET"], "TC": ["NCR", "ET"]}``); each label is always a region.
        net: MONAI architecture.
        filters: channels per level.
        optimizer: ``adam`` (the CPU-tested default) or ``sgd`` (nnU-Net: Nesterov, momentum 0.99).
        lr: initial learning rate; decays as ``(1 - step / total) ** poly_power`` over the run.
        weight_decay: L2 weight decay.
        momentum: SGD momentum.
        poly_power: exponent of the polynomial decay.
        roi_size: sliding-window size in voxels ``(H, W, D)``.
        sw_batch_size: windows per forward pass.
        sw_overlap: sliding-window overlap (Gaussian blending, as nnU-Net).
        mirror_tta: average over the 8 axis flips at inference (8x slower).
        source_checkpoint: initialise the weights from this (source-domain) checkpoint. Besides
            the weights' shapes, what the checkpoint records of its training is compared with
            this run: its label classes (at construction) and, once the run's datamodule is
            known (``setup`` of ``fit``), its modalities and their channel order (a permutation
            of the same sequences, known aliases such as BraTS 2023's ``t2f`` for ``flair``
            included, is refused in one line naming the file and both orders; unknown names are
            warned about), and its patch size, sliding-window size and spacing (warned about:
            legitimate to change, but the source model was not trained so).
        channels_last: keep the net's 5-D weights and the training input ``(B, C, H, W, D)`` in
            ``torch.channels_last_3d`` memory format. On CPU a training step of the power recipe
            was 22-26 % faster (benchmarks/run_profile.md); off by default because the
            published benchmark tables were trained without it (same results within float
            round-off, not bit-identical).
        lesion_wise: also score the test splits with the BraTS 2023 lesion-wise Dice and HD95
            (:mod:`lightning_ada.metrics.lesions`, BraTS-GLI parameters) of the regions WT, TC
            and ET among the evaluation regions, or of every label region when there is none of
            them (e.g. NPC's GTV): logged as ``test/lesion_dice_<region>``,
            ``test/lesion_hd95_<region>``, ``test/lesion_dice_mean``, ``test/lesion_hd95_mean``
            (extra splits under their own prefix) and kept in the per-case rows. Off: nothing
            computed, every other metric unchanged.
        test_distances: score HD95 and ASSD at test (default); off: Dice and IoU only, the same
            values, at a fraction of the test's time (the distance transforms dominate it).
    """

    #: metric monitored for checkpointing
    monitor = "val/dice_mean"
    mode = "max"

    def __init__(
        self,
        in_channels: int = 4,
        labels: dict[str, int] = {"NCR": 1, "ED": 2, "ET": 4},  # noqa: B006
        eval_regions: dict[str, list[str]] | None = None,
        net: NetName = "dynunet",
        filters: list[int] = [8, 16, 32, 64],  # noqa: B006
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 1e-2,
        weight_decay: float = 3e-5,
        momentum: float = 0.99,
        poly_power: float = 0.9,
        roi_size: list[int] = [32, 32, 32],  # noqa: B006
        sw_batch_size: int = 4,
        sw_overlap: float = 0.5,
        mirror_tta: bool = False,
        source_checkpoint: str | None = None,
        channels_last: bool = False,
        lesion_wise: bool = False,
        test_distances: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_classes = len(labels) + 1
        names = list(labels)
        self.regions: dict[str, list[int]] = {n: [i + 1] for i, n in enumerate(names)}
        for region, members in (eval_regions or {}).items():
            unknown = sorted(set(members) - set(names))
            if unknown:
                raise ValueError(f"eval region {region!r} names unknown labels {unknown}; known: {names}")
            self.regions[region] = [names.index(m) + 1 for m in members]
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        if source_checkpoint:
            self.load_source(source_checkpoint)

    # ------------------------------------------------------------------ template methods
    def configure_models(self) -> None:
        """Build the net and the bottleneck feature tap."""
        hp = self.hparams
        self.net = build_net(hp.net, hp.in_channels, self.num_classes, hp.filters)
        if hp.get("channels_last", False):
            # 5-D weights stored (N, D, H, W, C)-contiguous: convolutions then run channels-last
            self.net = self.net.to(memory_format=torch.channels_last_3d)
        self.features = FeatureTap(self.net)

    def configure_losses(self) -> None:
        """Dice (over the batch, foreground classes) + cross-entropy, both ignoring unannotated
        voxels of partial labels (:class:`~lightning_ada.models.losses.PartialDiceCELoss`)."""
        self.loss = PartialDiceCELoss(include_background=False, batch=True)

    def configure_metrics(self) -> None:
        """Per-region Dice / IoU (validation) and + HD95 / ASSD (test)."""
        self.val_metrics = RegionMetrics(self.regions, distances=False)
        distances = bool(self.hparams.get("test_distances", True))
        self.test_metrics = RegionMetrics(self.regions, distances=distances, keep_per_case=True)
        #: metrics of the datamodule's extra test splits, by loader index (built when first used)
        self._extra_test_metrics: dict[int, RegionMetrics] = {}
        #: regions of the lesion-wise metrics: WT, TC, ET where they exist, else every label
        brats = {r: self.regions[r] for r in ("WT", "TC", "ET") if r in self.regions}
        self.lesion_regions: dict[str, list[int]] = brats or {
            n: self.regions[n] for n in self.hparams.labels
        }
        self.lesion_wise = bool(self.hparams.get("lesion_wise", False))
        if self.lesion_wise:
            self.test_lesion_metrics = LesionMetrics(self.lesion_regions, keep_per_case=True)
        #: lesion-wise metrics of the extra test splits, by loader index (``lesion_wise`` only)
        self._extra_test_lesion_metrics: dict[int, LesionMetrics] = {}

    def load_source(self, path: str | Path) -> None:
        """Initialise the net from a source checkpoint, checking that the classes and the
        shapes agree (the data side is checked in :meth:`setup`).

        Raises:
            CheckpointError: unreadable file, label classes that differ, or weights of another
                architecture / channel count.
        """
        ckpt = read_checkpoint(path)
        state = ckpt.get("state_dict")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: no 'state_dict' in this file; is it a Lightning checkpoint?")
        #: what the source checkpoint records of its training (model, data), for :meth:`setup`
        self._source_record = (dict(ckpt.get("hyper_parameters") or {}),
                               dict(ckpt.get("datamodule_hyper_parameters") or {}))
        trained = self._source_record[0].get("labels")
        if trained and classes_differ(trained, self.hparams.labels):
            raise CheckpointError(
                f"{path}: the source model's classes are {_classes(trained)} (class order), the "
                f"config's data.labels {_classes(self.hparams.labels)}: list the same classes in "
                "the same order (the on-disk values may differ)"
            )
        own = self.state_dict()
        net_state = {k: v for k, v in state.items() if k.startswith("net.")}
        if not net_state:
            raise CheckpointError(f"{path}: holds no 'net.' weights of a SegmentationModule")
        for k, v in net_state.items():
            if k not in own:
                raise CheckpointError(f"{path}: weight {k} does not exist in this net ({self.hparams.net})")
            if own[k].shape != v.shape:
                raise CheckpointError(
                    f"{path}: weight {k} has shape {tuple(v.shape)} but this net expects "
                    f"{tuple(own[k].shape)} (in_channels={self.hparams.in_channels}, "
                    f"classes={self.num_classes}): a checkpoint of another task or modality set?"
                )
        missing = sorted(k for k in own if k.startswith("net.") and k not in net_state)
        if missing:
            raise CheckpointError(f"{path}: weights missing for {missing[:3]}...")
        check_finite_weights(path, net_state)  # a diverged source model (lightning_ada.run.checkpoint_io)
        self.load_state_dict(net_state, strict=False)

    def setup(self, stage: str) -> None:
        """At ``fit``: compare the source checkpoint's recorded data settings with the run's
        datamodule (:func:`source_fits`)."""
        if stage != "fit" or not self.hparams.get("source_checkpoint"):
            return
        record = getattr(self, "_source_record", None)
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if record is None or dm is None or not hasattr(dm, "hparams"):
            return
        for line in source_fits(self.hparams.source_checkpoint, record[0], record[1],
                                dict(self.hparams), dict(dm.hparams)):
            rank_zero_warn(line)

    # ------------------------------------------------------------------ forward / inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, H, W, D)`` for images ``(B, C, H, W, D)``."""
        return self.net(x)

    def _sliding_window(self, x: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(
            x,
            roi_size=tuple(self.hparams.roi_size),
            sw_batch_size=self.hparams.sw_batch_size,
            predictor=self.net,
            overlap=self.hparams.sw_overlap,
            mode="gaussian",
        )

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(B, K, H, W, D)`` by sliding window (+ mirror TTA if set)."""
        probs = torch.softmax(self._sliding_window(x).float(), dim=1)
        if self.hparams.mirror_tta:
            n = 1
            for dims in ((2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)):
                flipped = self._sliding_window(torch.flip(x, dims)).float()
                probs = probs + torch.flip(torch.softmax(flipped, dim=1), dims)
                n += 1
            probs = probs / n
        return probs

    @contextlib.contextmanager
    def _inference_mode(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        ctx = contextlib.nullcontext()
        if self._trainer is not None:
            ctx = self.trainer.precision_plugin.forward_context()
        try:
            with torch.no_grad(), ctx:
                yield
        finally:
            self.train(was_training)

    def predict_case(
        self, image: torch.Tensor, with_embedding: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities of one case for query strategies (no gradients, eval mode).

        Args:
            image: ``(C, H, W, D)`` preprocessed image.
            with_embedding: also return the bottleneck embedding ``(d,)`` averaged over windows.

        Returns:
            ``probs`` ``(K, H, W, D)`` float32 on the CPU, or ``(probs, embedding)``.
        """
        with self._inference_mode():
            self.features.enabled = with_embedding
            try:
                probs = self.infer(image.unsqueeze(0).to(self.device))[0].cpu()
                emb = self.features.pop() if with_embedding else None
            finally:
                self.features.enabled = False
                self.features.features.clear()
        if with_embedding:
            return probs, (emb.cpu() if emb is not None else None)
        return probs

    def query_outputs(self) -> frozenset[str]:
        """What this model gives query strategies (checked against a strategy's ``needs``).

        ``embedding`` (``predict_case(..., with_embedding=True)``) for every net; ``features``
        (:meth:`case_features`, the last decoder map) only for nets whose decoder is wired
        (DynUNet).
        """
        try:
            decoder_head_input(self.net)
        except TypeError:
            return frozenset({"embedding"})
        return frozenset({"embedding", "features"})

    def case_features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything a feature-based strategy needs from one case, in one sliding-window pass.

        Args:
            image: ``(C, H, W, D)`` preprocessed image.

        Returns:
            ``probs`` ``(K, H, W, D)`` softmax, ``embedding`` ``(d,)`` pooled bottleneck
            features, ``decoder`` ``(F, H, W, D)`` last decoder feature map (DynUNet), all float32
            on the CPU.
        """
        captured: list[torch.Tensor] = []
        head = decoder_head_input(self.net)

        def keep_input(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured.append(args[0])

        def predictor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            captured.clear()
            logits = self.net(x)
            return logits, captured[-1]

        handle = head.register_forward_pre_hook(keep_input)
        try:
            with self._inference_mode():
                self.features.enabled = True
                logits, decoder = sliding_window_inference(
                    image.unsqueeze(0).to(self.device),
                    roi_size=tuple(self.hparams.roi_size),
                    sw_batch_size=self.hparams.sw_batch_size,
                    predictor=predictor,
                    overlap=self.hparams.sw_overlap,
                    mode="gaussian",
                )
                emb = self.features.pop()
        finally:
            handle.remove()
            self.features.enabled = False
            self.features.features.clear()
        return {
            "probs": torch.softmax(logits.float(), dim=1)[0].cpu(),
            "embedding": emb.cpu() if emb is not None else torch.empty(0),
            "decoder": decoder.float()[0].cpu(),
        }

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image = batch["image"]
        if self.hparams.get("channels_last", False):
            image = image.contiguous(memory_format=torch.channels_last_3d)
        logits = self(image)
        loss = self.loss(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self.infer(batch["image"]).argmax(1)
        self.val_metrics.update(pred, batch["label"][:, 0])

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        dice_mean = float(values.pop("dice_mean"))
        self.log_dict({f"val/{k}": float(v) for k, v in values.items()})
        self.log("val/dice_mean", dice_mean, prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        pred = self.infer(batch["image"]).argmax(1)
        affine = batch["image"].affine
        affine = affine if affine.ndim == 3 else affine[None]
        spacing = [[float(s) for s in affine_to_spacing(a, r=3)] for a in affine]
        self._split_metrics(dataloader_idx).update(
            pred, batch["label"][:, 0], spacing=spacing, case_ids=list(batch["case_id"])
        )
        if self.lesion_wise:
            self._split_lesion_metrics(dataloader_idx).update(
                pred, batch["label"][:, 0], spacing=spacing, case_ids=list(batch["case_id"])
            )

    def _split_metrics(self, dataloader_idx: int) -> RegionMetrics:
        """Test metrics of loader ``dataloader_idx`` (0: the test split; >0: an extra split)."""
        if dataloader_idx == 0:
            return self.test_metrics
        if dataloader_idx not in self._extra_test_metrics:
            self._extra_test_metrics[dataloader_idx] = RegionMetrics(
                self.regions, distances=self.test_metrics.distances,
                keep_per_case=self.test_metrics.keep_per_case
            ).to(self.device)
        return self._extra_test_metrics[dataloader_idx]

    def _split_lesion_metrics(self, dataloader_idx: int) -> LesionMetrics:
        """Lesion-wise metrics of loader ``dataloader_idx`` (``lesion_wise`` only)."""
        if dataloader_idx == 0:
            return self.test_lesion_metrics
        if dataloader_idx not in self._extra_test_lesion_metrics:
            self._extra_test_lesion_metrics[dataloader_idx] = LesionMetrics(
                self.lesion_regions, keep_per_case=self.test_metrics.keep_per_case
            ).to(self.device)
        return self._extra_test_lesion_metrics[dataloader_idx]

    def _split_results(
        self, metrics: RegionMetrics, lesions: LesionMetrics | None
    ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """Summary values and per-case rows of one split (lesion-wise keys added when scored);
        resets the split's metrics."""
        values, rows = metrics.compute(), metrics.per_case()
        metrics.reset()
        if lesions is not None:
            values.update(lesions.compute())
            lesion_rows = lesions.per_case()
            lesions.reset()
            if [r.get("case_id") for r in rows] != [r.get("case_id") for r in lesion_rows]:
                raise RuntimeError("voxel and lesion-wise metrics saw different cases")
            rows = [{**r, **lr} for r, lr in zip(rows, lesion_rows)]
        return values, rows

    def on_test_epoch_end(self) -> None:
        lesions = self.test_lesion_metrics if self.lesion_wise else None
        values, rows = self._split_results(self.test_metrics, lesions)
        self.log_dict({f"test/{k}": float(v) for k, v in values.items()})
        #: per-case rows of the last test run (this rank's cases), for tables and statistics
        self.last_test_per_case = rows
        # extra test splits of the datamodule (``data.extra_test_splits``), prefixed by name
        dm = getattr(self.trainer, "datamodule", None)
        names = dm.test_split_names() if hasattr(dm, "test_split_names") else []
        #: per-case rows of every extra split of the last test run, by split name
        self.last_extra_per_case: dict[str, list[dict[str, Any]]] = {}
        for idx, metrics in sorted(self._extra_test_metrics.items()):
            name = names[idx] if idx < len(names) else f"test_{idx}"
            lesions = self._extra_test_lesion_metrics.get(idx) if self.lesion_wise else None
            values, rows = self._split_results(metrics, lesions)
            self.log_dict({f"{name}/{k}": float(v) for k, v in values.items()})
            self.last_extra_per_case[name] = rows

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Class-index masks ``(B, 1, H, W, D)`` and the case ids of the batch."""
        pred = self.infer(batch["image"]).argmax(1, keepdim=True)
        return {"case_id": list(batch["case_id"]), "pred": pred.cpu()}

    # ------------------------------------------------------------------ optimisation
    #: optimiser step at which the poly schedule (re)starts
    schedule_start: int = 0

    def restart_lr_schedule(self) -> None:
        """Restart the poly decay from the current step (``restart_schedule_each_round``)."""
        self.schedule_start = int(self.trainer.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["schedule_start"] = self.schedule_start

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, before any weight is loaded, a checkpoint of another network shape.

        Raises:
            ChangedRunError: naming the checkpoint, the first changed weights and the model it
                was trained with.
        """
        shapes = self._shape_changes(checkpoint.get("state_dict", {}))
        if shapes:
            path = (self._trainer.ckpt_path if self._trainer is not None else None) or "the checkpoint"
            saved = checkpoint.get("hyper_parameters", {})
            trained = ", ".join(f"{k}={saved[k]}" for k in SHAPE_KEYS if k in saved)
            raise ChangedRunError(
                f"{path} holds a network of another shape ({'; '.join(shapes)}); resume it with the "
                f"model it was trained with ({trained or 'see its hyper_parameters'})"
            )
        self.schedule_start = int(checkpoint.get("schedule_start", 0))

    def _shape_changes(self, saved: dict[str, Any]) -> list[str]:
        """The first two weights whose shape differs from this model's, and a count of the
        weights only in the checkpoint or only in this model ([] if every weight fits)."""
        own = self.state_dict()
        changed = [k for k in saved if k in own and tuple(saved[k].shape) != tuple(own[k].shape)]
        missing = [k for k in own if k not in saved]
        extra = [k for k in saved if k not in own]
        out = [f"{k} {tuple(saved[k].shape)} -> {tuple(own[k].shape)}" for k in changed[:2]]
        if missing or extra:
            out.append(
                f"{len(extra)} weights only in the checkpoint, {len(missing)} only in this model"
            )
        return out

    def run_definition(self) -> dict[str, Any]:
        """This model's entry of the run definition (:mod:`lightning_ada.run.definition`): the
        network's shape."""
        hp = self.hparams
        return {"model": {k: (list(hp[k]) if isinstance(hp[k], (list, tuple)) else hp[k])
                          for k in SHAPE_KEYS if k in hp}}

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=hp.momentum, nesterov=True,
                weight_decay=hp.weight_decay,
            )
        else:
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))

        def poly(step: int) -> float:
            start = self.schedule_start
            return max(0.0, 1.0 - (step - start) / max(1, total - start)) ** hp.poly_power

        sched = torch.optim.lr_scheduler.LambdaLR(opt, poly)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _classes(labels: Any) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in dict(labels).items()) + "}"


def source_fits(
    path: str | Path, model: dict[str, Any], data: dict[str, Any], own_model: dict[str, Any],
    own_data: dict[str, Any],
) -> list[str]:
    """Compare what a source checkpoint records of its training with a target run.

    Args:
        path: the source checkpoint (named in every message).
        model, data: its ``hyper_parameters`` and ``datamodule_hyper_parameters``.
        own_model, own_data: the target run's.

    Returns:
        Warnings, one line each: modality names that may or may not be the source's
        sequences, zero-filled modalities (``data.missing_modality zero_fill``) with no modality
        dropout in either training, another patch size, sliding-window size or spacing.

    Raises:
        CheckpointError: the target lists the source's modalities in another channel order
            (names compared through :func:`~lightning_ada.cases.canonical_modality`).
    """
    warnings: list[str] = []
    theirs, mine = data.get("modalities"), own_data.get("modalities")
    if theirs and mine and list(theirs) != list(mine) and len(theirs) == len(mine):
        a, b = [canonical_modality(m) for m in theirs], [canonical_modality(m) for m in mine]
        if sorted(a) == sorted(b) and a != b:
            raise CheckpointError(
                f"{path}: the source model was trained on modalities {list(theirs)} in this "
                f"channel order; data.modalities lists {list(mine)}: list them in the source's "
                "order (channel k of the network is the k-th modality)"
            )
        if a != b:
            warnings.append(
                f"{path}: the source model was trained on modalities {list(theirs)}, this run "
                f"reads {list(mine)}: channel k of the network gets the k-th of these; check "
                "they are the same sequences in the same order"
            )
    if own_data.get("missing_modality") == "zero_fill" and not data.get("modality_dropout") \
            and not own_data.get("modality_dropout"):
        warnings.append(
            f"{path}: the source model was trained without modality dropout and this run adds "
            "none (data.modality_dropout 0): cases with a zero-filled modality are segmented by "
            "a model that never saw a missing channel"
        )
    for key, what, section, own in (("patch_size", "data.patch_size", data, own_data),
                                    ("pixdim", "data.pixdim (spacing, mm)", data, own_data),
                                    ("roi_size", "model.roi_size", model, own_model)):
        if key in section and key in own and _plain(section[key]) != _plain(own[key]):
            warnings.append(
                f"{path}: the source model was trained with {what} {_plain(section[key])}, this "
                f"run uses {_plain(own[key])}"
            )
    return warnings


def _plain(value: Any) -> Any:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value
