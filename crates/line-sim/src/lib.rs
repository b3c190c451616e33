//! LINE platform simulator.
