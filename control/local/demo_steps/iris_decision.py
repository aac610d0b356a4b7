"""The demo's post-processing step: the tree model's class probabilities into a decision a
downstream service can act on, without knowing the model's label encoding."""

import numpy as np

INPUTS = {"probabilities": ("float32", [-1, 3])}
OUTPUTS = {
    "species": ("string", [-1]),
    "confidence": ("float32", [-1]),
    "decision": ("string", [-1]),
}

SPECIES = np.array(["setosa", "versicolor", "virginica"], dtype=object)
REVIEW_BELOW = 0.8  # a less certain call goes to a botanist


def predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The likeliest species, its probability, and 'accept' or 'review'."""
    probabilities = batch["probabilities"]
    best = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1).astype(np.float32)
    decision = np.where(confidence >= REVIEW_BELOW, "accept", "review").astype(object)
    return {"species": SPECIES[best], "confidence": confidence, "decision": decision}
