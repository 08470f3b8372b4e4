//! glm-quant
