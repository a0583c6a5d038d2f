"""Analyses built on the public DeconvNet: top-k mining and the unit atlas (Fig. 2), feature
evolution (Fig. 4), invariance (Fig. 5), first-layer filters (Fig. 6), occlusion sensitivity
(Fig. 7), correspondence (Fig. 8 / Table 1) and the pointing game. Import each module:
``from deconvnet.analysis.occlusion import occlusion``."""
