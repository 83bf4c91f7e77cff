//! Capacity plan (work in progress).
