//! Crediting strategies side by side (work in progress).
