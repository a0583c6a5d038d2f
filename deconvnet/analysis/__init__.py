"""Analyses built on the public DeconvNet: top-k mining and the unit atlas (Fig. 2), feature
evolution (Fig. 4), invariance (Fig. 5), first-layer filters (Fig. 6), occlusion sensitivity
(Fig. 7), correspondence (Fig. 8 / Table 1), the pointing game, and the sanity checks of the maps
(randomization, class sensitivity, deletion and insertion). Import each module:
``from deconvnet.analysis.occlusion import occlusion``."""
