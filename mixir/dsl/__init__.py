"""What users write: named dims, inputs and states, the expression tree, ``@mixer``."""
from .mixer import In, Mixer, Param, Scalar, Scale, State, mixer, trace
from .ops import (Value, abs, amax, contract, exp, head, l2norm, log, logsigmoid, maximum, minimum,
                  outer, rsqrt, sigmoid, silu, softplus, sqrt, sum_, tanh, where)

__all__ = ["In", "Param", "State", "Scale", "Scalar", "Mixer", "mixer", "trace", "Value", "abs",
           "amax", "contract", "exp", "head", "l2norm", "log", "logsigmoid", "maximum", "minimum",
           "outer", "rsqrt", "sigmoid", "silu", "softplus", "sqrt", "sum_", "tanh", "where"]
