"""The methods whose training step makes two optimizer steps (a discriminator and a generator update), so
Lightning's `global_step` counts two per training step: the multi-process tests turn one into the other."""

TWO_PHASE_METHODS = {"ufogen", "ddgan", "siddm"}


def optimizer_steps_per_training_step(experiment: str) -> int:
    """2 for a GAN method's experiment (`ufogen_mnist`, ...), 1 for the others."""
    return 2 if experiment.split("_")[0] in TWO_PHASE_METHODS else 1
