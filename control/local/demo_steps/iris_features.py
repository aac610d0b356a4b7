"""The demo's pre-processing step: raw flower measurements, as a producer sends them, into
the feature matrix the tree model was trained on (centimetres, in the data set's order)."""

import numpy as np

INPUTS = {
    "sepal_length": ("float64", [-1]),
    "sepal_width": ("float64", [-1]),
    "petal_length": ("float64", [-1]),
    "petal_width": ("float64", [-1]),
    "unit": ("string", [-1]),  # "cm" or "mm", as the measuring station reports it
}
OUTPUTS = {"features": ("float32", [-1, 4])}

_TO_CM = {"cm": 1.0, "mm": 0.1}


def predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scale every row to centimetres; a unit other than cm or mm fails its record."""
    units = [str(u) for u in batch["unit"]]
    unknown = sorted({u for u in units if u not in _TO_CM})
    if unknown:
        raise ValueError(f"unit {unknown[0]!r} is neither 'cm' nor 'mm'")
    scale = np.array([_TO_CM[u] for u in units])
    columns = ("sepal_length", "sepal_width", "petal_length", "petal_width")
    features = np.stack([batch[c] * scale for c in columns], axis=1)
    return {"features": features.astype(np.float32)}
