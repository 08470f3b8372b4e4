//! glm-infer
