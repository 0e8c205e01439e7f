"""Model zoo: the catalog of checkpoints, the local weight store and the model backends.

Importing this package is cheap (no torch, no sam2): import the submodule you need, e.g.
``from medsegany.models.catalog import get_card`` or
``from medsegany.models.weight_store import WeightStore``.
"""
