"""aam: Attention All Microbes.

A transformer over 16S amplicon tables (nucleotides -> ASV -> sample), trained with Ray Train
and searched with Ray Tune + Optuna. The public pieces:

- `aam.config.RunConfig`: the one description of a training run (CLI flags, YAML, config.json).
- `aam.data.convert_dataset` / `aam.data.Dataset`: BIOM + metadata -> dataset folder, and back.
- `aam.models.AAM`: the model (pure PyTorch).
- `aam.training.fit`: the training loop every entry point uses.
"""

__version__ = "0.1.0"
