"""What the methods built on a diffusion autoencoder share: training their DAE through
``wsbench train`` and finding it before a run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from wsbench.api import Method, ModelStore, TrainingSet, TrainOptions
from wsbench.plugins.common.dae.training import TrainConfig, ensure_dae, train_config


class DiffusionMethod(Method):
    """A method that needs a trained DAE: ``dae_recipe`` is the DAE it trains and looks for
    (kind ``dae`` or ``dae-healthy``), ``store`` the plugin's model store. Subclasses take
    ``checkpoint``, ``model`` (the name of the dataset whose DAE a transfer run uses) and
    ``device`` parameters."""

    dae_recipe: ClassVar[TrainConfig]
    dae_hours: ClassVar[str] = ""
    """What training ``dae_recipe`` costs, for the message when no DAE is found."""
    store: ClassVar[ModelStore]
    timeout_s: ClassVar[float] = 900.0
    """DDIM sampling takes about a second per vertebra on two quiet CPU cores but a minute or
    more on a busy machine; the limit only stops a vertebra that hangs."""
    checkpoint: str | None
    model: str | None
    device: str

    @classmethod
    def needs(cls) -> str:
        """A DAE trained on the dataset (and, for some methods, a latent classifier fitted when
        a run starts)."""
        return f"a DAE ({cls.dae_recipe.kind}) trained on the dataset"

    @classmethod
    def readiness(cls) -> str:
        """The datasets a DAE of the recipe's kind is stored for, or what training one costs."""
        found = cls.store.trained_for(cls.dae_recipe.kind)
        train = f"`wsbench train --method {cls.name}` first, or a transfer run (-p model=NAME)"
        return f"DAE for {', '.join(found)}; other data: {train}" if found else f"no DAE: {train}"

    def train(
        self,
        training: TrainingSet,
        options: TrainOptions,
        *,
        config: str | None = None,
        steps: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        lr_decay_from: int | None = None,
        precision: str | None = None,
        checkpoint_every: int = 200,
        reevaluate: bool = False,
    ) -> list[Path]:
        """Train the DAE (or find it, trained with the same settings) and write its quality
        report, on the method's device. Settings left unset take the method's ``dae_recipe``
        (``hideseek``: config cpu, 26 000 steps, cosine decay from step 20 000; ``ad``: config
        cpu, 2 500 steps; both fp32); ``precision=bf16`` autocasts the forward pass and loss;
        ``config`` starts from that architecture's defaults instead;
        ``reevaluate`` rewrites the report of a DAE in the user cache."""
        base = self.dae_recipe if config is None else train_config(config)
        given = {"steps": steps, "batch_size": batch_size, "lr": lr,
                 "lr_decay_from": lr_decay_from, "precision": precision}  # fmt: skip
        recipe = replace(
            base,
            seed=options.seed,
            healthy_only=self.dae_recipe.healthy_only,
            **{name: value for name, value in given.items() if value is not None},
        )
        path, _ = ensure_dae(training, recipe, self.store, options.resume,
                             progress=options.progress, checkpoint_every=checkpoint_every,
                             reevaluate=reevaluate, device=self.device)  # fmt: skip
        return [path]

    def dae_path(self, training: TrainingSet) -> Path:
        """The DAE this run uses: ``checkpoint`` (a path or a model identity), else the one
        trained on the dataset named ``model`` (a transfer run), else the one of the recipe's
        kind trained on this dataset, else — when the training split has no labelled vertebra
        to learn from — the shipped one (a transfer run); a clear error when there is none."""
        kind = self.dae_recipe.kind
        if self.checkpoint:
            return self.store.resolve(self.checkpoint)
        if self.model:
            return self.store.transfer_model(kind, self.model)
        path = self.store.find(kind, training.fingerprint)
        if path is None and not len(training.labelled()):
            return self.store.transfer_model(kind)
        if path is None:
            where = " or ".join(str(folder) for folder in self.store.folders)
            stored = ", ".join(self.store.trained_for(kind)) or "none"
            raise FileNotFoundError(
                f"no trained {kind} DAE for dataset {training.name!r} (fingerprint "
                f"{training.fingerprint}) in {where}; train it with `wsbench train --method "
                f"{self.name} --dataset {training.name}` (add the same --root; {self.dae_hours}), "
                f"pass --checkpoint PATH, or run a transfer run with a DAE trained elsewhere "
                f"(`-p model=NAME`; stored for: {stored})"
            )
        return path
