"""Unsupervised anomaly detection in medical images, built step by step in notebooks."""
__version__ = "0.1.0"

import importlib as _importlib

# Public names and the module that defines each. Imported lazily, so `import uad_notebooks` stays fast and one
# method's heavy dependencies are loaded only when that method is used.
_LAZY = {
    "load_dataset": "data", "register_dataset": "data", "list_datasets": "data",
    "image_metrics": "metrics", "pixel_metrics": "metrics",
    "ConvAE": "baseline_ae",
    "MAE": "mae", "PseudoAbnormal": "pseudo_abnormal", "MAEUAD": "mae_uad",
    "MemMCMAE": "memmc_mae",
    "PerceptualLoss": "perceptual", "PerceptualAE": "perceptual_ae",
    "MaskedDDPM": "masked_ddpm",
    "mask_ratio_explorer": "explorers", "memory_explorer": "explorers", "noise_explorer": "explorers",
    "threshold_explorer": "explorers",
    "IntensityBaseline": "compare", "fit_method": "compare", "run_comparison": "compare",
}
__all__ = sorted(_LAZY)

def __getattr__(name):
    if name in _LAZY:
        obj = getattr(_importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = obj
        return obj
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

def __dir__(): return sorted(list(globals()) + __all__)
