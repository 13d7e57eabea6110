"""Quantizers: pure functions that fit quantization parameters from data (issue 3, item 1).

Each returns a spec from qcc.ir.quant (and, for codebook and bipolar schemes, the quantized data
too); apply a spec with qcc.numerics.fake_quant / quantize. Bit-widths are 1 to 16; bad input raises
QuantizerError (a QccError) with one clear line.

| scheme                       | function                                   | spec       | seed        |
|------------------------------|--------------------------------------------|------------|-------------|
| uniform affine               | fit_uniform                                | Uniform    | DESIGN §3   |
| QKeras quantized_bits        | quantized_bits (quantized_bits_formula)    | Uniform    | 000         |
| dynamic fixed point (IL/FL)  | fit_dynamic_fixed_point, integer_length    | Uniform    | 002 §4.1    |
| k-means linear / Gaussian    | fit_kmeans_linear, fit_kmeans_gaussian     | Codebook   | 002 §4.2    |
| Lloyd's k-means              | fit_kmeans_lloyd                           | Codebook   | 002 eq. 4   |
| k-quantile activations       | kquantile_thresholds, fit_kquantile_thresholds | Thresholds | 003     |
| k-quantile (CDF) weights     | fit_kquantile_weights                      | Codebook   | 003         |
| bipolar                      | fit_bipolar                                | Bipolar    | 001         |
| given table                  | encode_codebook                            | Codebook   |             |
| codebook memory              | codebook_memory_bits                       |            | 002 eq. 5   |
| by scheme name (configs)     | quantize_weights, activation_spec          | any        |             |
"""

from qcc.quantizers._common import MAX_BITS, MIN_SCALE, QuantizerError
from qcc.quantizers.binary import BipolarFit, fit_bipolar
from qcc.quantizers.codebook import CodebookFit, codebook_memory_bits, encode_codebook
from qcc.quantizers.fixed_point import (
    fit_dynamic_fixed_point,
    integer_length,
    quantized_bits,
    quantized_bits_formula,
)
from qcc.quantizers.kmeans import (
    fit_kmeans_gaussian,
    fit_kmeans_linear,
    fit_kmeans_lloyd,
    gaussian_range_k,
    kmeans_1d,
)
from qcc.quantizers.kquantile import fit_kquantile_thresholds, fit_kquantile_weights, kquantile_thresholds
from qcc.quantizers.schemes import activation_spec, quantize_weights
from qcc.quantizers.uniform import fit_uniform

__all__ = [
    "MAX_BITS",
    "MIN_SCALE",
    "QuantizerError",
    "fit_uniform",
    "quantized_bits",
    "quantized_bits_formula",
    "integer_length",
    "fit_dynamic_fixed_point",
    "CodebookFit",
    "codebook_memory_bits",
    "encode_codebook",
    "fit_kmeans_linear",
    "fit_kmeans_gaussian",
    "fit_kmeans_lloyd",
    "gaussian_range_k",
    "kmeans_1d",
    "kquantile_thresholds",
    "fit_kquantile_thresholds",
    "fit_kquantile_weights",
    "BipolarFit",
    "fit_bipolar",
    "quantize_weights",
    "activation_spec",
]
