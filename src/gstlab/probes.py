"""Flatness probes as an epoch callback: at the configured epochs, after every event and/or at the end, measure
the Hessian spectrum (surviving parameters only), traces, gradient noise and eps-flatness on a fixed probe set,
distance from initialization and, with ``probes.prunability`` / ``probes.pac_bayes`` / ``probes.sharpness``,
prunability, PAC-Bayes flatness and adaptive sharpness (``gstlab.measures``), and append
rows to ``curvature.csv`` / ``eps_sweep.csv`` in the run directory."""

from __future__ import annotations

import time
from collections.abc import Sequence

from gstlab import store
from gstlab.callbacks import EndRun, RunView
from gstlab.measures import end_measures, initial_parameters
from gstlab.seeding import derive_seed

CURVATURE_COLUMNS = (
    "epoch", "trigger", "seed", "samples", "eps_samples", "method", "k", "n_hvp", "converged", "max_rel_residual",
    "eig_sum", "eig_max", "eigenvalues",
    "hutchinson_trace", "hutchinson_stderr", "grad_moment_trace", "grad_cov_trace", "tic", "delta_w",
    "convention", "distance_init", "prunability", "prunability_delta", "prunability_samples", "prunability_loss",
    "pac_bayes_sigma", "pac_bayes_flatness", "pac_bayes_mag_sigma", "pac_bayes_mag_flatness", "pac_bayes_acc",
    "pac_bayes_drop", "pac_bayes_draws", "pac_bayes_samples", "sharpness", "sharpness_loss", "sharpness_rho",
    "sharpness_steps", "sharpness_samples", "sharpness_batch", "sharpness_restarts", "wall_s",
)
EPS_COLUMNS = ("epoch", "direction", "eps", "loss", "acc", "base_loss")


def scheduled(cfg) -> bool:
    p = cfg.probes
    return bool(p.epochs or p.at_events or p.at_end)


class FlatnessProbe:
    """Epoch callback (``gstlab.callbacks.EpochCallback``): decides when to measure and keeps the rows (they
    also live in the checkpoint). A probe that cannot be measured (``ProbeError``) ends the run as failed."""

    def __init__(self, run, data) -> None:
        self.cfg = run.cfg.probes
        self.x_eval, self.y_eval = data.x_test, data.y_test
        self.x_train, self.y_train = data.x_train, data.y_train
        self.init = initial_parameters(run.model)  # attached by prepare, while the model is as initialized

    def trigger(self, run: RunView, epoch: int, events: Sequence) -> str | None:
        if epoch in self.cfg.epochs:
            return "epoch"
        if self.cfg.at_events and events:
            return "event"
        if self.cfg.at_end and epoch == run.cfg.train.epochs - 1:
            return "end"
        return None

    def after_epoch(self, run: RunView, epoch: int, events: Sequence) -> None:
        trigger = self.trigger(run, epoch, events)
        if trigger is None:
            return
        from gstlab.flatness import ProbeError, measure  # noqa: PLC0415 (curvature code loads only when probing)

        seed = derive_seed(run.cfg.seed, "probe")
        try:
            row, eps_rows = measure(run.model, run.masks, self.x_eval, self.y_eval, self.cfg, seed=seed,
                                    eval_batch_size=run.cfg.train.eval_batch_size)
            start = time.perf_counter()
            row.update(end_measures(run.model, run.masks, self.init, self.x_train, self.y_train, self.cfg,
                                    run.cfg.train.eval_batch_size, seed))
        except ProbeError as err:  # e.g. a non-finite probe loss: the run cannot give the rows it was asked for
            raise EndRun(f"{trigger} probe: {err}") from err
        row["wall_s"] += time.perf_counter() - start
        row.update(epoch=epoch, trigger=trigger)
        run.rows["curvature"].append(row)
        run.rows["eps"].extend(dict(r, epoch=epoch) for r in eps_rows)

    def write(self, run: RunView) -> None:
        if run.rows["curvature"]:
            store.write_csv(run.out / "curvature.csv", run.rows["curvature"], CURVATURE_COLUMNS)
        if run.rows["eps"]:
            store.write_csv(run.out / "eps_sweep.csv", run.rows["eps"], EPS_COLUMNS)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def attach_probes(run, data) -> None:
    if scheduled(run.cfg):
        run.callbacks.append(FlatnessProbe(run, data))
