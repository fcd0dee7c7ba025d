"""Data selection: learn what is known, score how far new data lie outside it, keep the novel within a budget.

The Selector seam in three pieces that compose:

* `NoveltyDetector.fit(known)` (`detector`) trains an autoencoder (`autoencoders`, `training`) on part of the
  known data, early-stops on another part and scores a third, held-out part for calibration.
* `NoveltyDetector.score(batch)` gives one score per sample (higher is more novel): by default
  (`score="combined"`) the larger of the reconstruction error and the squared Mahalanobis distance
  of the latent code to the training codes, each in units of its upper tail on known data. The first
  catches shapes the network never learned (a digit of another class, a streak across a
  cutout); the second catches known shapes in unknown amounts (a spectrum dominated by a phase
  that was only ever a trace), which an autoencoder reconstructs well by extrapolating.
  `pvalues(scores)` (`calibration`) turns scores into conformal p-values against the held-out known data,
  p = (1 + #{calib >= s}) / (n_calib + 1), so a level means the same on every data set.
* `select(pvalues, budget)` (`budget`) keeps every novel sample (p < level), most novel first, up to a budget
  in samples or bytes, plus a stratified random sample of the rest (strata: k-means clusters in
  latent space) so that the kept set still represents the known domain.

`NoveltySelector` (`selector`) applies the same online, one measurement at a time, in a campaign, retraining
in a background thread as the known set grows; each model takes over at a fixed measurement, so
the same measurements give the same decisions.
"""
from policies.selection.budget import Budget, select
from policies.selection.detector import DetectorOptions, NoveltyDetector
from policies.selection.errors import SelectionError
from policies.selection.selector import NoveltySelector

__all__ = ["Budget", "DetectorOptions", "NoveltyDetector", "NoveltySelector", "SelectionError", "select"]
