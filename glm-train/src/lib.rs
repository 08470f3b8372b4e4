//! glm-train
