"""The methods whose training step makes two optimizer steps (a discriminator and a generator update), so
Lightning's `global_step` counts two per training step: the multi-process tests turn one into the other."""

TWO_PHASE_METHODS = {"ufogen", "ddgan", "siddm"}
DMD_FAKE_UPDATES_PER_G = 5  # fastgen/configs/method/dmd.yaml: a generator update every 5th training step


def optimizer_steps_per_training_step(experiment: str) -> float:
    """2 for a GAN method's experiment (`ufogen_mnist`, ...); 1 + 1/5 on average for DMD (a fake-score update every
    training step and a generator update every fifth, the first included); 1 for the others."""
    method = experiment.split("_")[0]
    if method == "dmd":
        return 1 + 1 / DMD_FAKE_UPDATES_PER_G
    return 2 if method in TWO_PHASE_METHODS else 1
