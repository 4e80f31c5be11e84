"""What users write: named dims, inputs and states, the expression tree, ``@mixer``."""
from .mixer import In, Mixer, Param, Scalar, Scale, State, mixer, trace
from .ops import (Value, abs, amax, contract, cos, exp, head, l2norm, log, logsigmoid, maximum,
                  minimum, outer, rename, rsqrt, sigmoid, silu, sin, softplus, sqrt, sum_, tanh,
                  where)

__all__ = ["In", "Param", "State", "Scale", "Scalar", "Mixer", "mixer", "trace", "Value", "abs",
           "amax", "contract", "cos", "exp", "head", "l2norm", "log", "logsigmoid", "maximum",
           "minimum", "outer", "rename", "rsqrt", "sigmoid", "silu", "sin", "softplus", "sqrt", "sum_",
           "tanh", "where"]
