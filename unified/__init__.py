"""unified: quantize a network once per backend, run it on any of them with the same call.

    import unified
    result = unified.infer("efficientnet_lite0", "cat.jpg", backend="ort")
    result.top5   # [(class_index, label, probability), ...]

Writing a backend plugin: implement the hooks of `unified.core.hookspecs` with the `unified.hookimpl`
marker in one module, declare it with `unified_register_backends(register)`, and expose the module
under the entry-point group "unified" in your package's pyproject.toml:

    [project.entry-points.unified]
    mybackend = "mypackage.plugin"
"""
from unified import (
    backends,  # the package of built-in backends; calling it lists every installed backend
)
from unified.consistency.compare import CompareReport, compare
from unified.core.api import infer, load, quantize
from unified.core.backend_spec import BackendSpec
from unified.core.errors import (
    BackendError,
    BackendNotFoundError,
    CalibrationError,
    ImageError,
    InputError,
    ModelError,
    PluginError,
    SavedModelError,
    ScaleFileError,
    UnifiedError,
    UnsupportedOperatorError,
)
from unified.core.hookspecs import hookimpl
from unified.core.quant_params import QuantParams
from unified.core.quantized_model import QuantizedModel
from unified.core.result import InferenceResult
from unified.evaluation.evaluate import evaluate
from unified.evaluation.report import EvaluationReport
from unified.inputs.calibration import CalibrationSet
from unified.inputs.preprocess import Preprocess

__version__ = "0.1.0"

__all__ = [
    "BackendError", "BackendNotFoundError", "BackendSpec", "CalibrationError", "CalibrationSet",
    "ImageError", "InferenceResult", "InputError", "ModelError", "PluginError", "Preprocess", "QuantParams",
    "QuantizedModel", "SavedModelError", "ScaleFileError", "UnifiedError", "UnsupportedOperatorError",
    "CompareReport", "EvaluationReport", "backends", "compare", "evaluate", "hookimpl", "infer", "load", "quantize",
]
